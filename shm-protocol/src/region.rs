//! The shared-memory region: one sealed memfd, mapped by every process of the pipeline.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use memfd::{FileSeal, MemfdOptions};
use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{FallocateFlags, SealFlags};

use crate::layout::{self, LAYOUT_VERSION, MAGIC, PAGE_SIZE, RegionHeader, RegionSpec, RingDesc, SpecError};
// The region hands out rings; rings know nothing of the region (they are given a base pointer and a
// descriptor), so the dependency runs one way.
pub use crate::ring::Access;
use crate::ring::Ring;

/// Why a region could not be created or attached.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// The spec cannot be laid out.
    #[error("invalid region spec: {0}")]
    Spec(#[from] SpecError),
    /// An OS call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Not a ringdaq region.
    #[error("not a ringdaq region: magic {found:02x?}, expected {MAGIC:02x?}")]
    BadMagic {
        /// The bytes found at offset 0.
        found: [u8; 8],
    },
    /// A region of another layout version.
    #[error(
        "region layout version {found} is not supported: this build speaks layout version {expected}; \
         restart the pipeline and its stages from the same build"
    )]
    VersionMismatch {
        /// Version recorded in the region.
        found: u32,
        /// Version this build speaks.
        expected: u32,
    },
    /// The header contradicts itself or the file.
    #[error("corrupt region header: {0}")]
    Corrupt(String),
    /// The memfd is not sealed against shrinking, so a mapping could fault under us.
    #[error("region fd is not sealed against shrinking; refusing to map it")]
    NotSealed,
    /// A ring index that the region does not have.
    #[error("ring {index} does not exist (region has {count})")]
    NoSuchRing {
        /// Requested index.
        index: usize,
        /// Rings in the region.
        count: usize,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> RegionError {
    move |source| RegionError::Io { what, source }
}

/// A mapped ringdaq region.
///
/// Created once by the supervisor ([`Region::create`]) and attached by every other process from the memfd it
/// received ([`Region::attach`]). Dropping it unmaps this process's view; the memory lives while any process holds
/// the fd or a mapping.
#[derive(Debug)]
pub struct Region {
    map: MmapRaw,
    file: File,
    header: RegionHeader,
    access: Access,
}

// SAFETY: the mapping is process-shared memory that is only accessed through atomics or under the ring protocol;
// `Region` itself holds no thread-affine state.
unsafe impl Send for Region {}
// SAFETY: as above; all shared mutation goes through atomics in the region.
unsafe impl Sync for Region {}

impl Region {
    /// Creates, sizes, seals (no shrink, no grow), pre-allocates and pre-faults a new region laid out from `spec`.
    pub fn create(spec: &RegionSpec) -> Result<Self, RegionError> {
        let header = layout::compute_layout(spec)?;
        let memfd = MemfdOptions::new()
            .allow_sealing(true)
            .close_on_exec(true)
            .create("ringdaq-region")
            .map_err(|e| io_err("memfd_create")(io::Error::other(e)))?;
        let file = memfd.into_file();
        file.set_len(header.region_size).map_err(io_err("sizing the region"))?;
        // Reserve the pages now: a tmpfs out of space fails here, at start-up, not as a SIGBUS mid-run.
        rustix::fs::fallocate(&file, FallocateFlags::empty(), 0, header.region_size)
            .map_err(|e| io_err("allocating the region (fallocate)")(e.into()))?;
        let memfd = memfd::Memfd::try_from_file(file)
            .map_err(|_| io_err("re-wrapping memfd")(io::Error::other("not a memfd")))?;
        memfd
            .add_seals(&[FileSeal::SealShrink, FileSeal::SealGrow, FileSeal::SealSeal])
            .map_err(|e| io_err("sealing the region")(io::Error::other(e)))?;
        let file = memfd.into_file();
        let map = MmapOptions::new()
            .len(header.region_size as usize)
            .populate()
            .map_raw(&file)
            .map_err(io_err("mapping the region"))?;
        // SAFETY: the mapping is at least `region_size` >= PAGE_SIZE bytes long, page aligned, and nobody else
        // has the fd yet, so this unaligned write of a Pod struct races with no one.
        unsafe { std::ptr::write_unaligned(map.as_mut_ptr().cast::<RegionHeader>(), header) };
        tracing::debug!(size = header.region_size, rings = header.ring_count, "region created");
        Ok(Self { map, file, header, access: Access::ReadWrite })
    }

    /// Attaches to a region from its memfd, checking magic, layout version, seals and every offset.
    pub fn attach(fd: OwnedFd, access: Access) -> Result<Self, RegionError> {
        let file = File::from(fd);
        let seals = rustix::fs::fcntl_get_seals(&file).map_err(|e| io_err("reading seals")(e.into()))?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(RegionError::NotSealed);
        }
        let file_len = file.metadata().map_err(io_err("fstat of the region"))?.len();
        if file_len < PAGE_SIZE as u64 {
            return Err(RegionError::Corrupt(format!("region is {file_len} bytes, less than a page")));
        }
        // Not MAP_POPULATE: building the page tables of a large region takes tens of milliseconds (24 ms for the
        // default 150 MB), and a stage restarting after a crash must not wait for it. The pages themselves are
        // resident in the memfd since its creation, so the first lap over the rings takes only minor faults
        // (about a microsecond per page, read faults mapping 16 pages at once). Populating on a helper thread
        // instead was measured slower: on two cores it takes the CPU the restarting stage needs.
        let map = match access {
            Access::ReadWrite => MmapOptions::new().len(file_len as usize).map_raw(&file),
            Access::ReadOnly => MmapOptions::new().len(file_len as usize).map_raw_read_only(&file),
        }
        .map_err(io_err("mapping the region"))?;
        // SAFETY: the mapping is at least a page long; the header is Pod and written before the fd was shared.
        let header: RegionHeader = unsafe { std::ptr::read_unaligned(map.as_ptr().cast()) };
        validate_header(&header, file_len)?;
        Ok(Self { map, file, header, access })
    }

    /// The region's header (a copy taken at attach time; it never changes).
    pub fn header(&self) -> &RegionHeader {
        &self.header
    }

    /// How this process mapped the region.
    pub fn access(&self) -> Access {
        self.access
    }

    /// The memfd, to pass to another process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// A new, read-only file description of the same memory, for consumers that must not write it.
    ///
    /// Opened through `/proc/self/fd`, so it has its own `O_RDONLY` access mode: `mmap` with `PROT_WRITE` on it
    /// fails, whatever the receiver tries.
    pub fn read_only_fd(&self) -> Result<OwnedFd, RegionError> {
        use std::os::fd::AsRawFd;
        let path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        let f = File::open(path).map_err(io_err("reopening the region read-only"))?;
        Ok(OwnedFd::from(f))
    }

    /// Ring number `index`.
    pub fn ring(&self, index: usize) -> Result<Ring<'_>, RegionError> {
        let count = self.header.ring_count as usize;
        if index >= count {
            return Err(RegionError::NoSuchRing { index, count });
        }
        let desc = self.header.rings[index];
        // SAFETY: `validate_header` (or `compute_layout` for a created region) checked that every offset of this
        // ring lies inside the mapping and is suitably aligned; the mapping lives as long as `self`.
        Ok(unsafe { Ring::from_raw(self.map.as_mut_ptr(), desc, self.access) })
    }

    /// Start of the application area (for records above this crate) and its length; null/0 if there is none.
    pub fn app_area(&self) -> (*mut u8, usize) {
        if self.header.app_size == 0 {
            return (std::ptr::null_mut(), 0);
        }
        // SAFETY: app_offset + app_size was checked to lie inside the mapping.
        (unsafe { self.map.as_mut_ptr().add(self.header.app_offset as usize) }, self.header.app_size as usize)
    }

    /// Base address of this process's mapping.
    pub fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the mapping is empty (never, for a valid region).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }
}

/// Checks an attached header: magic, version, and that every offset lies inside `file_len` and is aligned.
fn validate_header(h: &RegionHeader, file_len: u64) -> Result<(), RegionError> {
    if h.magic != MAGIC {
        return Err(RegionError::BadMagic { found: h.magic });
    }
    if h.layout_version != LAYOUT_VERSION {
        return Err(RegionError::VersionMismatch { found: h.layout_version, expected: LAYOUT_VERSION });
    }
    let corrupt = |m: String| Err(RegionError::Corrupt(m));
    if h.header_size as usize != std::mem::size_of::<RegionHeader>() {
        return corrupt(format!("header size {}", h.header_size));
    }
    if h.region_size != file_len {
        return corrupt(format!("header says {} bytes, the memfd has {file_len}", h.region_size));
    }
    if h.ring_count as usize > layout::MAX_RINGS {
        return corrupt(format!("{} rings", h.ring_count));
    }
    let within = |off: u64, len: u64| off.checked_add(len).is_some_and(|end| end <= file_len);
    if h.app_size > 0 && !within(h.app_offset, h.app_size) {
        return corrupt("application area outside the region".into());
    }
    for (i, d) in h.rings[..h.ring_count as usize].iter().enumerate() {
        check_ring(d, file_len).map_err(|m| RegionError::Corrupt(format!("ring {i}: {m}")))?;
    }
    Ok(())
}

fn check_ring(d: &RingDesc, file_len: u64) -> Result<(), String> {
    let line = layout::CACHE_LINE as u64;
    let within = |off: u64, len: Option<u64>| len.and_then(|l| off.checked_add(l)).is_some_and(|end| end <= file_len);
    if d.slot_count < 2 || d.max_consumers == 0 || d.max_consumers as usize > layout::MAX_CONSUMERS {
        return Err(format!("{} slots, {} consumers", d.slot_count, d.max_consumers));
    }
    if !d.control_offset.is_multiple_of(line)
        || !d.consumers_offset.is_multiple_of(line)
        || !d.stamps_offset.is_multiple_of(line)
    {
        return Err("control words not cache-line aligned".into());
    }
    if !d.slots_offset.is_multiple_of(PAGE_SIZE as u64)
        || !d.slot_size.is_multiple_of(PAGE_SIZE as u64)
        || d.slot_size == 0
    {
        return Err("slots not page aligned".into());
    }
    if !within(d.control_offset, Some(std::mem::size_of::<layout::RingControl>() as u64))
        || !within(d.consumers_offset, line.checked_mul(u64::from(d.max_consumers)))
        || !within(d.stamps_offset, line.checked_mul(u64::from(d.slot_count)))
        || !within(d.slots_offset, d.slot_size.checked_mul(u64::from(d.slot_count)))
    {
        return Err("extends past the end of the region".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{Geometry, RingKind, RingSpec};

    pub(crate) fn small_spec() -> RegionSpec {
        RegionSpec {
            geometry: Geometry { frame_rows: 4, frame_cols: 8, bytes_per_pixel: 2, ..Default::default() },
            rings: vec![RingSpec { kind: RingKind::Bytes, slot_count: 4, slot_bytes: 64, max_consumers: 2 }],
            app_bytes: 0,
        }
    }

    fn dup(fd: BorrowedFd<'_>) -> OwnedFd {
        fd.try_clone_to_owned().unwrap()
    }

    #[test]
    fn create_and_attach_see_the_same_header() {
        let r = Region::create(&small_spec()).unwrap();
        let a = Region::attach(dup(r.fd()), Access::ReadWrite).unwrap();
        assert_eq!(r.header(), a.header());
        assert_eq!(a.header().geometry.frame_cols, 8);
    }

    #[test]
    fn region_is_sealed() {
        let r = Region::create(&small_spec()).unwrap();
        let f = File::from(dup(r.fd()));
        assert!(f.set_len(1).is_err(), "shrinking must be refused");
        assert!(f.set_len(r.header().region_size * 2).is_err(), "growing must be refused");
    }

    #[test]
    fn read_only_fd_cannot_be_mapped_writable() {
        let r = Region::create(&small_spec()).unwrap();
        let ro = File::from(r.read_only_fd().unwrap());
        assert!(MmapOptions::new().map_raw(&ro).is_err());
        assert!(Region::attach(ro.into(), Access::ReadOnly).is_ok());
    }

    #[test]
    fn unsealed_memfd_is_refused() {
        let m = MemfdOptions::new().create("x").unwrap();
        m.as_file().set_len(8192).unwrap();
        let e = Region::attach(m.into_file().into(), Access::ReadOnly).unwrap_err();
        assert!(matches!(e, RegionError::NotSealed), "{e}");
    }
}
