//! Gatan's raw K2 recording layout: eight sector files `NAME1.bin` … `NAME8.bin` and a tag file `NAME.gtg`, as
//! Gatan's software writes them and LiberTEM's `K2ISDataSet` reads them.
//!
//! - Sector `s` (0-based) is the file whose name sorts `s`-th among `NAME*.bin` (here `NAME{s+1}.bin`; LiberTEM
//!   sorts the names the same way). It holds whole blocks (40-byte header and payload, exactly as the camera sends
//!   them, [`crate::k2::header`]) back to back: per frame, the sector's blocks in the camera's order (block `k`
//!   is x-block `across - 1 - k mod across`, y-block `k div across`: 32 blocks of 0x5758 bytes for IS). Readers
//!   compute offsets, so a frame is always whole: a block that never arrived is written as a *placeholder* at its
//!   place ([`placeholder`]): a valid header (the frame's id, the `block_count` the block would have had, its
//!   position) with [`PLACEHOLDER_MARK`] in its first padding bytes, and pixels at the pipeline's fill value.
//!   Replay does not send placeholders: they never arrived.
//! - Flags bit 0 (shutter active) marks the frames that belong to the acquisition; LiberTEM starts at the first
//!   block that has it (it checks a sector's first block, then probes every 400 frames, so a short recording
//!   must have it from its first block). The recorder sets it on every block it writes; every other byte of a
//!   recorded block is the camera's.
//! - A scan's first sector file starts with one *lead-in* block ([`lead_in`], marked [`LEAD_IN_MARK`]): the
//!   first frame's second block as a placeholder. LiberTEM, given a scan size, reads from one frame before the
//!   first flagged one (Gatan's STEM recordings set the flag one frame late), which for a recording flagged from
//!   its start would be before the files begin. It first aligns the sectors on their first blocks'
//!   `block_count` and skips a leading partial frame: the lead-in makes it take the scan's first frame for that
//!   partial frame in every sector, sync to the second, and step back one frame to the first, whole. It counts a
//!   scan's frames from there, the second, so the recorder writes the frame after the scan too: without it
//!   LiberTEM would read the scan's last frame as zeros. Replay skips the lead-in.
//! - `NAME.gtg` is a tag-only DM4 file ([`dm4`]); with a scan it holds `SI Dimensions` / `Size X`, `Size Y`,
//!   which LiberTEM reads as the navigation shape (else the recording is a time series).
//!
//! K2 IS is the layout LiberTEM and Gatan read. Summit blocks have the same header and the same per-sector order
//! in this crate's format by construction ([`crate::k2`]), so a Summit stream is recorded the same way (80 blocks
//! of 0xC028 bytes per sector per frame); only ringdaq's replay reads it back (LiberTEM's reader is IS-only).

pub mod collect;
pub mod dm4;
pub mod read;
pub mod write;

use std::path::{Path, PathBuf};

use crate::format::Format;
use crate::k2::geometry::{Geometry, HEADER_BYTES, PixelEncoding, SECTORS};
use crate::k2::header::{BlockHeader, FLAG_SYNC};
use crate::k2::{IS, IS_GEOMETRY, SUMMIT, SUMMIT_GEOMETRY, decode};

/// Written into header bytes 4..8 (padding, zero from the camera) of a placeholder block.
pub const PLACEHOLDER_MARK: [u8; 4] = *b"RDQP";

/// Written into header bytes 4..8 of the lead-in block that starts the first sector file of a scan.
pub const LEAD_IN_MARK: [u8; 4] = *b"RDQL";

/// Why a Gatan recording cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum GatanError {
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The recording's name cannot be used.
    #[error("{0}")]
    Name(String),
    /// Files of the recording (or that a reader would take for its sectors) exist already.
    #[error("{} exists already: a recording is never overwritten, and readers would take NAME*.bin for sectors", .0.display())]
    Exists(PathBuf),
    /// Not eight sector files.
    #[error("expected {SECTORS} sector files {pattern}, found {found}")]
    Files {
        /// The pattern looked for.
        pattern: String,
        /// How many match.
        found: usize,
    },
    /// The detector is not a K2.
    #[error("the Gatan raw format holds K2 IS (and Summit) streams, not {0}")]
    NotK2(String),
    /// A sector file's first block is not a K2 block.
    #[error("{}: not a K2 raw file ({why})", path.display())]
    NotK2File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> GatanError + 'a {
    move |source| GatanError::Io { what, path: path.to_owned(), source }
}

/// The K2 geometry of a detector format, if it is a K2 mode.
pub fn geometry_of(format: Format) -> Option<Geometry> {
    if format == IS {
        Some(IS_GEOMETRY)
    } else if format == SUMMIT {
        Some(SUMMIT_GEOMETRY)
    } else {
        None
    }
}

/// The files of one recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The tag file, `NAME.gtg`.
    pub gtg: PathBuf,
    /// The sector files in sector order.
    pub bins: Vec<PathBuf>,
}

impl Paths {
    /// The files to write for `out` = `DIR/NAME` (or `DIR/NAME.gtg`): refuses a name that is empty or ends in a
    /// digit (readers strip trailing digits from a `.bin` name to find the others: `run7` would be read as
    /// `run`), and any existing `NAME.gtg` or `NAME*.bin` in `DIR`.
    pub fn for_output(out: &Path) -> Result<Self, GatanError> {
        let file = out.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let name = match file.rsplit_once('.') {
            Some((stem, ext)) if ext.eq_ignore_ascii_case("gtg") => stem,
            _ => file,
        };
        if name.is_empty() {
            return Err(GatanError::Name(format!("{}: no recording name (DIR/NAME)", out.display())));
        }
        if name.ends_with(|c: char| c.is_ascii_digit()) {
            return Err(GatanError::Name(format!(
                "recording name {name:?} ends in a digit: readers strip it to find the sector files; \
                 end it with a letter or '_' (e.g. {name}_)"
            )));
        }
        let dir = match out.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let gtg = dir.join(format!("{name}.gtg"));
        if gtg.exists() {
            return Err(GatanError::Exists(gtg));
        }
        if let Some(clash) = sector_files(&dir, name)?.into_iter().next() {
            return Err(GatanError::Exists(clash));
        }
        let bins = (1..=SECTORS).map(|s| dir.join(format!("{name}{s}.bin"))).collect();
        Ok(Self { gtg, bins })
    }

    /// The files of the recording `path` names (its `.gtg` or any of its `.bin` files), found as LiberTEM finds
    /// them: `NAME*.bin` beside it, sorted; there must be eight.
    pub fn discover(path: &Path) -> Result<Self, GatanError> {
        let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let (stem, ext) = file.rsplit_once('.').unwrap_or((file, ""));
        let name = if ext.eq_ignore_ascii_case("gtg") {
            stem
        } else if ext.eq_ignore_ascii_case("bin") {
            stem.trim_end_matches(|c: char| c.is_ascii_digit())
        } else {
            return Err(GatanError::Name(format!(
                "{}: a Gatan recording is named by its .gtg or a .bin",
                path.display()
            )));
        };
        if name.is_empty() {
            return Err(GatanError::Name(format!("{}: no recording name before the sector number", path.display())));
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let bins = sector_files(&dir, name)?;
        if bins.len() != SECTORS {
            return Err(GatanError::Files {
                pattern: dir.join(format!("{name}*.bin")).display().to_string(),
                found: bins.len(),
            });
        }
        Ok(Self { gtg: dir.join(format!("{name}.gtg")), bins })
    }
}

/// `dir/NAME*.bin`, sorted by name (as a glob does).
fn sector_files(dir: &Path, name: &str) -> Result<Vec<PathBuf>, GatanError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return Err(io("listing", dir)(e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(io("listing", dir))?;
        let n = e.file_name();
        let Some(n) = n.to_str() else { continue };
        if n.starts_with(name) && n.ends_with(".bin") && n.len() >= name.len() + 4 {
            out.push(dir.join(n));
        }
    }
    out.sort();
    Ok(out)
}

/// Sets or clears the shutter-active flag (bit 0 of byte 9) of a block header.
pub fn set_sync_flag(header: &mut [u8; HEADER_BYTES], on: bool) {
    if on {
        header[9] |= FLAG_SYNC;
    } else {
        header[9] &= !FLAG_SYNC;
    }
}

/// Whether a block is a placeholder written for a block that did not arrive.
pub fn is_placeholder(block: &[u8]) -> bool {
    block.get(4..8) == Some(&PLACEHOLDER_MARK[..])
}

/// The header of a placeholder for block `k` (the camera's order) of a sector of frame `frame_id`, whose
/// sector's first block has `block_count` `base_count`.
pub fn placeholder(g: &Geometry, frame_id: u32, base_count: u32, k: usize, sync: bool) -> [u8; HEADER_BYTES] {
    let (x, y) = g.block_position(k);
    let flags = if sync { FLAG_SYNC } else { 0 };
    let mut h = [0u8; HEADER_BYTES];
    BlockHeader::for_block(g, frame_id, base_count.wrapping_add(k as u32), x, y, flags).encode(&mut h);
    h[4..8].copy_from_slice(&PLACEHOLDER_MARK);
    h
}

/// Whether a block is the lead-in block of a scan recording.
pub fn is_lead_in(block: &[u8]) -> bool {
    block.get(4..8) == Some(&LEAD_IN_MARK[..])
}

/// The header of the lead-in block of a scan whose first frame is `frame_id` with `block_count` `base_count`
/// for its sectors' first blocks: that frame's second block as a placeholder, marked [`LEAD_IN_MARK`].
pub fn lead_in(g: &Geometry, frame_id: u32, base_count: u32) -> [u8; HEADER_BYTES] {
    let mut h = placeholder(g, frame_id, base_count, 1, false);
    h[4..8].copy_from_slice(&LEAD_IN_MARK);
    h
}

/// A block payload whose every pixel is `fill` (masked to the encoding's bits).
pub fn fill_payload(g: &Geometry, fill: u16) -> Vec<u8> {
    let row = vec![fill & g.pixel_mask(); g.block_width()];
    let mut out = vec![0u8; g.payload_bytes()];
    for dst in out.chunks_exact_mut(g.row_bytes()) {
        match g.encoding() {
            PixelEncoding::Packed12 => decode::pack12(&row, dst),
            PixelEncoding::U16Be => decode::encode_u16be(&row, dst),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory, removed on drop (also when a test fails).
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            let d = std::env::temp_dir().join(format!("ringdaq-gatan-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("temp dir");
            Self(d)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn names_and_discovery() {
        let t = TempDir::new("names");
        let d = &t.0;
        let p = Paths::for_output(&d.join("cap_.gtg")).expect("paths");
        assert_eq!(p.gtg, d.join("cap_.gtg"));
        assert_eq!(p.bins[0], d.join("cap_1.bin"));
        assert_eq!(p.bins[7], d.join("cap_8.bin"));
        assert!(matches!(Paths::for_output(&d.join("run7")), Err(GatanError::Name(_))));
        for b in &p.bins {
            std::fs::write(b, b"").expect("touch");
        }
        assert!(matches!(Paths::for_output(&d.join("cap_")), Err(GatanError::Exists(_))));
        assert_eq!(Paths::discover(&d.join("cap_.gtg")).expect("from gtg"), p);
        assert_eq!(Paths::discover(&d.join("cap_3.bin")).expect("from bin"), p);
        std::fs::remove_file(&p.bins[7]).expect("rm");
        assert!(matches!(Paths::discover(&p.gtg), Err(GatanError::Files { found: 7, .. })));
        assert!(matches!(Paths::discover(&d.join("12.bin")), Err(GatanError::Name(_))));
        assert!(matches!(Paths::discover(&d.join("cap_.npy")), Err(GatanError::Name(_))));
    }

    #[test]
    fn placeholders_are_valid_marked_blocks() {
        for g in [IS_GEOMETRY, SUMMIT_GEOMETRY] {
            let h = placeholder(&g, 9, 64, 3, true);
            let mut block = h.to_vec();
            block.extend_from_slice(&fill_payload(&g, 0x0ABC));
            let parsed = BlockHeader::parse(&block, &g).expect("a valid block");
            assert_eq!((parsed.frame_id, parsed.block_count), (9, 67));
            assert_eq!((usize::from(parsed.x_start), usize::from(parsed.y_start)), g.block_position(3));
            assert!(parsed.sync() && is_placeholder(&block));
            let mut px = vec![0u16; g.block_width()];
            match g.encoding() {
                PixelEncoding::Packed12 => decode::unpack12(&block[40..40 + g.row_bytes()], &mut px),
                PixelEncoding::U16Be => decode::decode_u16be(&block[40..40 + g.row_bytes()], &mut px),
            }
            assert!(px.iter().all(|&p| p == 0x0ABC));
        }
    }
}
