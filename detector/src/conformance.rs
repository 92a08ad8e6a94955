//! The conformance suite every [`DetectorFormat`] passes: one function, run over every format of the
//! [`registry`](crate::registry) by one test (as iceoryx2 tests every implementation of a concept with one suite).
//!
//! It checks, through the trait only:
//! - the geometry is usable (non-zero, invalid reasons named and unique, a send order that is a permutation of
//!   the blocks, streams in range);
//! - encode → classify → decode round trips at every block position, pixel-exact, and missing blocks get the fill
//!   value;
//! - every invalid reason is reachable: a datagram corrupted for reason r classifies as r;
//! - out-of-range input is refused with an error, not a panic: a stream out of range, decode buffers of the
//!   wrong size, encode of a block out of range.
//!
//! [`check_view`] runs it over a part of a format (some of its streams, [`crate::subset`]) and checks that the
//! part, fed the whole detector's datagrams of its streams, decodes exactly their rectangles of the whole frame.

use crate::format::{BlockInfo, BlockMeta, DetectorFormat, Format};
use crate::pattern::splitmix64;
use crate::subset::{Streams, View};

/// A way in which a format does not conform.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("format {format}: {what}")]
pub struct Nonconformance {
    format: &'static str,
    what: String,
}

fn ensure(f: &dyn DetectorFormat, ok: bool, what: impl FnOnce() -> String) -> Result<(), Nonconformance> {
    if ok { Ok(()) } else { Err(Nonconformance { format: f.name(), what: what() }) }
}

/// Runs the whole suite on `format`.
pub fn check(format: Format) -> Result<(), Nonconformance> {
    check_format(format.get())
}

/// Runs the whole suite on a format given as a trait object (a registered format or a part of one).
pub fn check_format(f: &dyn DetectorFormat) -> Result<(), Nonconformance> {
    geometry(f)?;
    let frame = random_frame(f, 0x5EED);
    let datagrams = encode_all(f, &frame, 77)?;
    classify_valid(f, &datagrams)?;
    round_trip(f, &frame, &datagrams)?;
    invalid_reasons(f, &datagrams[0])?;
    refuses_bad_input(f, &frame, &datagrams)?;
    Ok(())
}

/// Checks the part of `full` that takes `streams`: it conforms as a format of its own, the streams' rectangles
/// tile the part's frame and the whole frame, and the whole detector's datagrams of those streams, classified
/// on the part's streams, are the part's blocks and decode to exactly the pixels of the placement's rectangles
/// of the whole frame (complete, and with every other block missing).
pub fn check_view(full: Format, streams: Streams) -> Result<(), Nonconformance> {
    let whole = full.get();
    let fail = |what: String| Nonconformance { format: whole.name(), what: format!("sectors {streams}: {what}") };
    let view = View::new(full, streams).map_err(|e| fail(e.to_string()))?;
    let part: &dyn DetectorFormat = &*view;
    check_format(part)?;
    tiles(whole, whole.streams(), whole.rows(), whole.cols()).map_err(|e| fail(format!("whole frame: {e}")))?;
    tiles(part, part.streams(), part.rows(), part.cols()).map_err(|e| fail(format!("part's frame: {e}")))?;
    let frame = random_frame(whole, 0xC0FFEE);
    let datagrams = encode_all(whole, &frame, 77)?;
    let fill = whole.pixel_mask();
    let mut blocks: Vec<Option<&[u8]>> = vec![None; part.blocks_per_frame()];
    for (block, d) in datagrams.iter().enumerate() {
        let s = whole.stream_of(block);
        let Some(local) = streams.iter().position(|x| x == s) else { continue };
        let info = part.classify(local, d).map_err(|e| fail(format!("block {block} of stream {s}: {e}")))?;
        let slot = blocks.get_mut(info.index).ok_or_else(|| fail(format!("block {block} → {}", info.index)))?;
        if slot.is_some() {
            return Err(fail(format!("two blocks classify as the part's block {}", info.index)));
        }
        *slot = Some(d.as_slice());
    }
    if blocks.iter().any(Option::is_none) {
        return Err(fail("a block of the part is not among the whole's datagrams of its streams".into()));
    }
    let placement = view.placement();
    let covered: usize = placement.rects.iter().map(|r| r.rows * r.cols).sum();
    if covered != part.frame_pixels() {
        return Err(fail(format!("the placement covers {covered} pixels of {}", part.frame_pixels())));
    }
    for missing_odd in [false, true] {
        let given: Vec<Option<&[u8]>> =
            blocks.iter().enumerate().map(|(i, b)| if missing_odd && i % 2 == 1 { None } else { *b }).collect();
        let mut out = vec![0u16; part.frame_pixels()];
        part.decode_frame(&given, &mut out, fill).map_err(|e| fail(format!("decode: {e}")))?;
        for r in &placement.rects {
            for y in 0..r.rows {
                for x in 0..r.cols {
                    let got = out[(r.row + y) * part.cols() + r.col + x];
                    let want = frame[(r.full_row + y) * whole.cols() + r.full_col + x];
                    if got != want && !(missing_odd && got == fill) {
                        return Err(fail(format!(
                            "pixel ({}, {}) of the part is {got}, the whole frame's ({}, {}) is {want}",
                            r.row + y,
                            r.col + x,
                            r.full_row + y,
                            r.full_col + x
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The streams' rectangles lie in the frame and cover each of its pixels once (that each stream's pixels are
/// in its rectangle is checked by decoding: [`check_view`] compares the part's pixels with the whole's).
fn tiles(f: &dyn DetectorFormat, streams: usize, rows: usize, cols: usize) -> Result<(), String> {
    let mut cover = vec![0u8; rows * cols];
    for s in 0..streams {
        let r = f.stream_rect(s).ok_or_else(|| format!("stream {s} has no rectangle"))?;
        if r.row + r.rows > rows || r.col + r.cols > cols {
            return Err(format!("stream {s}: {r:?} outside the {rows} x {cols} frame"));
        }
        for y in r.row..r.row + r.rows {
            for c in &mut cover[y * cols + r.col..y * cols + r.col + r.cols] {
                *c += 1;
            }
        }
    }
    if let Some(p) = cover.iter().position(|&c| c != 1) {
        return Err(format!("pixel ({}, {}) is covered {} times", p / cols, p % cols, cover[p]));
    }
    Ok(())
}

/// Geometry and naming: sizes non-zero, reasons unique and non-empty, send order a permutation.
pub fn geometry(f: &dyn DetectorFormat) -> Result<(), Nonconformance> {
    let n = f.blocks_per_frame();
    ensure(f, f.rows() > 0 && f.cols() > 0 && f.streams() > 0 && n > 0, || "a zero dimension".into())?;
    ensure(f, f.id() != 0, || "id 0 is reserved".into())?;
    ensure(f, f.frame_bytes() == f.frame_pixels() * f.pixel_type().bytes(), || "frame bytes".into())?;
    let reasons = f.invalid_reasons();
    for (i, r) in reasons.iter().enumerate() {
        let ok = !r.is_empty() && r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        ensure(f, ok && !reasons[..i].contains(r), || format!("reason name {r:?} empty, not snake_case or repeated"))?;
    }
    let mut seen = vec![false; n];
    for i in 0..n {
        let b = f.send_order(i);
        ensure(f, b < n && !seen[b], || format!("send order {i} → block {b}: out of range or repeated"))?;
        seen[b] = true;
        ensure(f, f.stream_of(b) < f.streams(), || format!("block {b} on stream {}", f.stream_of(b)))?;
        let len = f.header_bytes() + f.payload_bytes(b);
        ensure(f, len <= f.max_datagram(), || format!("block {b}: {len} bytes > max_datagram"))?;
    }
    Ok(())
}

/// A frame of pseudo-random pixels below the format's pixel mask (the mask itself is left for the fill value).
pub fn random_frame(f: &dyn DetectorFormat, seed: u64) -> Vec<u16> {
    let mask = f.pixel_mask();
    let bound = mask.max(1);
    (0..f.frame_pixels() as u64)
        .map(|i| (splitmix64(seed ^ i.wrapping_mul(0x9E37_79B9)) as u16 & mask) % bound)
        .collect()
}

/// Every block's datagram of `frame` with frame id `frame_id`, indexed by block (sync set on odd blocks).
pub fn encode_all(f: &dyn DetectorFormat, frame: &[u16], frame_id: u32) -> Result<Vec<Vec<u8>>, Nonconformance> {
    (0..f.blocks_per_frame())
        .map(|block| {
            let mut out = vec![0u8; f.max_datagram()];
            let meta = BlockMeta { frame_id, block, frame_seq: 3, sync: block % 2 == 1 };
            let n = f
                .encode_datagram(&meta, frame, &mut out)
                .map_err(|e| Nonconformance { format: f.name(), what: format!("encoding block {block}: {e}") })?;
            out.truncate(n);
            Ok(out)
        })
        .collect()
}

fn classify_valid(f: &dyn DetectorFormat, datagrams: &[Vec<u8>]) -> Result<(), Nonconformance> {
    for (block, d) in datagrams.iter().enumerate() {
        let got = f.classify(f.stream_of(block), d);
        // A format without a sync flag reports every block as synchronised.
        let want = BlockInfo { frame_id: 77, index: block, sync: block % 2 == 1 || !f.has_sync_flag() };
        ensure(f, got == Ok(want), || format!("block {block} classifies as {got:?}, expected {want:?}"))?;
    }
    Ok(())
}

/// Decodes with every block, with the even and then the odd blocks missing, and with none: each pixel is the
/// encoded one where its block is present and the fill value where it is missing, so every block position
/// round-trips and is filled.
fn round_trip(f: &dyn DetectorFormat, frame: &[u16], datagrams: &[Vec<u8>]) -> Result<(), Nonconformance> {
    // A fill value no pixel has (see `random_frame`), so that a filled pixel cannot pass for a decoded one.
    let fill = f.pixel_mask();
    ensure(f, !frame.contains(&fill), || "the test frame holds the fill value".into())?;
    let mut out = vec![0u16; f.frame_pixels()];
    let all: Vec<Option<&[u8]>> = datagrams.iter().map(|d| Some(d.as_slice())).collect();
    decode(f, &all, &mut out, fill)?;
    ensure(f, out == frame, || "a complete frame does not decode to the pixels encoded".into())?;
    let mut from_even = vec![0u16; f.frame_pixels()];
    let mut from_odd = vec![0u16; f.frame_pixels()];
    let half = |parity: usize| -> Vec<Option<&[u8]>> {
        all.iter().enumerate().map(|(i, d)| if i % 2 == parity { *d } else { None }).collect()
    };
    decode(f, &half(0), &mut from_even, fill)?;
    decode(f, &half(1), &mut from_odd, fill)?;
    for (p, ((&want, &e), &o)) in frame.iter().zip(&from_even).zip(&from_odd).enumerate() {
        // Exactly one of the two halves holds the pixel's block; the other must have filled it.
        let ok = (e == want && o == fill) || (o == want && e == fill);
        ensure(f, ok, || format!("pixel {p}: {want} decoded as {e} (even blocks) and {o} (odd blocks)"))?;
    }
    let none = vec![None; f.blocks_per_frame()];
    decode(f, &none, &mut out, fill)?;
    ensure(f, out.iter().all(|&p| p == fill), || "a frame without blocks is not all fill".into())?;
    Ok(())
}

fn decode(f: &dyn DetectorFormat, blocks: &[Option<&[u8]>], out: &mut [u16], fill: u16) -> Result<(), Nonconformance> {
    f.decode_frame(blocks, out, fill).map_err(|e| Nonconformance { format: f.name(), what: format!("decode: {e}") })
}

/// Every reason is reachable: the datagram corrupted for reason r classifies as r (on its own stream).
fn invalid_reasons(f: &dyn DetectorFormat, valid: &[u8]) -> Result<(), Nonconformance> {
    let hb = f.header_bytes();
    for (r, name) in f.invalid_reasons().iter().enumerate() {
        let mut d = valid.to_vec();
        let mut len = d.len();
        f.corrupt(r, &mut d[..hb], &mut len)
            .map_err(|e| Nonconformance { format: f.name(), what: format!("reason {name}: {e}") })?;
        d.resize(len, 0);
        let got = f.classify(f.stream_of(0), &d);
        ensure(f, got.map_err(|e| (e.index(), e.name())) == Err((r, *name)), || {
            format!("a datagram corrupted for {name:?} classifies as {got:?}")
        })?;
    }
    for &r in f.sim_faults() {
        ensure(f, r < f.invalid_reasons().len(), || format!("simulator fault {r} is no reason"))?;
    }
    ensure(f, f.corrupt(f.invalid_reasons().len(), &mut valid.to_vec(), &mut 0).is_err(), || {
        "corrupt accepts a reason out of range".into()
    })?;
    Ok(())
}

/// Out-of-range input is an error: a stream out of range, wrong buffer sizes, a block out of range.
fn refuses_bad_input(f: &dyn DetectorFormat, frame: &[u16], datagrams: &[Vec<u8>]) -> Result<(), Nonconformance> {
    for stream in [f.streams(), f.streams() + 1, usize::MAX] {
        ensure(f, f.classify(stream, &datagrams[0]).is_err(), || format!("stream {stream} accepted"))?;
    }
    ensure(f, f.classify(0, &[]).is_err(), || "an empty datagram accepted".into())?;
    let n = f.blocks_per_frame();
    let all: Vec<Option<&[u8]>> = datagrams.iter().map(|d| Some(d.as_slice())).collect();
    let mut out = vec![0u16; f.frame_pixels()];
    ensure(f, f.decode_frame(&all[1..], &mut out, 0).is_err(), || "decode of too few blocks".into())?;
    ensure(f, f.decode_frame(&all, &mut out[1..], 0).is_err(), || "decode into a short frame".into())?;
    let mut big = vec![0u16; f.frame_pixels() + 1];
    ensure(f, f.decode_frame(&all, &mut big, 0).is_err(), || "decode into a long frame".into())?;
    let cut = &datagrams[0][..datagrams[0].len() - 1];
    let mut short = all.clone();
    short[0] = Some(cut);
    ensure(f, f.decode_frame(&short, &mut out, 0).is_err(), || "decode of a short datagram".into())?;
    let mut buf = vec![0u8; f.max_datagram()];
    let meta = BlockMeta { frame_id: 0, block: n, frame_seq: 0, sync: false };
    ensure(f, f.encode_datagram(&meta, frame, &mut buf).is_err(), || "encode of a block out of range".into())?;
    let meta = BlockMeta { block: 0, ..meta };
    ensure(f, f.encode_datagram(&meta, frame, &mut buf[..f.header_bytes()]).is_err(), || {
        "encode into a short buffer".into()
    })?;
    ensure(f, f.encode_datagram(&meta, &frame[1..], &mut buf).is_err(), || "encode from a short frame".into())?;
    ensure(f, f.encode_header(&meta, &mut buf[..f.header_bytes() - 1]).is_err(), || {
        "encode of a header into a short buffer".into()
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::registry::FORMATS;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn classify_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200), stream in 0usize..12) {
            for f in FORMATS {
                let _ = f.classify(stream, &bytes);
            }
        }

        /// A valid header over random payload bytes: classification never panics and never depends on the
        /// payload.
        #[test]
        fn classify_reads_headers_not_payloads(seed: u64, block in 0usize..1024, stream in 0usize..10) {
            for f in FORMATS {
                let block = block % f.blocks_per_frame();
                let mut d: Vec<u8> = (0..f.max_datagram() as u64).map(|i| crate::pattern::splitmix64(seed ^ i) as u8).collect();
                let meta = crate::format::BlockMeta { frame_id: 9, block, frame_seq: 0, sync: false };
                f.encode_header(&meta, &mut d).unwrap();
                let got = f.classify(stream, &d);
                if stream == f.stream_of(block) {
                    prop_assert_eq!(got.map(|b| b.index), Ok(block));
                } else {
                    prop_assert!(got.map(|b| b.index) != Ok(block));
                }
            }
        }
    }
}
