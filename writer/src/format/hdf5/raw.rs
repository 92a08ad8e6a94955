//! The few libhdf5 calls the safe `hdf5` crate (hdf5-metno) does not offer: files opened with file locking
//! off, groups without modification times, a filter that libhdf5 need not know, direct chunk writes, and the
//! decoding of filter 32008 for our own reads.
//!
//! Every call runs under the crate's library lock (`hdf5::sync::sync`): the Debian libhdf5 is not thread-safe.

use std::ffi::{CString, c_uint, c_void};
use std::path::Path;

use hdf5::plist::{FileAccess, FileCreate};
use hdf5::{Dataset, File, Group, Location};
use hdf5_sys::h5::{haddr_t, herr_t, hsize_t};
use hdf5_sys::{h5d, h5f, h5g, h5p, h5z};

/// Bytes of file space allocations libhdf5 aligns to a page (all of at least a page, so every frame chunk).
pub(super) const ALIGN: u64 = 4096;

/// An error of a raw call: which call, on what, and libhdf5's error stack (its first and last messages).
fn err(what: impl std::fmt::Display) -> hdf5::Error {
    let stack = hdf5::Error::query().map(|e| e.to_string()).unwrap_or_default();
    hdf5::Error::Internal(format!("{what} failed: {stack}"))
}

fn cpath(path: &Path) -> hdf5::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| err(format!("{}: a NUL in the path", path.display())))
}

/// The file access properties of every file we open: the latest format (implicit chunk index, compact
/// objects), allocations of a page or more page aligned (so frame chunks take `O_DIRECT` writes), and no file
/// locking: a reader (h5py during the acquisition) holding a shared lock must not make our finish fail.
fn fapl() -> hdf5::Result<FileAccess> {
    let fapl = FileAccess::build().libver_latest().alignment(ALIGN, ALIGN).finish()?;
    // SAFETY: `fapl` is a valid file access property list for the duration of the call.
    let rc = hdf5::sync::sync(|| unsafe { h5p::H5Pset_file_locking(fapl.id(), 0, 1) });
    if rc < 0 {
        return Err(err("H5Pset_file_locking"));
    }
    Ok(fapl)
}

/// Creates (truncates) `path`; its root group records no times, so equal steps give equal bytes.
pub(super) fn create_file(path: &Path) -> hdf5::Result<File> {
    let name = cpath(path)?;
    let fcpl: FileCreate = FileCreate::build().obj_track_times(false).finish()?;
    let fapl = fapl()?;
    hdf5::sync::sync(|| {
        // SAFETY: `name` is a NUL-terminated string and both property lists are valid during the call.
        let id = unsafe { h5f::H5Fcreate(name.as_ptr(), h5f::H5F_ACC_TRUNC, fcpl.id(), fapl.id()) };
        if id < 0 {
            return Err(err(format!("creating {}", path.display())));
        }
        // SAFETY: `id` is a file id just opened, owned by the returned `File` from here.
        unsafe { hdf5::from_id::<File>(id) }
    })
}

/// Opens `path` (read-write if `rw`).
pub(super) fn open_file(path: &Path, rw: bool) -> hdf5::Result<File> {
    let name = cpath(path)?;
    let fapl = fapl()?;
    let flags = if rw { h5f::H5F_ACC_RDWR } else { h5f::H5F_ACC_RDONLY };
    hdf5::sync::sync(|| {
        // SAFETY: `name` is a NUL-terminated string and `fapl` is valid during the call.
        let id = unsafe { h5f::H5Fopen(name.as_ptr(), flags, fapl.id()) };
        if id < 0 {
            return Err(err(format!("opening {}", path.display())));
        }
        // SAFETY: `id` is a file id just opened, owned by the returned `File` from here.
        unsafe { hdf5::from_id::<File>(id) }
    })
}

/// Creates group `name` in `parent`, without modification times.
pub(super) fn create_group(parent: &Location, name: &str) -> hdf5::Result<Group> {
    let cname = CString::new(name).map_err(|_| err("a NUL in a group name"))?;
    hdf5::sync::sync(|| {
        // SAFETY: creating a property list of a class libhdf5 defines (initialised by `sync`).
        let gcpl = unsafe { h5p::H5Pcreate(*h5p::H5P_CLS_GROUP_CREATE) };
        if gcpl < 0 {
            return Err(err("H5Pcreate"));
        }
        // SAFETY: `gcpl` was just created; `parent` is a valid location and `cname` NUL-terminated.
        let id = unsafe {
            h5p::H5Pset_obj_track_times(gcpl, 0);
            let id = h5g::H5Gcreate2(parent.id(), cname.as_ptr(), h5p::H5P_DEFAULT, gcpl, h5p::H5P_DEFAULT);
            h5p::H5Pclose(gcpl);
            id
        };
        if id < 0 {
            return Err(err(format!("creating group {name}")));
        }
        // SAFETY: `id` is a group id just created, owned by the returned `Group` from here.
        unsafe { hdf5::from_id::<Group>(id) }
    })
}

/// Writes `bytes` as the stored (filtered) chunk at `offset` of `ds`, as the filters would have made it.
pub(super) fn write_chunk(ds: &Dataset, offset: &[u64], bytes: &[u8]) -> hdf5::Result<()> {
    let rc: herr_t = hdf5::sync::sync(|| {
        // SAFETY: `ds` is a valid chunked dataset of rank `offset.len()`; `bytes` is readable for its length.
        unsafe {
            h5d::H5Dwrite_chunk(
                ds.id(),
                h5p::H5P_DEFAULT,
                0,
                offset.as_ptr() as *const hsize_t,
                bytes.len(),
                bytes.as_ptr().cast::<c_void>(),
            )
        }
    });
    if rc < 0 { Err(err(format!("H5Dwrite_chunk at {offset:?}"))) } else { Ok(()) }
}

/// The stored bytes of the chunk at `offset` of `ds`, or `None` if it was never written.
pub(super) fn read_chunk(ds: &Dataset, offset: &[u64]) -> hdf5::Result<Option<Vec<u8>>> {
    hdf5::sync::sync(|| {
        let (mut mask, mut addr, mut size): (c_uint, haddr_t, hsize_t) = (0, 0, 0);
        // SAFETY: `ds` is a valid chunked dataset of rank `offset.len()`; the out pointers are to locals.
        let rc = unsafe { h5d::H5Dget_chunk_info_by_coord(ds.id(), offset.as_ptr(), &mut mask, &mut addr, &mut size) };
        if rc < 0 {
            return Err(err(format!("H5Dget_chunk_info_by_coord at {offset:?}")));
        }
        if addr == haddr_t::MAX || size == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: `buf` holds the chunk's stored size; the out pointer is to a local.
        let rc = unsafe {
            h5d::H5Dread_chunk(ds.id(), h5p::H5P_DEFAULT, offset.as_ptr(), &mut mask, buf.as_mut_ptr().cast())
        };
        if rc < 0 { Err(err(format!("H5Dread_chunk at {offset:?}"))) } else { Ok(Some(buf)) }
    })
}

/// Creates dataset `name` in `parent`: little-endian `uint16` of shape `dims`, chunked by `chunk`, with
/// optional filter `filter` (parameters `cd`) in its pipeline, no times recorded. `dims` and `chunk` have the
/// same length.
pub(super) fn create_filtered_u16(
    parent: &Location,
    name: &str,
    dims: &[u64],
    chunk: &[u64],
    filter: u32,
    cd: &[u32],
) -> hdf5::Result<Dataset> {
    use hdf5_sys::{h5s, h5t};
    let cname = CString::new(name).map_err(|_| err("a NUL in a dataset name"))?;
    hdf5::sync::sync(|| {
        // SAFETY: creating a property list of a class libhdf5 defines (initialised by `sync`).
        let dcpl = unsafe { h5p::H5Pcreate(*h5p::H5P_CLS_DATASET_CREATE) };
        if dcpl < 0 {
            return Err(err("H5Pcreate"));
        }
        // SAFETY: `dims` and `chunk` hold `dims.len()` values each (checked); the ids are closed here.
        let id = unsafe {
            let rank = dims.len().min(chunk.len()) as i32;
            // A fixed dimension must hold a chunk: an empty dataset may grow to one.
            let max: Vec<u64> = dims.iter().zip(chunk).map(|(d, c)| (*d).max(*c)).collect();
            let space = h5s::H5Screate_simple(rank, dims.as_ptr(), max.as_ptr());
            h5p::H5Pset_chunk(dcpl, rank, chunk.as_ptr());
            h5p::H5Pset_obj_track_times(dcpl, 0);
            let f =
                h5p::H5Pset_filter(dcpl, filter as h5z::H5Z_filter_t, h5z::H5Z_FLAG_OPTIONAL, cd.len(), cd.as_ptr());
            let id = if space < 0 || f < 0 {
                -1
            } else {
                h5d::H5Dcreate2(
                    parent.id(),
                    cname.as_ptr(),
                    *h5t::H5T_STD_U16LE,
                    space,
                    h5p::H5P_DEFAULT,
                    dcpl,
                    h5p::H5P_DEFAULT,
                )
            };
            h5s::H5Sclose(space);
            h5p::H5Pclose(dcpl);
            id
        };
        if id < 0 {
            return Err(err(format!("creating dataset {name}")));
        }
        // SAFETY: `id` is a dataset id just created, owned by the returned `Dataset` from here.
        unsafe { hdf5::from_id::<Dataset>(id) }
    })
}
