//! The 48-byte `sls_detector_header` (little-endian) every sls detector packet starts with, version 2
//! (slsDetectorPackage 7 and later; `docs/src/udpheader.rst`).
//!
//! | offset | field |
//! |---|---|
//! | 0 | u64 frameNumber |
//! | 8 | u32 expLength (JUNGFRAU: exposure time in units of 100 ns) |
//! | 12 | u32 packetNumber |
//! | 16 | u64 detSpec1 (JUNGFRAU: bunch id) |
//! | 24 | u64 timestamp (10 MHz clock) |
//! | 32 | u16 modId, 34: u16 row, 36: u16 column, 38: u16 detSpec2 |
//! | 40 | u32 detSpec3, 44: u16 detSpec4, 46: u8 detType, 47: u8 version |

/// Bytes of the header.
pub const HEADER_BYTES: usize = 48;

/// The header version this module reads and writes.
pub const VERSION: u8 = 2;

/// `detType` of a JUNGFRAU in slsDetectorPackage's `slsDetectorDefs::detectorType` (GENERIC 0, EIGER 1,
/// GOTTHARD 2, JUNGFRAU 3, ...).
pub const DET_TYPE_JUNGFRAU: u8 = 3;

/// Offsets of the fields this module checks or sets.
pub(super) mod at {
    pub const PACKET_NUMBER: usize = 12;
    pub const ROW: usize = 34;
    pub const DET_TYPE: usize = 46;
    pub const VERSION: usize = 47;
}

/// Every field of an `sls_detector_header`, with the names of slsDetectorPackage 6 for the JUNGFRAU-specific ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlsHeader {
    /// Frame number (starts at 1 on the detector at each acquisition).
    pub frame_number: u64,
    /// Exposure time, 100 ns units.
    pub exp_length: u32,
    /// Packet number within the module frame, `0 .. 128`.
    pub packet_number: u32,
    /// Bunch id (`detSpec1`).
    pub bunch_id: u64,
    /// Timestamp, 10 MHz clock.
    pub timestamp: u64,
    /// The module's hardware id.
    pub mod_id: u16,
    /// The module's row in the detector.
    pub row: u16,
    /// The module's column in the detector.
    pub column: u16,
    /// `detSpec2` (reserved).
    pub det_spec2: u16,
    /// `detSpec3` (debug).
    pub det_spec3: u32,
    /// `detSpec4` (round-robin number).
    pub det_spec4: u16,
    /// Detector type.
    pub det_type: u8,
    /// Header version.
    pub version: u8,
}

fn le<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

impl SlsHeader {
    /// Reads the header from the first [`HEADER_BYTES`] of `b`; `None` if `b` is shorter.
    pub fn read(b: &[u8]) -> Option<Self> {
        let b = b.get(..HEADER_BYTES)?;
        Some(Self {
            frame_number: u64::from_le_bytes(le(b, 0)),
            exp_length: u32::from_le_bytes(le(b, 8)),
            packet_number: u32::from_le_bytes(le(b, 12)),
            bunch_id: u64::from_le_bytes(le(b, 16)),
            timestamp: u64::from_le_bytes(le(b, 24)),
            mod_id: u16::from_le_bytes(le(b, 32)),
            row: u16::from_le_bytes(le(b, 34)),
            column: u16::from_le_bytes(le(b, 36)),
            det_spec2: u16::from_le_bytes(le(b, 38)),
            det_spec3: u32::from_le_bytes(le(b, 40)),
            det_spec4: u16::from_le_bytes(le(b, 44)),
            det_type: b[46],
            version: b[47],
        })
    }

    /// Writes the header into `out`.
    pub fn write(&self, out: &mut [u8; HEADER_BYTES]) {
        out[0..8].copy_from_slice(&self.frame_number.to_le_bytes());
        out[8..12].copy_from_slice(&self.exp_length.to_le_bytes());
        out[12..16].copy_from_slice(&self.packet_number.to_le_bytes());
        out[16..24].copy_from_slice(&self.bunch_id.to_le_bytes());
        out[24..32].copy_from_slice(&self.timestamp.to_le_bytes());
        out[32..34].copy_from_slice(&self.mod_id.to_le_bytes());
        out[34..36].copy_from_slice(&self.row.to_le_bytes());
        out[36..38].copy_from_slice(&self.column.to_le_bytes());
        out[38..40].copy_from_slice(&self.det_spec2.to_le_bytes());
        out[40..44].copy_from_slice(&self.det_spec3.to_le_bytes());
        out[44..46].copy_from_slice(&self.det_spec4.to_le_bytes());
        out[46] = self.det_type;
        out[47] = self.version;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_sit_where_the_sls_documentation_puts_them() {
        let h = SlsHeader {
            frame_number: 0x0807_0605_0403_0201,
            exp_length: 0x0C0B_0A09,
            packet_number: 0x100F_0E0D,
            bunch_id: 0x1817_1615_1413_1211,
            timestamp: 0x201F_1E1D_1C1B_1A19,
            mod_id: 0x2221,
            row: 0x2423,
            column: 0x2625,
            det_spec2: 0x2827,
            det_spec3: 0x2C2B_2A29,
            det_spec4: 0x2E2D,
            det_type: 0x2F,
            version: 0x30,
        };
        let mut b = [0u8; HEADER_BYTES];
        h.write(&mut b);
        // Little-endian fields laid end to end: byte i holds i + 1.
        assert!(b.iter().enumerate().all(|(i, &v)| v as usize == i + 1));
        assert_eq!(SlsHeader::read(&b), Some(h));
        assert_eq!(SlsHeader::read(&b[..47]), None);
        assert_eq!((at::PACKET_NUMBER, at::ROW, at::DET_TYPE, at::VERSION), (12, 34, 46, 47));
    }
}
