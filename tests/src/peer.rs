//! The ring peer: a producer that shares a region over a control socket, and a consumer that attaches to it.
//! Driven by `ringdaq-ring-peer` (the binary) from the multi-process tests.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use shm_protocol::layout::{ConsumerMode, Geometry, RegionSpec, RingKind, RingSpec};
use shm_protocol::{Access, Connection, ControlListener, Region, StartAt};

/// What the producer tells a connecting consumer (the memfd travels with it).
#[derive(Debug, Serialize, Deserialize)]
pub struct Welcome {
    /// Consumer cursor to attach to.
    pub consumer: u32,
    /// Items the producer will publish in all.
    pub items: u64,
}

/// Payload of item `seq`: the sequence and a pattern derived from it, so that a torn or stale slot is detected.
pub fn payload(seq: u64) -> [u64; 4] {
    [seq, seq.wrapping_mul(0x9E37_79B9_7F4A_7C15), !seq, seq.rotate_left(17)]
}

/// Creates the region, serves it on `socket`, publishes `items` items and returns once the consumer committed
/// them all.
pub fn produce(socket: &Path, items: u64, slots: u32) -> anyhow::Result<()> {
    let region = Region::create(&RegionSpec {
        geometry: Geometry::default(),
        rings: vec![RingSpec { kind: RingKind::Bytes, slot_count: slots, slot_bytes: 64, max_consumers: 1 }],
        app_bytes: 0,
    })?;
    let ring = region.ring(0)?;
    ring.activate_consumer(0, ConsumerMode::Gating, StartAt::Seq(0))?;
    let listener = ControlListener::bind(socket)?;
    std::thread::scope(|s| -> anyhow::Result<()> {
        let region = &region;
        let listener = &listener;
        // Serve every (re)connecting consumer with the memfd.
        s.spawn(move || {
            while let Ok(conn) = listener.accept() {
                let w = Welcome { consumer: 0, items };
                let _ = conn.send_with_fds(&w, &[region.fd()]);
            }
        });
        let mut p = ring.producer()?;
        while p.next_seq() < items {
            let mut slot = match p.claim(Some(Duration::from_secs(60))) {
                Ok(s) => s,
                Err(e) => bail!("producer stuck at {}: {e}", p.next_seq()),
            };
            let seq = slot.seq();
            for (i, w) in payload(seq).iter().enumerate() {
                slot.bytes_mut()[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
            }
            slot.publish();
        }
        while ring.consumer_state(0)?.0 < items {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Unblock the accept thread.
        let _ = rustix::net::shutdown(listener.as_fd(), rustix::net::Shutdown::Both);
        Ok(())
    })?;
    Ok(())
}

/// Attaches to the producer at `socket` and, for every item, writes its effect at offset `8 * seq` of `out`
/// (idempotent), then commits. Resumes from the committed cursor.
pub fn consume(socket: &Path, out: &Path) -> anyhow::Result<()> {
    let mut conn = Connection::connect(socket).context("connecting to the producer")?;
    let got = conn.recv::<Welcome>()?;
    let fd = got.fds.into_iter().next().context("no memfd with the welcome")?;
    let region = Region::attach(fd, Access::ReadWrite)?;
    let ring = region.ring(0)?;
    let mut c = ring.consumer(got.msg.consumer as usize)?;
    let file = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(out)?;
    eprintln!("consumer {} resumes at {}", std::process::id(), c.next_seq());
    while c.next_seq() < got.msg.items {
        let r = c.next(Some(Duration::from_secs(60)))?;
        let seq = r.seq();
        let b = r.bytes().ok_or_else(|| anyhow::anyhow!("a gating consumer's slot is stable"))?;
        let words: Vec<u64> =
            (0..4).map(|i| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or_default())).collect();
        if words != payload(seq) {
            bail!("slot {seq} holds {words:?}");
        }
        write_effect(&file, seq)?;
        c.commit(seq + 1);
    }
    Ok(())
}

fn write_effect(file: &File, seq: u64) -> std::io::Result<()> {
    file.write_all_at(&(seq ^ 0xA5A5_A5A5).to_le_bytes(), seq * 8)
}

/// Receives a region's memfd on `socket`, reads the first word of slot 0 and writes its complement to slot 1.
pub fn echo(socket: &Path) -> anyhow::Result<()> {
    let mut conn = Connection::connect(socket)?;
    let got = conn.recv::<u32>()?;
    let fd = got.fds.into_iter().next().context("no memfd")?;
    let region = Region::attach(fd, Access::ReadWrite)?;
    let ring = region.ring(0)?;
    // SAFETY: both slots lie in the mapping; the parent does not touch them until we exit.
    unsafe {
        let w = ring.slot_ptr(0).cast::<u64>().read_volatile();
        ring.slot_ptr(1).cast::<u64>().write_volatile(!w);
    }
    Ok(())
}
