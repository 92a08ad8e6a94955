//! The `.npy` header the writer puts in front of the frames.
//!
//! Format 1.0: magic `\x93NUMPY`, version 1.0, a little-endian u16 header length, then a Python dict literal
//! padded with spaces and ended by `\n`. The format allows any padding that makes the data start at a multiple
//! of 64; we pad to [`HEADER_LEN`] = 4096 bytes so that the frames that follow are page aligned in the file,
//! which `O_DIRECT` writes straight from the frame ring's page-aligned slots require. numpy, npyz and every other
//! reader accept it.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
