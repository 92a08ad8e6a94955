//! PSI's JUNGFRAU, through the sls detector UDP header ([`header`]).
//!
//! A module frame is 512 × 1024 u16 pixels (2 gain bits, 14 ADC bits, kept as they come), sent as 128 packets of
//! 8192 bytes (4 rows each) after the 48-byte header, to the module's own UDP port; packet `p` holds rows
//! `4p .. 4p + 4`, as slsReceiver's raw files store the payloads concatenated in `packetNumber` order. A detector
//! of N modules is the N module frames stacked: N × 512 rows × 1024 columns, module `m` on stream (port) `m`
//! with `row = m` in its header. The frame id is the low 32 bits of `frameNumber`.
//!
//! The module count is part of the format: [`FORMATS`] holds one format per count, 1 to 8 (8 × 128 packets is
//! the frame header's bitmap of 1024 blocks), named `jungfrau-N`, family `jungfrau`, region id 16 + N.

pub mod header;

use std::sync::Arc;

use crate::format::{BlockInfo, BlockMeta, DetectorFormat, Format, FormatError, InvalidReason, PixelType};
use crate::subset::{Rect, Streams};
use header::{DET_TYPE_JUNGFRAU, HEADER_BYTES, SlsHeader, VERSION, at};

/// Rows of one module.
pub const MODULE_ROWS: usize = 512;
/// Columns of one module.
pub const MODULE_COLS: usize = 1024;
/// Packets per module frame.
pub const PACKETS_PER_MODULE: usize = 128;
/// Pixel bytes per packet.
pub const PAYLOAD_BYTES: usize = 8192;
/// Rows per packet.
pub const ROWS_PER_PACKET: usize = MODULE_ROWS / PACKETS_PER_MODULE;
/// Pixels per packet.
const PACKET_PIXELS: usize = ROWS_PER_PACKET * MODULE_COLS;
/// Bytes of a packet.
pub const DATAGRAM_BYTES: usize = HEADER_BYTES + PAYLOAD_BYTES;
/// Most modules a format is registered for: 8 × 128 packets fill the frame header's 1024-block bitmap.
pub const MAX_MODULES: usize = 8;

const _: () = assert!(PACKET_PIXELS * 2 == PAYLOAD_BYTES && ROWS_PER_PACKET * PACKETS_PER_MODULE == MODULE_ROWS);

/// The invalid reasons, in index order: public counter names (`assembler.invalid.<reason>`), never reordered.
pub const REASONS: &[&str] = &["truncated", "length", "version", "detector_type", "packet_number", "module"];
const TRUNCATED: InvalidReason = InvalidReason::new(0, REASONS[0]);
const LENGTH: InvalidReason = InvalidReason::new(1, REASONS[1]);
const BAD_VERSION: InvalidReason = InvalidReason::new(2, REASONS[2]);
const DETECTOR_TYPE: InvalidReason = InvalidReason::new(3, REASONS[3]);
const PACKET_NUMBER: InvalidReason = InvalidReason::new(4, REASONS[4]);
const MODULE: InvalidReason = InvalidReason::new(5, REASONS[5]);

/// Exposure time the simulator puts in `expLength`: 10 µs in units of 100 ns.
const SIM_EXPOSURE: u32 = 100;
/// Timestamp ticks per frame the simulator writes: the 10 MHz clock at 2 kHz.
const SIM_TICKS_PER_FRAME: u64 = 5_000;

/// A JUNGFRAU detector of `modules` modules stacked vertically (or a part of one: some of its modules, stacked
/// in the same order).
#[derive(Debug)]
pub struct Jungfrau {
    modules: usize,
    name: &'static str,
    description: &'static str,
    /// The detector's modules (the registered format's count; a part has fewer `modules`).
    whole: usize,
    /// The module (header `row`, place in the whole stack) each stream of this format receives.
    module_of: [u16; MAX_MODULES],
}

const NAMES: [&str; MAX_MODULES] =
    ["jungfrau-1", "jungfrau-2", "jungfrau-3", "jungfrau-4", "jungfrau-5", "jungfrau-6", "jungfrau-7", "jungfrau-8"];
const DESCRIPTIONS: [&str; MAX_MODULES] = [
    "PSI JUNGFRAU, 1 module: 512 × 1024 u16 pixels (2 gain + 14 ADC bits), sls detector header v2",
    "PSI JUNGFRAU, 2 modules: 1024 × 1024 u16 pixels (2 gain + 14 ADC bits), sls detector header v2",
    "PSI JUNGFRAU, 3 modules: 1536 × 1024 u16 pixels (2 gain + 14 ADC bits), sls detector header v2",
    "PSI JUNGFRAU, 4 modules: 2048 × 1024 u16 pixels (2 gain + 14 ADC bits), sls detector header v2",
    "PSI JUNGFRAU, 5 modules: 2560 × 1024 u16 pixels (2 gain + 14 ADC bits), sls detector header v2",
    "PSI JUNGFRAU, 6 modules: 3072 × 1024 u16 pixels (2 gain + 14 ADC bits), sls detector header v2",
    "PSI JUNGFRAU, 7 modules: 3584 × 1024 u16 pixels (2 gain + 14 ADC bits), sls detector header v2",
    "PSI JUNGFRAU, 8 modules: 4096 × 1024 u16 pixels (2 gain + 14 ADC bits), sls detector header v2",
];

const fn jungfrau(modules: usize) -> Jungfrau {
    Jungfrau {
        modules,
        name: NAMES[modules - 1],
        description: DESCRIPTIONS[modules - 1],
        whole: modules,
        module_of: [0, 1, 2, 3, 4, 5, 6, 7],
    }
}

const DETECTORS: [Jungfrau; MAX_MODULES] =
    [jungfrau(1), jungfrau(2), jungfrau(3), jungfrau(4), jungfrau(5), jungfrau(6), jungfrau(7), jungfrau(8)];

/// JUNGFRAU with 1 to 8 modules: `FORMATS[n - 1]` has `n` modules.
pub const FORMATS: [Format; MAX_MODULES] = [
    Format::new(&DETECTORS[0]),
    Format::new(&DETECTORS[1]),
    Format::new(&DETECTORS[2]),
    Format::new(&DETECTORS[3]),
    Format::new(&DETECTORS[4]),
    Format::new(&DETECTORS[5]),
    Format::new(&DETECTORS[6]),
    Format::new(&DETECTORS[7]),
];

impl Jungfrau {
    /// Modules of the detector.
    pub const fn modules(&self) -> usize {
        self.modules
    }
}

impl DetectorFormat for Jungfrau {
    fn name(&self) -> &'static str {
        self.name
    }

    fn family(&self) -> &'static str {
        "jungfrau"
    }

    fn modules(&self) -> usize {
        self.modules
    }

    fn id(&self) -> u32 {
        16 + self.whole as u32
    }

    fn description(&self) -> &'static str {
        self.description
    }

    fn rows(&self) -> usize {
        self.modules * MODULE_ROWS
    }

    fn cols(&self) -> usize {
        MODULE_COLS
    }

    fn pixel_type(&self) -> PixelType {
        PixelType::U16
    }

    fn pixel_mask(&self) -> u16 {
        // Gain bits and ADC bits, stored as they come.
        0xFFFF
    }

    fn streams(&self) -> usize {
        self.modules
    }

    fn blocks_per_frame(&self) -> usize {
        self.modules * PACKETS_PER_MODULE
    }

    fn max_datagram(&self) -> usize {
        DATAGRAM_BYTES
    }

    fn invalid_reasons(&self) -> &'static [&'static str] {
        REASONS
    }

    fn has_sync_flag(&self) -> bool {
        false
    }

    fn classify(&self, stream: usize, datagram: &[u8]) -> Result<BlockInfo, InvalidReason> {
        let h = SlsHeader::read(datagram).ok_or(TRUNCATED)?;
        if datagram.len() != DATAGRAM_BYTES {
            return Err(LENGTH);
        }
        if h.version != VERSION {
            return Err(BAD_VERSION);
        }
        if h.det_type != DET_TYPE_JUNGFRAU {
            return Err(DETECTOR_TYPE);
        }
        let packet = h.packet_number as usize;
        if packet >= PACKETS_PER_MODULE {
            return Err(PACKET_NUMBER);
        }
        // The module's place in the stack is its row; it must be the one its port serves.
        if stream >= self.modules || h.row != self.module_of[stream] || h.column != 0 {
            return Err(MODULE);
        }
        // A JUNGFRAU sends only while it acquires: every packet is inside the exposure.
        Ok(BlockInfo { frame_id: h.frame_number as u32, index: stream * PACKETS_PER_MODULE + packet, sync: true })
    }

    fn decode_frame(&self, blocks: &[Option<&[u8]>], frame: &mut [u16], fill: u16) -> Result<(), FormatError> {
        let n = self.blocks_per_frame();
        if blocks.len() != n {
            return Err(FormatError::Blocks { found: blocks.len(), expected: n });
        }
        if frame.len() != self.frame_pixels() {
            return Err(FormatError::Size { what: "frame", found: frame.len(), expected: self.frame_pixels() });
        }
        // Block b is rows 4b .. 4b + 4 of the stack (module m's packet p is block 128m + p, rows 512m + 4p).
        for (block, out) in blocks.iter().zip(frame.chunks_exact_mut(PACKET_PIXELS)) {
            match block {
                Some(d) => {
                    if d.len() != DATAGRAM_BYTES {
                        return Err(FormatError::Size { what: "datagram", found: d.len(), expected: DATAGRAM_BYTES });
                    }
                    copy_le(&d[HEADER_BYTES..], out);
                }
                None => out.fill(fill),
            }
        }
        Ok(())
    }

    fn decoder(&self) -> &'static str {
        if cfg!(target_endian = "little") { "copy" } else { "byte-swap" }
    }

    fn header_bytes(&self) -> usize {
        HEADER_BYTES
    }

    fn payload_bytes(&self, _block: usize) -> usize {
        PAYLOAD_BYTES
    }

    fn encode_header(&self, meta: &BlockMeta, out: &mut [u8]) -> Result<(), FormatError> {
        let n = self.blocks_per_frame();
        if meta.block >= n {
            return Err(FormatError::Block { block: meta.block, blocks: n });
        }
        let Some(out) = out.get_mut(..HEADER_BYTES).and_then(|o| <&mut [u8; HEADER_BYTES]>::try_from(o).ok()) else {
            return Err(FormatError::Size { what: "header buffer", found: out.len(), expected: HEADER_BYTES });
        };
        let module = self.module_of[meta.block / PACKETS_PER_MODULE];
        SlsHeader {
            frame_number: u64::from(meta.frame_id),
            exp_length: SIM_EXPOSURE,
            packet_number: (meta.block % PACKETS_PER_MODULE) as u32,
            timestamp: meta.frame_seq.wrapping_mul(SIM_TICKS_PER_FRAME),
            mod_id: module,
            row: module,
            det_type: DET_TYPE_JUNGFRAU,
            version: VERSION,
            ..SlsHeader::default()
        }
        .write(out);
        Ok(())
    }

    fn encode_payload(&self, block: usize, frame: &[u16], out: &mut [u8]) -> Result<(), FormatError> {
        let n = self.blocks_per_frame();
        if block >= n {
            return Err(FormatError::Block { block, blocks: n });
        }
        if frame.len() != self.frame_pixels() {
            return Err(FormatError::Size { what: "frame", found: frame.len(), expected: self.frame_pixels() });
        }
        let Some(out) = out.get_mut(..PAYLOAD_BYTES) else {
            return Err(FormatError::Size { what: "payload buffer", found: out.len(), expected: PAYLOAD_BYTES });
        };
        let src = &frame[block * PACKET_PIXELS..(block + 1) * PACKET_PIXELS];
        for (o, p) in out.chunks_exact_mut(2).zip(src) {
            o.copy_from_slice(&p.to_le_bytes());
        }
        Ok(())
    }

    fn send_order(&self, i: usize) -> usize {
        // The modules send at once, each its packets in order: interleaved packet by packet.
        (i % self.modules) * PACKETS_PER_MODULE + i / self.modules
    }

    fn stream_of(&self, block: usize) -> usize {
        block / PACKETS_PER_MODULE
    }

    fn corrupt(&self, reason: usize, header: &mut [u8], len: &mut usize) -> Result<(), FormatError> {
        if header.len() < HEADER_BYTES {
            return Err(FormatError::Size { what: "header", found: header.len(), expected: HEADER_BYTES });
        }
        match reason {
            0 => *len = HEADER_BYTES / 2,                 // truncated: shorter than a header
            1 => *len = HEADER_BYTES + PAYLOAD_BYTES / 2, // a payload cut short
            2 => header[at::VERSION] = 1,                 // the header of slsDetectorPackage 6
            3 => header[at::DET_TYPE] = 1,                // an EIGER on the port
            4 => header[at::PACKET_NUMBER..at::PACKET_NUMBER + 4]
                .copy_from_slice(&(PACKETS_PER_MODULE as u32).to_le_bytes()),
            5 => {
                // The next module's packet, on this module's port.
                let row = u16::from_le_bytes([header[at::ROW], header[at::ROW + 1]]);
                header[at::ROW..at::ROW + 2].copy_from_slice(&row.wrapping_add(1).to_le_bytes());
            }
            r => return Err(FormatError::Reason(r)),
        }
        Ok(())
    }

    fn stream_rect(&self, stream: usize) -> Option<Rect> {
        // Module m is rows 512 m .. 512 (m + 1), all 1024 columns.
        (stream < self.modules).then(|| Rect {
            row: stream * MODULE_ROWS,
            col: 0,
            rows: MODULE_ROWS,
            cols: MODULE_COLS,
        })
    }

    fn restrict(&self, streams: &Streams) -> Option<Arc<dyn DetectorFormat>> {
        // A packet names its module (header `row`), so a part checks it against the module its port serves.
        if streams.is_empty() || streams.iter().any(|s| s >= self.modules) {
            return None;
        }
        let mut module_of = [0u16; MAX_MODULES];
        for (m, s) in module_of.iter_mut().zip(streams.iter()) {
            *m = self.module_of[s];
        }
        Some(Arc::new(Jungfrau { modules: streams.len(), module_of, ..*self }))
    }

    fn sim_faults(&self) -> &'static [usize] {
        // A cut payload, another detector's packet, a module sending to the wrong port.
        &[1, 3, 5]
    }
}

/// Copies little-endian u16 pixels from `src` (`2 × out.len()` bytes) into `out`.
fn copy_le(src: &[u8], out: &mut [u16]) {
    debug_assert_eq!(src.len(), out.len() * 2);
    #[cfg(target_endian = "little")]
    {
        let n = out.len().min(src.len() / 2);
        // SAFETY: `out` has room for `n` u16 (2n bytes) and `src` holds at least 2n bytes; the two do not overlap
        // (one is borrowed mutably); every bit pattern is a valid u16, and on a little-endian CPU the wire's bytes
        // are the pixels' memory. A plain copy of 8192 bytes is what makes decode keep up with 2 GB/s a module.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), out.as_mut_ptr().cast::<u8>(), 2 * n) };
    }
    #[cfg(not(target_endian = "little"))]
    for (p, b) in out.iter_mut().zip(src.chunks_exact(2)) {
        *p = u16::from_le_bytes([b[0], b[1]]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_of_two_modules() {
        let f = FORMATS[1];
        assert_eq!((f.name(), f.family(), f.modules(), f.id()), ("jungfrau-2", "jungfrau", 2, 18));
        assert_eq!(
            (f.rows(), f.cols(), f.streams(), f.blocks_per_frame(), f.max_datagram()),
            (1024, 1024, 2, 256, 8240)
        );
        assert_eq!((f.send_order(0), f.send_order(1), f.send_order(2)), (0, 128, 1));
        for (n, f) in FORMATS.iter().enumerate() {
            assert_eq!((f.modules(), f.name()), (n + 1, format!("jungfrau-{}", n + 1).as_str()));
        }
    }

    #[test]
    fn packet_p_of_module_m_is_rows_512m_plus_4p() {
        let f = FORMATS[1];
        let frame: Vec<u16> = (0..f.frame_pixels()).map(|i| (i / MODULE_COLS) as u16).collect();
        let mut d = vec![0u8; DATAGRAM_BYTES];
        let block = PACKETS_PER_MODULE + 5;
        let meta = BlockMeta { frame_id: 7, block, frame_seq: 0, sync: false };
        assert_eq!(f.encode_datagram(&meta, &frame, &mut d), Ok(DATAGRAM_BYTES));
        let h = SlsHeader::read(&d).unwrap();
        assert_eq!((h.frame_number, h.packet_number, h.row, h.det_type, h.version), (7, 5, 1, 3, 2));
        assert_eq!(u16::from_le_bytes([d[HEADER_BYTES], d[HEADER_BYTES + 1]]), 512 + 4 * 5);
        assert_eq!(f.classify(1, &d), Ok(BlockInfo { frame_id: 7, index: block, sync: true }));
        assert_eq!(f.classify(0, &d).map_err(|e| e.name()), Err("module"));
    }

    #[test]
    fn the_frame_id_is_the_low_half_of_the_frame_number() {
        let f = FORMATS[0];
        let mut d = vec![0u8; DATAGRAM_BYTES];
        let meta = BlockMeta { frame_id: 1, block: 0, frame_seq: 0, sync: false };
        f.encode_header(&meta, &mut d).unwrap();
        d[..8].copy_from_slice(&0x0000_0001_0000_0009u64.to_le_bytes());
        assert_eq!(f.classify(0, &d).map(|b| b.frame_id), Ok(9));
    }
}
