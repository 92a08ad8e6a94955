//! The `.npy` output format: one C-order little-endian `uint16` array of shape (frames, rows, cols).
//!
//! Format 1.0: magic `\x93NUMPY`, version 1.0, a little-endian u16 header length, then a Python dict literal
//! padded with spaces and ended by `\n`. The format allows any padding that makes the data start at a multiple
//! of 64; we pad to [`HEADER_LEN`] = 4096 bytes so that the frames that follow are page aligned in the file,
//! which `O_DIRECT` writes straight from the frame ring's page-aligned slots require. numpy, npyz and every other
//! reader accept it.
//!
//! Frame `i` is at byte `4096 + i × frame bytes` of `<path>.partial`, preallocated for every planned frame; when
//! fewer frames come, the header is rewritten with the smaller shape and the file cut after the last one.

use std::path::{Path, PathBuf};

use crate::direct::{self, DirectFile};
use crate::format::{
    FormatError, FormatFile, OutputFormat, Plan, ReadBack, check_frame, io_err, output_options, reserve, with_suffix,
};

/// Bytes before the first pixel.
pub const HEADER_LEN: usize = 4096;

/// The header of a C-order little-endian uint16 array of `shape`, exactly [`HEADER_LEN`] bytes.
pub fn header(shape: &[u64]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let dict = format!("{{'descr': '<u2', 'fortran_order': False, 'shape': {shape}, }}");
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(b"\x93NUMPY\x01\x00");
    h.extend_from_slice(&((HEADER_LEN - 10) as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.resize(HEADER_LEN - 1, b' ');
    h.push(b'\n');
    h
}

/// The `.npy` format.
#[derive(Debug, Clone, Copy, Default)]
pub struct Npy;

impl Npy {
    fn open(path: &Path, plan: &Plan, resume: bool) -> Result<Box<dyn FormatFile>, FormatError> {
        let tmp = with_suffix(path, ".partial");
        let opts = output_options(resume);
        let direct_ok = plan.direct_io && plan.shape.frame_bytes().is_multiple_of(direct::ALIGN as u64);
        let file = DirectFile::open(&tmp, &opts, direct_ok)
            .map_err(|e| FormatError::io(format!("creating {}", tmp.display()), e))?;
        let mut f = NpyFile { file, tmp, path: path.to_owned(), plan: *plan };
        // Sizing and the header are repeated on a resume (the same bytes at the same place): the previous writer
        // may have died between creating the file and writing them. A new file that cannot be sized or headed is
        // removed: nothing is left behind for an acquisition that never got a frame.
        if let Err(e) = f.reserve(plan.frames) {
            f.discard();
            return Err(e);
        }
        if let Err(e) = f.file.write_at(&header(&f.shape(plan.frames)), 0) {
            let e = f.err("writing the header of", e);
            if !resume {
                f.discard();
            }
            return Err(e);
        }
        Ok(Box::new(f))
    }
}

impl OutputFormat for Npy {
    fn name(&self) -> &'static str {
        "npy"
    }

    fn extensions(&self) -> &'static [&'static str] {
        &["npy"]
    }

    fn kind(&self) -> &'static str {
        ".npy"
    }

    fn temp_files(&self, path: &Path) -> Vec<PathBuf> {
        vec![with_suffix(path, ".partial")]
    }

    fn file_bytes(&self, plan: &Plan) -> u64 {
        (HEADER_LEN as u64).saturating_add(plan.pixel_bytes())
    }

    fn create(&self, path: &Path, plan: &Plan) -> Result<Box<dyn FormatFile>, FormatError> {
        Self::open(path, plan, false)
    }

    fn resume(&self, path: &Path, plan: &Plan) -> Result<Box<dyn FormatFile>, FormatError> {
        Self::open(path, plan, true)
    }

    fn read(&self, path: &Path) -> Result<ReadBack, FormatError> {
        let bytes = std::fs::read(path).map_err(|e| FormatError::io(format!("reading {}", path.display()), e))?;
        let invalid = |why: String| FormatError::Invalid { path: path.to_owned(), why };
        let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| invalid(format!("not a .npy: {e}")))?;
        let shape: [u64; 3] = npy.shape().try_into().map_err(|_| invalid(format!("shape {:?}", npy.shape())))?;
        if npy.order() != npyz::Order::C {
            return Err(invalid("Fortran order".into()));
        }
        let pixels = npy.into_vec::<u16>().map_err(|e| invalid(format!("not uint16 pixels: {e}")))?;
        Ok(ReadBack { shape, pixels })
    }
}

/// A `.npy` being written.
struct NpyFile {
    file: DirectFile,
    /// `<path>.partial`.
    tmp: PathBuf,
    path: PathBuf,
    plan: Plan,
}

impl NpyFile {
    fn shape(&self, frames: u64) -> [u64; 3] {
        [frames, self.plan.shape.rows, self.plan.shape.cols]
    }

    /// The file's length with `frames` frames.
    fn len(&self, frames: u64) -> u64 {
        HEADER_LEN as u64 + frames * self.plan.shape.frame_bytes()
    }

    fn err(&self, step: &str, e: std::io::Error) -> FormatError {
        io_err(step, &self.tmp, e)
    }

    /// Gives the file the space of `frames` frames ([`reserve`]).
    fn reserve(&self, frames: u64) -> Result<(), FormatError> {
        reserve(self.file.file(), self.len(frames), frames, &self.tmp)
    }
}

impl FormatFile for NpyFile {
    fn write_frame(&mut self, index: u64, pixels: &[u8]) -> Result<(), FormatError> {
        check_frame(&self.tmp, &self.plan, index, pixels)?;
        let offset = self.len(index);
        self.file
            .write_at(pixels, offset)
            .map_err(|e| FormatError::io(format!("writing frame {index} to {}", self.tmp.display()), e))
    }

    fn grow(&mut self, frames: u64) -> Result<(), FormatError> {
        if frames <= self.plan.frames {
            return Ok(());
        }
        self.reserve(frames)?;
        // The header follows, so that a file kept after a crash reads as what it holds.
        self.file.write_at(&header(&self.shape(frames)), 0).map_err(|e| self.err("writing the header of", e))?;
        self.plan.frames = frames;
        Ok(())
    }

    fn finish(&mut self, frames: u64) -> Result<(), FormatError> {
        if frames < self.plan.frames {
            // Fewer frames came: the header says how many, and the file ends after the last one.
            self.file.write_at(&header(&self.shape(frames)), 0).map_err(|e| FormatError::io("fixing the header", e))?;
            self.file.file().set_len(self.len(frames)).map_err(|e| self.err("truncating", e))?;
        }
        self.file.file().sync_all().map_err(|e| self.err("syncing", e))
    }

    fn publish(&mut self) -> Result<(), FormatError> {
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| FormatError::io(format!("renaming {}", self.path.display()), e))
    }

    fn keep(&mut self, frames: u64) -> Result<(), FormatError> {
        // Both steps are tried: a header that says `frames` is what makes the frames readable.
        let header = self.file.write_at(&header(&self.shape(frames)), 0);
        let cut = self.file.file().set_len(self.len(frames));
        header.map_err(|e| FormatError::io("fixing the header", e))?;
        cut.map_err(|e| self.err("truncating", e))
    }

    fn discard(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }

    fn temp_path(&self) -> &Path {
        &self.tmp
    }

    fn is_direct(&self) -> bool {
        self.file.is_direct()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{self, FRAMES, SHAPE, TempDir};

    #[test]
    fn header_is_page_sized_and_readable() {
        let h = header(&[2, 3, 4]);
        assert_eq!(h.len(), HEADER_LEN);
        let mut file = h.clone();
        for v in 0u16..24 {
            file.extend_from_slice(&v.to_le_bytes());
        }
        let npy = npyz::NpyFile::new(&file[..]).unwrap();
        assert_eq!(npy.shape(), &[2, 3, 4]);
        let data: Vec<u16> = npy.into_vec().unwrap();
        assert_eq!(data, (0..24).collect::<Vec<u16>>());
    }

    /// The bytes on disk: the 4096-byte header, then the frames, each at `4096 + i × frame bytes`; short files
    /// have the smaller shape in their header and end after their last frame. Buffered and `O_DIRECT` alike.
    #[test]
    fn file_is_header_then_frames() {
        let dir = TempDir::new("npy-bytes").unwrap();
        for direct_io in [true, false] {
            for n in [FRAMES, 2, 0] {
                let path = dir.path().join(format!("{direct_io}-{n}.npy"));
                let plan = Plan { shape: SHAPE, frames: FRAMES, direct_io, compression: Default::default() };
                let mut f = Npy.create(&path, &plan).unwrap();
                assert_eq!(f.temp_path(), with_suffix(&path, ".partial"));
                for i in (0..n).rev() {
                    let px: Vec<u8> = conformance::frame(i).iter().flat_map(|p| p.to_le_bytes()).collect();
                    f.write_frame(i, &px).unwrap();
                }
                f.finish(n).unwrap();
                f.publish().unwrap();
                let mut want = header(&[n, SHAPE.rows, SHAPE.cols]);
                want.extend((0..n).flat_map(conformance::frame).flat_map(u16::to_le_bytes));
                assert_eq!(std::fs::read(&path).unwrap(), want, "direct_io {direct_io}, {n} frames");
            }
        }
    }

    #[test]
    fn a_frame_that_does_not_fit_is_refused() {
        let dir = TempDir::new("npy-refused").unwrap();
        let path = dir.path().join("x.npy");
        let mut f = Npy
            .create(&path, &Plan { shape: SHAPE, frames: 2, direct_io: false, compression: Default::default() })
            .unwrap();
        let px = vec![0u8; SHAPE.frame_bytes() as usize];
        assert!(f.write_frame(2, &px).is_err());
        assert!(f.write_frame(0, &px[1..]).is_err());
        f.write_frame(1, &px).unwrap();
    }

    #[test]
    fn read_refuses_other_arrays() {
        let dir = TempDir::new("npy-read").unwrap();
        let path = dir.path().join("x.npy");
        let mut bytes = header(&[2, 3]);
        bytes.extend([0u8; 12]);
        std::fs::write(&path, &bytes).unwrap();
        let err = Npy.read(&path).unwrap_err().to_string();
        assert!(err.contains("shape [2, 3]"), "{err}");
        std::fs::write(&path, b"not numpy").unwrap();
        assert!(Npy.read(&path).unwrap_err().to_string().contains("not a .npy"));
    }
}
