//! A file written at given offsets, through `O_DIRECT` where the file system allows it.
//!
//! Frame-ring slots and the frames' file offsets are page aligned, so a frame goes from the ring to the disk
//! without a copy and without filling the page cache (at 2 GB/s the cache would otherwise evict everything else).
//! A write that is not aligned is copied into an aligned buffer first; a file system that refuses `O_DIRECT`
//! writes (`EINVAL`) gets the file reopened buffered, and the writer carries on.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `O_DIRECT`'s alignment of buffers, offsets and lengths: one page.
pub const ALIGN: usize = 4096;

/// A page-aligned copy of some bytes, for writes through an `O_DIRECT` descriptor.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(bytes: &[u8]) -> Option<Self> {
        let layout = std::alloc::Layout::from_size_align(bytes.len().max(1), ALIGN).ok()?;
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return None;
        }
        // SAFETY: ptr holds layout.size() >= bytes.len() bytes, and a fresh allocation does not overlap `bytes`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len()) };
        Some(Self { ptr, layout })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: allocated and initialised with layout.size() bytes in `new`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// An open file written at offsets, `O_DIRECT` while the file system accepts it.
#[derive(Debug)]
pub struct DirectFile {
    file: File,
    direct: bool,
    path: PathBuf,
}

impl DirectFile {
    /// Opens `path` with `opts`, with `O_DIRECT` added if `try_direct` and the file system takes it.
    pub fn open(path: &Path, opts: &OpenOptions, try_direct: bool) -> std::io::Result<Self> {
        let direct_file = try_direct.then(|| opts.clone().custom_flags(libc::O_DIRECT).open(path));
        let (file, direct) = match direct_file {
            Some(Ok(f)) => (f, true),
            _ => (opts.open(path)?, false),
        };
        Ok(Self { file, direct, path: path.to_owned() })
    }

    /// Whether writes bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The open file (for sizing and syncing).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Writes `bytes` at `offset`; an `O_DIRECT` write the file system refuses is retried buffered.
    pub fn write_at(&mut self, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        if self.direct {
            let aligned_ok = (bytes.as_ptr() as usize).is_multiple_of(ALIGN) && bytes.len().is_multiple_of(ALIGN);
            let res = if aligned_ok {
                self.file.write_all_at(bytes, offset)
            } else {
                match Aligned::new(bytes) {
                    Some(a) if bytes.len().is_multiple_of(ALIGN) => self.file.write_all_at(a.as_slice(), offset),
                    _ => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
                }
            };
            match res {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // Reopen without O_DIRECT and carry on buffered.
                    self.file = OpenOptions::new().read(true).write(true).open(&self.path)?;
                    self.direct = false;
                }
                other => return other,
            }
        }
        self.file.write_all_at(bytes, offset)
    }
}
