//! The simulator's pixel formulas, so that any receiver can check every pixel it gets. [`Pattern`] picks one.
//!
//! **Counting** (the default, [`Pattern::Counting`]):
//!
//! ```text
//! pixel(frame_id, row, col) = splitmix64(((frame_id mod 8) << 32) | (row << 16) | col) & pixel_mask
//! ```
//!
//! `row` and `col` are frame coordinates (`col = 256·sector + column within the sector` in K2 IS mode),
//! `pixel_mask` is the format's ([`DetectorFormat::pixel_mask`]: `0x0FFF` for IS and `0xFFFF` for Summit), and
//! `splitmix64` is the finaliser of Steele, Lea and Flood's SplitMix64 (below). Values repeat every
//! [`PATTERN_PERIOD`] frame ids so that the simulator can encode the payloads once and send at the camera's rate;
//! within a period every block of every frame differs. These pixels are random in all their bits: bitshuffle-LZ4
//! cannot compress them below about 0.8 of their size.
//!
//! **4D-STEM** ([`Pattern::Stem`], module [`stem`]): dark offset and read noise, Poisson electron hits in a
//! convergent-beam disk that moves with the scan position, sparse hits elsewhere; deterministic from (seed,
//! frame id, row, col) and not periodic, so the simulator makes its frames as it sends them.

pub mod stem;

use crate::format::DetectorFormat;

/// Pixel values repeat with this period in `frame_id`.
pub const PATTERN_PERIOD: u32 = 8;

/// SplitMix64's output function.
pub const fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The value the simulator sends for pixel `(row, col)` of the frame with id `frame_id`, for a detector whose
/// pixels have mask `pixel_mask`.
pub const fn pixel_masked(pixel_mask: u16, frame_id: u32, row: usize, col: usize) -> u16 {
    let key = ((frame_id % PATTERN_PERIOD) as u64) << 32 | (row as u64) << 16 | col as u64;
    (splitmix64(key) as u16) & pixel_mask
}

/// The value the simulator sends for pixel `(row, col)` of the frame with id `frame_id`.
pub fn pixel(f: &dyn DetectorFormat, frame_id: u32, row: usize, col: usize) -> u16 {
    pixel_masked(f.pixel_mask(), frame_id, row, col)
}

/// The whole expected frame of the counting pattern for `frame_id`, row-major.
pub fn expected_frame(f: &dyn DetectorFormat, frame_id: u32) -> Vec<u16> {
    Pattern::Counting.frame(f, frame_id)
}

/// Which pixel values the simulator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pattern {
    /// The original test pattern: a hash of (frame id mod 8, row, col) under the pixel mask (random pixels).
    #[default]
    Counting,
    /// A 4D-STEM scan ([`stem`]), from this seed.
    Stem {
        /// Seed of the pattern's hashes (`stem` means seed 0, `stem:N` seed N).
        seed: u64,
    },
}

impl Pattern {
    /// The frame-id period after which pixel values repeat, if they do (the simulator encodes one period up front).
    pub fn period(&self) -> Option<u32> {
        match self {
            Pattern::Counting => Some(PATTERN_PERIOD),
            Pattern::Stem { .. } => None,
        }
    }

    /// The value of pixel `(row, col)` of frame `frame_id` for format `f`.
    pub fn pixel(&self, f: &dyn DetectorFormat, frame_id: u32, row: usize, col: usize) -> u16 {
        match *self {
            Pattern::Counting => pixel(f, frame_id, row, col),
            Pattern::Stem { seed } => stem::pixel(seed, &stem::StemGeometry::of(f), frame_id, row, col),
        }
    }

    /// A maker of whole frames of this pattern for format `f` (tables prepared once).
    pub fn frames(&self, f: &dyn DetectorFormat) -> Frames {
        match *self {
            Pattern::Counting => Frames::Counting { mask: f.pixel_mask(), cols: f.cols(), rows: f.rows() },
            Pattern::Stem { seed } => Frames::Stem(stem::StemFrames::new(seed, stem::StemGeometry::of(f))),
        }
    }

    /// The whole frame `frame_id` for format `f`, row-major.
    pub fn frame(&self, f: &dyn DetectorFormat, frame_id: u32) -> Vec<u16> {
        let mut out = vec![0u16; f.frame_pixels()];
        self.frames(f).fill(frame_id, &mut out);
        out
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Counting => f.write_str("counting"),
            Pattern::Stem { seed: 0 } => f.write_str("stem"),
            Pattern::Stem { seed } => write!(f, "stem:{seed}"),
        }
    }
}

/// A name that is no pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown pattern {0:?} (expected \"counting\", \"stem\" or \"stem:SEED\")")]
pub struct UnknownPattern(String);

impl std::str::FromStr for Pattern {
    type Err = UnknownPattern;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "counting" => Ok(Pattern::Counting),
            "stem" => Ok(Pattern::Stem { seed: 0 }),
            _ => s
                .strip_prefix("stem:")
                .and_then(|n| n.parse().ok())
                .map(|seed| Pattern::Stem { seed })
                .ok_or_else(|| UnknownPattern(s.to_string())),
        }
    }
}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Makes whole frames of a [`Pattern`] ([`Pattern::frames`]).
#[derive(Debug, Clone)]
pub enum Frames {
    /// The counting pattern.
    Counting {
        /// The format's pixel mask.
        mask: u16,
        /// Frame rows.
        rows: usize,
        /// Frame columns.
        cols: usize,
    },
    /// The 4D-STEM pattern.
    Stem(stem::StemFrames),
}

impl Frames {
    /// Writes frame `frame_id` into `out` (row-major; a shorter `out` gets the first rows).
    pub fn fill(&self, frame_id: u32, out: &mut [u16]) {
        match self {
            Frames::Counting { mask, rows, cols } => {
                for (r, row) in out.chunks_exact_mut(*cols).enumerate().take(*rows) {
                    for (c, p) in row.iter_mut().enumerate() {
                        *p = pixel_masked(*mask, frame_id, r, c);
                    }
                }
            }
            Frames::Stem(s) => s.fill(frame_id, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k2::IS;

    #[test]
    fn known_values() {
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(pixel(&*IS, 0, 0, 0), 0xDAF);
        assert_eq!(pixel(&*IS, 8, 0, 0), pixel(&*IS, 0, 0, 0));
        assert_ne!(pixel(&*IS, 1, 0, 0), pixel(&*IS, 0, 0, 0));
        assert!(expected_frame(&*IS, 3).iter().all(|&p| p <= 0x0FFF));
    }

    #[test]
    fn patterns_by_name() {
        for (name, p) in [
            ("counting", Pattern::Counting),
            ("stem", Pattern::Stem { seed: 0 }),
            ("stem:9", Pattern::Stem { seed: 9 }),
        ] {
            assert_eq!(name.parse::<Pattern>(), Ok(p));
            assert_eq!(p.to_string(), name);
        }
        assert!("stem:x".parse::<Pattern>().is_err());
        assert!("Stem".parse::<Pattern>().is_err());
        assert_eq!(Pattern::default(), Pattern::Counting);
    }

    #[test]
    fn whole_frames_equal_single_pixels() {
        for p in [Pattern::Counting, Pattern::Stem { seed: 3 }] {
            for f in [crate::k2::IS, crate::registry::by_name("jungfrau-1").unwrap()] {
                let frame = p.frame(&*f, 77);
                for (i, &v) in frame.iter().enumerate().step_by(4999) {
                    assert_eq!(v, p.pixel(&*f, 77, i / f.cols(), i % f.cols()), "{p} {f} pixel {i}");
                }
            }
        }
        assert_eq!(Pattern::Counting.frame(&*IS, 5), expected_frame(&*IS, 5));
    }
}
