//! The bodies of the fuzz targets (`fuzz/`), here so that ordinary tests replay the fuzzers' corpora and minimal
//! crashers through exactly the same code (`tests/tests/fuzz_regressions.rs`).
//!
//! Each takes arbitrary bytes and must neither panic nor hang, whatever they are.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use detector::k2;
use detector::k2::geometry::HEADER_BYTES;
use detector::k2::header::BlockHeader;
use shm_protocol::Region;
use shm_protocol::control::Connection;
use shm_protocol::messages::{Reply, Request, StageCommand};
use shm_protocol::pipeline::{self, BLOCK_RING, BlockSlotHeader, DatagramRecord, FRAME_RING, PipelineSizes};

/// Datagram parsing: every registered format's classification on every stream (and one past them); for a
/// datagram a format accepts, the decoding of a whole frame from it at the block it names.
pub fn datagram(data: &[u8]) {
    for f in detector::registry::FORMATS {
        let mut blocks: Vec<Option<&[u8]>> = vec![None; f.blocks_per_frame()];
        for stream in 0..=f.streams() {
            let Ok(b) = f.classify(stream, data) else { continue };
            // An accepted datagram is a block inside the frame.
            assert!(b.index < blocks.len(), "block index {} out of the frame", b.index);
            blocks[b.index] = Some(data);
        }
        if blocks.iter().any(Option::is_some) {
            let mut frame = vec![0u16; f.frame_pixels()];
            f.decode_frame(&blocks, &mut frame, 0).expect("decoding validated blocks");
        }
    }
}

/// Control messages: every message type decoded from the bytes, and the bytes sent as one packet over a real
/// `SOCK_SEQPACKET` pair and received as a request (framing, size limits, decoding).
pub fn control(data: &[u8]) {
    let _ = postcard::from_bytes::<Request>(data);
    let _ = postcard::from_bytes::<Reply>(data);
    let _ = postcard::from_bytes::<StageCommand>(data);
    thread_local! {
        static PAIR: (Connection, std::cell::RefCell<Connection>) = {
            let (a, b) = Connection::pair().expect("socketpair");
            b.set_recv_timeout(Some(Duration::from_secs(1))).expect("timeout");
            (a, std::cell::RefCell::new(b))
        };
    }
    PAIR.with(|(a, b)| {
        if a.send_raw(data, &[]).is_ok() {
            // A zero-length packet reads as a closed connection; anything else as a message or an error.
            let _ = b.borrow_mut().recv::<Request>();
        }
    });
}

/// Sizes of the assembly harness's region: 4 datagrams a slot, so that one slot's frames fit the frame ring
/// many times over while a drainer thread empties it.
fn assembly_sizes() -> PipelineSizes {
    PipelineSizes {
        geometry: supervisor::geometry::region_geometry(k2::IS),
        block_slots: 64,
        datagrams_per_slot: 4,
        frame_slots: 4,
        frame_cursors: 1,
        fill_value: 0,
        invalid_reasons: k2::IS.invalid_reasons(),
        placement: Default::default(),
    }
}

/// Bytes of one record of the assembly target's input.
pub const ASSEMBLY_RECORD: usize = 8;

/// Frame assembly. The input is a sequence of 8-byte records, each one datagram:
/// `[flags: u8][frame_id: u32 LE][block: u16 LE][sector: u8]`. A record becomes a well-formed IS datagram of
/// block `block % blocks_per_frame` of `frame_id` (so that the fuzzer explores the assembler's state machine:
/// windows, duplicates, late blocks, resets, timeouts, pressure) unless its flags say otherwise:
/// bit 0 sets the sync flag, bit 1 corrupts the datagram (random-ish bytes), bit 2 sends it on socket
/// `sector % 8` instead of its own, bit 3 advances the data clock by 200 ms (a gap in the stream).
///
/// The datagrams go into block-ring slots as the receiver puts them, to a real [`assembler::Assembler`] on a
/// real region whose frames a second thread consumes as the writer does; at the end the assembler drains. Nothing
/// may panic or hang.
pub fn assembly(data: &[u8]) {
    let sizes = assembly_sizes();
    let region = sizes.create_region().expect("region");
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        // The writer's part: commit whatever is published.
        let drainer = s.spawn(|| {
            let ring = region.ring(FRAME_RING).expect("frame ring");
            let mut c = ring.consumer(pipeline::WRITER_CURSOR).expect("writer cursor");
            while !stop.load(Ordering::Relaxed) {
                if let Ok(seq) = c.next(Some(Duration::from_millis(5))).map(|slot| slot.seq()) {
                    c.commit(seq + 1);
                }
            }
            while let Ok(Some(seq)) = c.try_next().map(|slot| slot.map(|s| s.seq())) {
                c.commit(seq + 1);
            }
        });
        feed(&region, &sizes, data);
        stop.store(true, Ordering::Relaxed);
        drainer.join().expect("drainer");
    });
}

/// The datagram of one assembly record, its sector, and the data-clock step before it.
fn datagram_of(r: &[u8], out: &mut Vec<u8>) -> (u16, u64) {
    let g = k2::IS_GEOMETRY;
    let flags = r[0];
    let frame_id = u32::from_le_bytes([r[1], r[2], r[3], r[4]]);
    let block = usize::from(u16::from_le_bytes([r[5], r[6]])) % g.blocks_per_frame();
    let own_sector = block / g.blocks_per_sector();
    let (x, y) = g.block_position(block % g.blocks_per_sector());
    out.clear();
    out.resize(g.block_bytes(), 0);
    let mut h = [0u8; HEADER_BYTES];
    BlockHeader::for_block(&g, frame_id, 0, x, y, flags & 1).encode(&mut h);
    out[..HEADER_BYTES].copy_from_slice(&h);
    for (k, b) in out[HEADER_BYTES..].iter_mut().enumerate() {
        *b = (k as u32).wrapping_mul(31).wrapping_add(frame_id) as u8;
    }
    if flags & 2 != 0 {
        // Corrupt: a prefix of the header scrambled by the record's bytes, at a record-chosen length.
        for (k, b) in out.iter_mut().take(40).enumerate() {
            *b ^= r[k % ASSEMBLY_RECORD].rotate_left(k as u32);
        }
        out.truncate(usize::from(r[7]) * 128 % (g.block_bytes() + 200));
    }
    let sector = if flags & 4 != 0 { u16::from(r[7] % 8) } else { own_sector as u16 };
    let step = if flags & 8 != 0 { 200_000_000 } else { 10_000 };
    (sector, step)
}

fn feed(region: &Region, sizes: &PipelineSizes, data: &[u8]) {
    let cfg = assembler::AssemblerConfig { reset_threshold: 8, ..Default::default() };
    let mut asm = assembler::Assembler::new(region, cfg).expect("assembler");
    let ring = region.ring(BLOCK_RING).expect("block ring");
    let mut producer = ring.producer().expect("producer");
    let stride = sizes.datagram_stride() as usize;
    let data_off = sizes.datagram_offset() as usize;
    let per_slot = sizes.datagrams_per_slot as usize;
    let mut records = data.chunks_exact(ASSEMBLY_RECORD).take(4096).peekable();
    let mut clock = 1_000_000_000u64;
    let mut dgram = Vec::new();
    while records.peek().is_some() {
        let Some(mut slot) = producer.try_claim() else {
            // Every slot is held by frames in flight: what the pressure valve is for. Let time pass.
            asm.tick().expect("tick");
            if producer.try_claim().is_none() {
                break;
            }
            continue;
        };
        let base = slot.as_mut_ptr();
        let mut n = 0;
        while n < per_slot {
            let Some(r) = records.next() else { break };
            let (sector, step) = datagram_of(r, &mut dgram);
            clock += step;
            let len = dgram.len().min(stride);
            let rec = DatagramRecord { len: len as u32, sector, flags: 0, recv_ns: clock };
            // SAFETY: the slot is ours until published; records follow the 64-byte slot header (n < per_slot), and
            // datagram n's `stride` bytes lie inside the slot (the region was laid out for these sizes).
            unsafe {
                base.add(std::mem::size_of::<BlockSlotHeader>() + n * std::mem::size_of::<DatagramRecord>())
                    .cast::<DatagramRecord>()
                    .write_unaligned(rec);
                std::ptr::copy_nonoverlapping(dgram.as_ptr(), base.add(data_off + n * stride), len);
            }
            n += 1;
        }
        let header = BlockSlotHeader { count: n as u32, seq: slot.seq(), ..Default::default() };
        // SAFETY: the slot begins with a BlockSlotHeader and is ours until published.
        unsafe { base.cast::<BlockSlotHeader>().write_unaligned(header) };
        slot.publish();
        asm.poll(Duration::ZERO).expect("poll");
    }
    asm.drain().expect("drain");
}

/// Seed inputs for the assembly target: `frames` whole frames from `first_frame_id`, blocks in camera order
/// (or interleaved across frames when `interleave`), the first frame's blocks flagged sync.
pub fn assembly_seed(frames: u32, first_frame_id: u32, interleave: bool) -> Vec<u8> {
    let g = k2::IS_GEOMETRY;
    let record = |f: u32, b: usize| {
        let mut r = [0u8; ASSEMBLY_RECORD];
        r[0] = u8::from(f == 0);
        r[1..5].copy_from_slice(&(first_frame_id.wrapping_add(f)).to_le_bytes());
        r[5..7].copy_from_slice(&(b as u16).to_le_bytes());
        r
    };
    let mut out = Vec::new();
    if interleave {
        for b in 0..g.blocks_per_frame() {
            for f in 0..frames {
                out.extend_from_slice(&record(f, b));
            }
        }
    } else {
        for f in 0..frames {
            for b in 0..g.blocks_per_frame() {
                out.extend_from_slice(&record(f, b));
            }
        }
    }
    out
}
