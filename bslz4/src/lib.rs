//! Bitshuffle + LZ4 in the chunk format of HDF5 filter 32008, the format of hdf5plugin's
//! `Bitshuffle(cname='lz4')`, DECTRIS detectors and PSI's std-daq, written in Rust.
//!
//! A chunk is a 12-byte header (the uncompressed size in bytes as a big-endian u64, then the block size in bytes as
//! a big-endian u32), then, per block of `block_size` elements, a big-endian u32 compressed length and that many
//! bytes of an LZ4 block holding the bit-transposed block ([`shuffle`]). The elements after the last whole block are
//! a last, shorter block rounded down to a multiple of 8 elements; the last `len % 8` elements (fewer than 8) are
//! appended raw. All of this is what the reference implementation (`bshuf_compress_lz4` in bitshuffle's
//! `bitshuffle.c`, called by `bshuf_h5filter.c`) does, so hdf5plugin decodes what [`compress`] writes and
//! [`decompress`] decodes what hdf5plugin writes; the crate's `interop` test proves both through h5py.
//!
//! The bit transposition has a scalar reference and SSE2 (always on x86_64) and AVX2 (chosen at run time) versions,
//! proven equal by proptest. LZ4 is `lz4_flex`'s block format: the same LZ4 block format the reference writes with
//! `LZ4_compress_default` and reads with `LZ4_decompress_safe`.

#![deny(missing_docs)]

pub mod shuffle;

/// HDF5 filter id of bitshuffle (registered with The HDF Group).
pub const FILTER_ID: u32 = 32008;

/// The bitshuffle version written into a dataset's filter parameters: 0.4, what hdf5plugin 7.1 stores (its
/// bitshuffle's `set_local` writes `BSHUF_VERSION_MAJOR`/`MINOR`; decoders do not check it).
pub const VERSION: (u32, u32) = (0, 4);

/// The compression code for LZ4 in the filter parameters (`BSHUF_H5_COMPRESS_LZ4`).
pub const COMPRESS_LZ4: u32 = 2;

/// Bytes of the chunk header: uncompressed size (u64 BE) and block size in bytes (u32 BE).
pub const HEADER_BYTES: usize = 12;

/// The reference's target block size in bytes (`BSHUF_TARGET_BLOCK_SIZE_B`).
const TARGET_BLOCK_BYTES: usize = 8192;

/// Block sizes are multiples of this many elements (`BSHUF_BLOCKED_MULT`): the bit transposition works on 8
/// elements at a time.
pub const BLOCKED_MULT: usize = 8;

/// The smallest default block, in elements (`BSHUF_MIN_RECOMMEND_BLOCK`).
const MIN_RECOMMEND_BLOCK: usize = 128;

/// Why a chunk could not be compressed or decompressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The element size is 0.
    #[error("element size 0")]
    ZeroElemSize,
    /// A block of this element size would not fit the header's u32 block size.
    #[error("element size {0} bytes is too large for a bitshuffle block")]
    ElemSizeTooLarge(usize),
    /// The input is not a whole number of elements.
    #[error("{len} bytes are not a whole number of {elem_size}-byte elements")]
    PartialElement {
        /// Input length in bytes.
        len: usize,
        /// Element size in bytes.
        elem_size: usize,
    },
    /// The chunk is shorter than its 12-byte header.
    #[error("chunk of {0} bytes is shorter than the 12-byte bitshuffle header")]
    TruncatedHeader(usize),
    /// The header's uncompressed size differs from the output buffer's length.
    #[error("chunk header says {header} bytes uncompressed, the output buffer holds {out}")]
    OutputLength {
        /// Uncompressed bytes according to the chunk header.
        header: u64,
        /// Length of the output buffer.
        out: usize,
    },
    /// The header's block size is not a positive multiple of 8 elements.
    #[error(
        "chunk header block size {block_bytes} bytes is not a positive multiple of 8 elements of {elem_size} bytes"
    )]
    BadBlockSize {
        /// Block size in bytes according to the header.
        block_bytes: u32,
        /// Element size in bytes.
        elem_size: usize,
    },
    /// A block's length prefix or data runs past the end of the chunk.
    #[error("block {index} at byte {offset} runs past the end of the {chunk_len}-byte chunk")]
    TruncatedBlock {
        /// Index of the block in the chunk.
        index: usize,
        /// Byte offset of its length prefix in the chunk.
        offset: usize,
        /// Length of the chunk.
        chunk_len: usize,
    },
    /// A block's LZ4 data is corrupt, or does not decode to exactly one block.
    #[error("block {index}: LZ4 data does not decode to {expected} bytes: {reason}")]
    Lz4 {
        /// Index of the block in the chunk.
        index: usize,
        /// The block's uncompressed size.
        expected: usize,
        /// What the LZ4 decoder said.
        reason: String,
    },
    /// The raw tail (the last `len % 8` elements) is missing or there are bytes after it.
    #[error("chunk has {actual} bytes after its blocks, expected {expected} (the raw last elements)")]
    TailLength {
        /// Bytes expected after the last block.
        expected: usize,
        /// Bytes actually left.
        actual: usize,
    },
}

/// The filter parameters (`cd_values`) to store in an HDF5 dataset's pipeline for filter [`FILTER_ID`] so that
/// hdf5plugin's bitshuffle filter decodes chunks written by [`compress`]: `[major, minor, elem_size, 0, 2]`
/// (block size 0 = the default, compression 2 = LZ4), exactly what `hdf5plugin.Bitshuffle(cname='lz4')` stores
/// (checked in the `interop` test). Element sizes above `u32::MAX` saturate (no HDF5 type is that large).
pub fn cd_values(elem_size: usize) -> [u32; 5] {
    [VERSION.0, VERSION.1, u32::try_from(elem_size).unwrap_or(u32::MAX), 0, COMPRESS_LZ4]
}

/// The reference's default block size in elements for `elem_size` (`bshuf_default_block_size`): 8192 bytes'
/// worth, rounded down to a multiple of 8, at least 128. Must never change: decoders read it from the header, but
/// the HDF5 filter's parameters say "default".
pub fn default_block_size(elem_size: usize) -> usize {
    let block = TARGET_BLOCK_BYTES / elem_size.max(1) / BLOCKED_MULT * BLOCKED_MULT;
    block.max(MIN_RECOMMEND_BLOCK)
}

/// The largest chunk [`compress`] can write for `len` bytes of `elem_size`-byte elements: header, a length
/// prefix and LZ4's worst case per block, and the raw tail. With `elem_size` 0 it is the header's size.
pub fn max_compressed_len(len: usize, elem_size: usize) -> usize {
    if elem_size == 0 {
        return HEADER_BYTES;
    }
    let layout = Layout::new(len / elem_size, elem_size, default_block_size(elem_size));
    let full = layout.full_blocks * (4 + lz4_flex::block::get_maximum_output_size(layout.block_bytes()));
    let last = if layout.last_block > 0 {
        4 + lz4_flex::block::get_maximum_output_size(layout.last_block * elem_size)
    } else {
        0
    };
    HEADER_BYTES + full + last + layout.tail_bytes()
}

/// How a chunk of `elems` elements divides into blocks.
#[derive(Debug, Clone, Copy)]
struct Layout {
    elem_size: usize,
    /// Elements per whole block (a positive multiple of 8).
    block: usize,
    /// Whole blocks.
    full_blocks: usize,
    /// Elements of the last, shorter block (a multiple of 8, possibly 0).
    last_block: usize,
    /// Elements appended raw (fewer than 8).
    tail: usize,
}

impl Layout {
    fn new(elems: usize, elem_size: usize, block: usize) -> Self {
        let rest = elems % block;
        Self {
            elem_size,
            block,
            full_blocks: elems / block,
            last_block: rest - rest % BLOCKED_MULT,
            tail: rest % BLOCKED_MULT,
        }
    }

    fn block_bytes(&self) -> usize {
        self.block * self.elem_size
    }

    fn tail_bytes(&self) -> usize {
        self.tail * self.elem_size
    }

    /// The byte length of each compressed block in order.
    fn blocks(&self) -> impl Iterator<Item = usize> + use<> {
        let (bytes, last) = (self.block_bytes(), self.last_block * self.elem_size);
        std::iter::repeat_n(bytes, self.full_blocks).chain((last > 0).then_some(last))
    }
}

/// Compresses `input` (elements of `elem_size` bytes) into one chunk of filter 32008's format with the default
/// block size. Clears `out`, fills it with the chunk and returns its length.
pub fn compress(input: &[u8], elem_size: usize, out: &mut Vec<u8>) -> Result<usize, Error> {
    if elem_size == 0 {
        return Err(Error::ZeroElemSize);
    }
    if !input.len().is_multiple_of(elem_size) {
        return Err(Error::PartialElement { len: input.len(), elem_size });
    }
    let block = default_block_size(elem_size);
    let block_bytes = u32::try_from(block * elem_size).map_err(|_| Error::ElemSizeTooLarge(elem_size))?;
    let layout = Layout::new(input.len() / elem_size, elem_size, block);
    out.clear();
    out.resize(max_compressed_len(input.len(), elem_size), 0);
    out[..8].copy_from_slice(&(input.len() as u64).to_be_bytes());
    out[8..12].copy_from_slice(&block_bytes.to_be_bytes());
    let mut pos = HEADER_BYTES;
    let mut shuffled = vec![0u8; layout.block_bytes()];
    let mut scratch = vec![0u8; layout.block_bytes()];
    let mut src = input;
    for (index, bytes) in layout.blocks().enumerate() {
        let (this, rest) = src.split_at(bytes);
        src = rest;
        shuffle::bitshuffle(this, &mut shuffled[..bytes], &mut scratch[..bytes], elem_size);
        let (prefix, body) = out[pos..].split_at_mut(4);
        // The buffer is sized by max_compressed_len, which reserves LZ4's worst case for every block.
        let n = lz4_flex::block::compress_into(&shuffled[..bytes], body).map_err(|e| Error::Lz4 {
            index,
            expected: bytes,
            reason: e.to_string(),
        })?;
        // A block's compressed length is at most about 1.1 × its size, which fits a u32.
        prefix.copy_from_slice(&(n as u32).to_be_bytes());
        pos += 4 + n;
    }
    out[pos..pos + src.len()].copy_from_slice(src);
    pos += src.len();
    out.truncate(pos);
    Ok(pos)
}

/// The uncompressed length in bytes a chunk's header announces.
pub fn decompressed_len(chunk: &[u8]) -> Result<u64, Error> {
    let header: [u8; 8] = chunk.get(..8).and_then(|h| h.try_into().ok()).ok_or(Error::TruncatedHeader(chunk.len()))?;
    Ok(u64::from_be_bytes(header))
}

/// Decompresses one chunk of filter 32008's format (any block size its header names) into `out`, whose length must
/// be the chunk's uncompressed length. Never panics: bad input is an [`Error`], and `out` may then be partly
/// written.
pub fn decompress(chunk: &[u8], elem_size: usize, out: &mut [u8]) -> Result<(), Error> {
    if elem_size == 0 {
        return Err(Error::ZeroElemSize);
    }
    if chunk.len() < HEADER_BYTES {
        return Err(Error::TruncatedHeader(chunk.len()));
    }
    let total = decompressed_len(chunk)?;
    if total != out.len() as u64 {
        return Err(Error::OutputLength { header: total, out: out.len() });
    }
    if !out.len().is_multiple_of(elem_size) {
        return Err(Error::PartialElement { len: out.len(), elem_size });
    }
    let block_bytes = u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]);
    let block = block_bytes as usize / elem_size;
    if block == 0 || !(block_bytes as usize).is_multiple_of(elem_size) || !block.is_multiple_of(BLOCKED_MULT) {
        return Err(Error::BadBlockSize { block_bytes, elem_size });
    }
    let layout = Layout::new(out.len() / elem_size, elem_size, block);
    let mut scratch = vec![0u8; layout.block_bytes().min(out.len())];
    let mut shuffled = vec![0u8; scratch.len()];
    let mut pos = HEADER_BYTES;
    let mut dst: &mut [u8] = out;
    for (index, bytes) in layout.blocks().enumerate() {
        let truncated = Error::TruncatedBlock { index, offset: pos, chunk_len: chunk.len() };
        let prefix: [u8; 4] =
            chunk.get(pos..pos + 4).and_then(|p| p.try_into().ok()).ok_or_else(|| truncated.clone())?;
        let n = u32::from_be_bytes(prefix) as usize;
        let body = chunk.get(pos + 4..).and_then(|rest| rest.get(..n)).ok_or(truncated)?;
        let got = lz4_flex::block::decompress_into(body, &mut shuffled[..bytes]).map_err(|e| Error::Lz4 {
            index,
            expected: bytes,
            reason: e.to_string(),
        })?;
        if got != bytes {
            return Err(Error::Lz4 { index, expected: bytes, reason: format!("decoded {got} bytes") });
        }
        let (this, rest) = std::mem::take(&mut dst).split_at_mut(bytes);
        dst = rest;
        shuffle::bitunshuffle(&shuffled[..bytes], this, &mut scratch[..bytes], elem_size);
        pos += 4 + n;
    }
    let tail = &chunk[pos..];
    if tail.len() != dst.len() {
        return Err(Error::TailLength { expected: dst.len(), actual: tail.len() });
    }
    dst.copy_from_slice(tail);
    Ok(())
}

#[cfg(test)]
mod tests;
