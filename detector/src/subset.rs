//! Part of a detector: a pipeline that takes only some of a detector's streams (K2 sectors, JUNGFRAU modules),
//! so that several pipelines, on one host or several, share one detector (`ringdaq run --sectors 0-3`).
//!
//! A [`View`] is a format restricted to a set of [`Streams`]: its stream `i` is the detector's stream
//! `subset[i]` (the `i`-th socket the pipeline binds), its blocks are only theirs (so a frame is complete when
//! their blocks are in), and its frame holds only their pixels. Where each stream's pixels lie, in the part's
//! frame and in the whole detector's, is the [`Placement`], which travels with the data to the files, so that
//! the parts can be put back together (`ringdaq stitch`). The view of every stream is the format itself.
//!
//! A format opts in with [`DetectorFormat::stream_rect`] and [`DetectorFormat::restrict`]; the core never asks
//! which detector it is.

use std::fmt;
use std::sync::Arc;

use crate::format::{DetectorFormat, Format};

/// Most streams a detector may have for a subset to be taken of it (the set is a 64-bit mask).
pub const MAX_STREAMS: usize = 64;

/// A rectangle of pixels in a frame: rows `row .. row + rows`, columns `col .. col + cols`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Rect {
    /// First row.
    pub row: usize,
    /// First column.
    pub col: usize,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

/// Why a set of streams cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubsetError {
    /// Not a number, or an empty item.
    #[error("{0:?} is not a list of sectors (expected a range such as 0-3 or a list such as 0,1,2,3)")]
    Syntax(String),
    /// A range written backwards.
    #[error("sector range {0}-{1} runs backwards")]
    Backwards(usize, usize),
    /// No stream at all.
    #[error("no sectors given")]
    Empty,
    /// A stream the detector does not have.
    #[error("sector {stream} does not exist: {format} has sectors 0-{}", streams - 1)]
    NoSuchStream {
        /// The stream asked for.
        stream: usize,
        /// The detector format.
        format: String,
        /// Its streams.
        streams: usize,
    },
    /// The detector has more streams than a set can hold.
    #[error("{format} has {streams} streams; a subset can be taken of at most {MAX_STREAMS}")]
    TooManyStreams {
        /// The detector format.
        format: String,
        /// Its streams.
        streams: usize,
    },
    /// The format cannot decode a part of its streams.
    #[error("{0} cannot be split: it receives all its streams or none")]
    NotSplittable(String),
    /// The format's part does not agree with the whole (a format bug; the conformance suite catches it).
    #[error("{format}: its part for sectors {streams} is inconsistent: {why}")]
    Inconsistent {
        /// The detector format.
        format: String,
        /// The subset.
        streams: String,
        /// What disagrees.
        why: String,
    },
}

/// Stream indices as written by a user: `0-3`, `0,1,2,3`, `0-1,4-5` (whitespace ignored, repeats merged).
/// Not yet checked against a detector (see [`Streams::new`]).
pub fn parse_list(text: &str) -> Result<Vec<usize>, SubsetError> {
    let bad = || SubsetError::Syntax(text.to_string());
    let num = |s: &str| s.trim().parse::<usize>().map_err(|_| bad());
    let mut out = Vec::new();
    for item in text.split(',') {
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if b < a {
                    return Err(SubsetError::Backwards(a, b));
                }
                // A range past any detector is refused by `Streams::new`; do not build a huge vector first.
                if b >= MAX_STREAMS {
                    out.push(b);
                } else {
                    out.extend(a..=b);
                }
            }
            None => out.push(num(item)?),
        }
    }
    if out.is_empty() {
        return Err(SubsetError::Empty);
    }
    Ok(out)
}

/// A non-empty set of a detector's streams, each below the detector's stream count.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Streams {
    mask: u64,
    /// The detector's streams.
    of: usize,
}

impl Streams {
    /// Every stream of `format`.
    pub fn all(format: &dyn DetectorFormat) -> Self {
        let n = format.streams().min(MAX_STREAMS);
        Self { mask: if n == 64 { u64::MAX } else { (1u64 << n) - 1 }, of: format.streams() }
    }

    /// The streams `list` of `format`, refused if empty or if one is not a stream of it.
    pub fn new(format: &dyn DetectorFormat, list: &[usize]) -> Result<Self, SubsetError> {
        let of = format.streams();
        if of > MAX_STREAMS {
            return Err(SubsetError::TooManyStreams { format: format.name().into(), streams: of });
        }
        if list.is_empty() {
            return Err(SubsetError::Empty);
        }
        let mut mask = 0u64;
        for &s in list {
            if s >= of {
                return Err(SubsetError::NoSuchStream { stream: s, format: format.name().into(), streams: of });
            }
            mask |= 1 << s;
        }
        Ok(Self { mask, of })
    }

    /// The streams of `format` set in `mask` (as recorded in a region).
    pub fn from_mask(format: &dyn DetectorFormat, mask: u64) -> Result<Self, SubsetError> {
        let list: Vec<usize> = (0..64).filter(|s| mask & (1 << s) != 0).collect();
        Self::new(format, &list)
    }

    /// Bit `s` set for stream `s`.
    pub const fn mask(&self) -> u64 {
        self.mask
    }

    /// Streams in the set.
    pub const fn len(&self) -> usize {
        self.mask.count_ones() as usize
    }

    /// Never: a set holds at least one stream.
    pub const fn is_empty(&self) -> bool {
        self.mask == 0
    }

    /// Whether the set holds every stream of its detector.
    pub const fn is_all(&self) -> bool {
        self.len() == self.of
    }

    /// Whether stream `s` is in the set.
    pub const fn contains(&self, s: usize) -> bool {
        s < 64 && self.mask & (1 << s) != 0
    }

    /// The streams, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..64).filter(|&s| self.contains(s))
    }
}

impl fmt::Display for Streams {
    /// Ranges joined by commas: `0-3`, `0,2,5-7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v: Vec<usize> = self.iter().collect();
        let mut i = 0;
        let mut first = true;
        while i < v.len() {
            let mut j = i;
            while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
                j += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if j > i {
                write!(f, "{}-{}", v[i], v[j])?
            } else {
                write!(f, "{}", v[i])?
            }
            i = j + 1;
        }
        Ok(())
    }
}

impl fmt::Debug for Streams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Streams({self} of {})", self.of)
    }
}

/// One rectangle of a part's frame and where it lies in the whole detector's frame (same size in both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlacedRect {
    /// First row in the part's frame.
    pub row: usize,
    /// First column in the part's frame.
    pub col: usize,
    /// First row in the whole detector's frame.
    pub full_row: usize,
    /// First column in the whole detector's frame.
    pub full_col: usize,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

/// Where a part's frame lies in the whole detector's frame: rectangles (adjacent streams merged into one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Rows of the whole detector's frame.
    pub full_rows: usize,
    /// Columns of the whole detector's frame.
    pub full_cols: usize,
    /// The part's streams.
    pub streams: Streams,
    /// The rectangles, in stream order.
    pub rects: Vec<PlacedRect>,
}

impl Placement {
    /// Adds a rectangle, merging it into the last one where the two are adjacent in both frames.
    fn push(&mut self, r: PlacedRect) {
        if let Some(last) = self.rects.last_mut() {
            let beside = last.row == r.row
                && last.full_row == r.full_row
                && last.rows == r.rows
                && last.col + last.cols == r.col
                && last.full_col + last.cols == r.full_col;
            let below = last.col == r.col
                && last.full_col == r.full_col
                && last.cols == r.cols
                && last.row + last.rows == r.row
                && last.full_row + last.rows == r.full_row;
            if beside {
                last.cols += r.cols;
                return;
            }
            if below {
                last.rows += r.rows;
                return;
            }
        }
        self.rects.push(r);
    }
}

/// A detector format seen through a subset of its streams: what a pipeline that takes those streams receives,
/// assembles and writes. Dereferences to the part's [`DetectorFormat`]; the whole is [`View::full`].
#[derive(Clone)]
pub struct View {
    full: Format,
    streams: Streams,
    /// The format of the part; `None` for every stream (the format itself).
    part: Option<Arc<dyn DetectorFormat>>,
}

impl View {
    /// The whole detector.
    pub fn whole(full: Format) -> Self {
        Self { full, streams: Streams::all(full.get()), part: None }
    }

    /// `full` restricted to `streams`; the whole detector if `streams` holds every stream.
    pub fn new(full: Format, streams: Streams) -> Result<Self, SubsetError> {
        if streams.of != full.streams() {
            return Err(SubsetError::NoSuchStream {
                stream: streams.of,
                format: full.name().into(),
                streams: full.streams(),
            });
        }
        if streams.is_all() {
            return Ok(Self::whole(full));
        }
        let part = full.restrict(&streams).ok_or_else(|| SubsetError::NotSplittable(full.name().into()))?;
        let v = Self { full, streams, part: Some(part) };
        v.check()?;
        Ok(v)
    }

    /// The part agrees with the whole: one stream per chosen stream, each of the same size in both frames.
    fn check(&self) -> Result<(), SubsetError> {
        let bad = |why: String| SubsetError::Inconsistent {
            format: self.full.name().into(),
            streams: self.streams.to_string(),
            why,
        };
        if self.streams() != self.streams.len() {
            return Err(bad(format!("{} streams for {} chosen", self.streams(), self.streams.len())));
        }
        for (i, s) in self.streams.iter().enumerate() {
            match (self.stream_rect(i), self.full.stream_rect(s)) {
                (Some(p), Some(w)) if (p.rows, p.cols) == (w.rows, w.cols) => {}
                (p, w) => return Err(bad(format!("stream {s} placed as {p:?} in the part, {w:?} in the whole"))),
            }
        }
        Ok(())
    }

    /// The whole detector's format.
    pub fn full(&self) -> Format {
        self.full
    }

    /// The detector's streams this view takes (its stream `i` is the set's `i`-th).
    pub fn subset(&self) -> Streams {
        self.streams
    }

    /// Whether this is the whole detector.
    pub fn is_whole(&self) -> bool {
        self.part.is_none()
    }

    /// The part's format (the whole's for every stream).
    pub fn format(&self) -> &(dyn DetectorFormat + 'static) {
        match &self.part {
            Some(p) => p.as_ref(),
            None => self.full.get(),
        }
    }

    /// Where the part's frame lies in the whole detector's frame. A format that places no streams
    /// ([`DetectorFormat::stream_rect`] `None`) can only be taken whole: one rectangle, the frame.
    pub fn placement(&self) -> Placement {
        let mut p = Placement {
            full_rows: self.full.rows(),
            full_cols: self.full.cols(),
            streams: self.streams,
            rects: Vec::new(),
        };
        if self.part.is_none() {
            let whole = PlacedRect { row: 0, col: 0, full_row: 0, full_col: 0, rows: p.full_rows, cols: p.full_cols };
            p.rects.push(whole);
            return p;
        }
        for (i, s) in self.streams.iter().enumerate() {
            // `check` made sure both are there and of one size.
            if let (Some(r), Some(w)) = (self.stream_rect(i), self.full.stream_rect(s)) {
                p.push(PlacedRect {
                    row: r.row,
                    col: r.col,
                    full_row: w.row,
                    full_col: w.col,
                    rows: r.rows,
                    cols: r.cols,
                });
            }
        }
        p
    }
}

impl std::ops::Deref for View {
    type Target = dyn DetectorFormat;
    fn deref(&self) -> &Self::Target {
        self.format()
    }
}

impl fmt::Display for View {
    /// `is`, or `is sectors 0-3` for a part.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_whole() { write!(f, "{}", self.full) } else { write!(f, "{} sectors {}", self.full, self.streams) }
    }
}

impl fmt::Debug for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "View({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::FORMATS;

    #[test]
    fn lists_and_ranges_parse() {
        assert_eq!(parse_list("0-3"), Ok(vec![0, 1, 2, 3]));
        assert_eq!(parse_list(" 0, 1,2 ,3"), Ok(vec![0, 1, 2, 3]));
        assert_eq!(parse_list("0-1,4-5"), Ok(vec![0, 1, 4, 5]));
        assert_eq!(parse_list("3-1"), Err(SubsetError::Backwards(3, 1)));
        assert!(matches!(parse_list("a"), Err(SubsetError::Syntax(_))));
        assert!(matches!(parse_list(""), Err(SubsetError::Syntax(_))));
        assert!(matches!(parse_list("1,,2"), Err(SubsetError::Syntax(_))));
        assert_eq!(parse_list("0-99999999999").map(|v| v.len()), Ok(1));
    }

    #[test]
    fn sets_are_checked_against_the_detector() {
        let is = crate::k2::IS;
        let s = Streams::new(is.get(), &[5, 4, 7, 6, 4]).unwrap();
        assert_eq!((s.to_string(), s.len(), s.mask(), s.is_all()), ("4-7".into(), 4, 0xF0, false));
        assert_eq!(Streams::new(is.get(), &[0, 2, 3, 5]).unwrap().to_string(), "0,2-3,5");
        let e = Streams::new(is.get(), &[3, 8]).unwrap_err();
        assert_eq!(e.to_string(), "sector 8 does not exist: is has sectors 0-7");
        assert_eq!(Streams::new(is.get(), &[]), Err(SubsetError::Empty));
        assert!(Streams::all(is.get()).is_all());
        assert_eq!(Streams::from_mask(is.get(), 0xF0), Ok(s));
        assert!(Streams::from_mask(is.get(), 0x100).is_err());
    }

    #[test]
    fn k2_is_half_is_half_the_columns() {
        let is = crate::k2::IS;
        let v = View::new(is, Streams::new(is.get(), &[4, 5, 6, 7]).unwrap()).unwrap();
        assert_eq!((v.rows(), v.cols(), v.streams(), v.blocks_per_frame()), (1860, 1024, 4, 128));
        assert_eq!(v.to_string(), "is sectors 4-7");
        let p = v.placement();
        assert_eq!((p.full_rows, p.full_cols), (1860, 2048));
        let want = PlacedRect { row: 0, col: 0, full_row: 0, full_col: 1024, rows: 1860, cols: 1024 };
        assert_eq!(p.rects, [want]);
        let gaps = View::new(is, Streams::new(is.get(), &[0, 2, 3]).unwrap()).unwrap().placement();
        assert_eq!(
            gaps.rects.iter().map(|r| (r.col, r.full_col, r.cols)).collect::<Vec<_>>(),
            [(0, 0, 256), (256, 512, 512)]
        );
        let whole = View::new(is, Streams::all(is.get())).unwrap();
        assert!(whole.is_whole());
        assert_eq!(
            whole.placement().rects,
            [PlacedRect { row: 0, col: 0, full_row: 0, full_col: 0, rows: 1860, cols: 2048 }]
        );
    }

    #[test]
    fn jungfrau_modules_stack() {
        let jf = crate::registry::by_name("jungfrau-4").unwrap();
        let v = View::new(jf, Streams::new(jf.get(), &[1, 2]).unwrap()).unwrap();
        assert_eq!((v.rows(), v.cols(), v.streams()), (1024, 1024, 2));
        let want = PlacedRect { row: 0, col: 0, full_row: 512, full_col: 0, rows: 1024, cols: 1024 };
        assert_eq!(v.placement().rects, [want]);
    }

    #[test]
    fn every_part_of_every_splittable_format_conforms() {
        for f in FORMATS {
            let n = f.streams();
            // Every single stream, the first half, the last half, every other one.
            let mut sets: Vec<Vec<usize>> = (0..n).map(|s| vec![s]).collect();
            sets.push((0..n.div_ceil(2)).collect());
            sets.push((n / 2..n).collect());
            sets.push((0..n).step_by(2).collect());
            for list in sets {
                let s = Streams::new(f.get(), &list).unwrap();
                if let Err(e) = crate::conformance::check_view(*f, s) {
                    panic!("{f} sectors {s}: {e}");
                }
            }
        }
    }
}
