//! `ringdaq inspect`: the region as it is, read from outside through a read-only mapping: header, rings and
//! cursors, slots, stage records, counters, acquisitions, the receiver's journal.
//!
//! It asks the supervisor for the region; if the supervisor does not answer (it is stopped or wedged), it opens
//! the region through `/proc/<supervisor pid>/fd` (the pid is in `<runtime dir>/supervisor.pid`), so it works
//! when nothing else does. It writes nothing.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use shm_protocol::control::Connection;
use shm_protocol::layout::ConsumerMode;
use shm_protocol::messages::{PROTOCOL_VERSION, Reply, Request, Role};
use shm_protocol::pipeline::{self, Stage};
use shm_protocol::{Access, Region};

/// The file in the runtime directory that holds the supervisor's pid.
pub const PID_FILE: &str = "supervisor.pid";

/// Prints the region of the pipeline in `runtime_dir` to `out`.
pub fn inspect(runtime_dir: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    let (fd, how) = match region_from_supervisor(runtime_dir) {
        Ok(fd) => (fd, "from the supervisor".to_string()),
        Err(e) => {
            let (fd, pid) = region_from_proc(runtime_dir)
                .with_context(|| format!("the supervisor did not hand over the region ({e:#})"))?;
            (fd, format!("through /proc/{pid}/fd (the supervisor did not answer: {e:#})"))
        }
    };
    let region = Region::attach(fd, Access::ReadOnly)?;
    print(&region, &how, out)
}

fn region_from_supervisor(runtime_dir: &Path) -> anyhow::Result<OwnedFd> {
    let mut c = Connection::connect(&crate::config::control_socket(runtime_dir))?;
    // A wedged supervisor must not wedge the inspection.
    c.set_recv_timeout(Some(Duration::from_secs(2)))?;
    match c.call::<_, Reply>(&Request::Hello { protocol: PROTOCOL_VERSION, role: Role::Client })?.msg {
        Reply::Welcome { .. } => {}
        other => bail!("unexpected answer to hello: {other:?}"),
    }
    let r = c.call::<_, Reply>(&Request::MapRegion)?;
    match r.msg {
        Reply::Region => r.fds.into_iter().next().context("no descriptor came with the region"),
        Reply::Error { message } => bail!("{message}"),
        other => bail!("unexpected reply {other:?}"),
    }
}

fn region_from_proc(runtime_dir: &Path) -> anyhow::Result<(OwnedFd, u32)> {
    let pid_file = runtime_dir.join(PID_FILE);
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("reading {}", pid_file.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{} holds no pid", pid_file.display()))?;
    let dir = format!("/proc/{pid}/fd");
    for e in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let p = e?.path();
        if std::fs::read_link(&p).is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:ringdaq-region")) {
            let f = std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?;
            return Ok((f.into(), pid));
        }
    }
    bail!("process {pid} holds no ringdaq region")
}

fn print(region: &Region, how: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let h = region.header();
    let g = h.geometry;
    writeln!(
        out,
        "region ({how}): layout version {}, {} MB, {} rings; mode id {}, frames {} x {}, {} blocks of up to {} bytes, \
         {} sectors",
        h.layout_version,
        h.region_size >> 20,
        h.ring_count,
        g.mode,
        g.frame_rows,
        g.frame_cols,
        g.blocks_per_frame,
        g.max_datagram,
        g.sectors
    )?;
    for i in 0..h.ring_count as usize {
        let r = region.ring(i)?;
        let name = match i {
            pipeline::BLOCK_RING => "block",
            pipeline::FRAME_RING => "frame",
            _ => "other",
        };
        let p = r.published();
        writeln!(
            out,
            "ring {i} ({name}): {} slots of {} bytes; published {p}; producer pid {} (attach {}){}",
            r.slot_count(),
            r.slot_size(),
            r.producer_pid(),
            r.producer_generation(),
            if r.is_being_written(p) { format!("; slot of {p} being written") } else { String::new() }
        )?;
        for c in 0..r.max_consumers() {
            let (cursor, mode, gen_) = r.consumer_state(c)?;
            if mode == ConsumerMode::Free {
                continue;
            }
            writeln!(
                out,
                "  consumer {c}: {mode:?}, committed {cursor} ({} behind), pid {} (attach {gen_})",
                p.saturating_sub(cursor),
                r.consumer_pid(c)?
            )?;
        }
        let held = (p.saturating_sub(r.slot_count())..p).filter(|&s| r.holds(s)).count();
        writeln!(out, "  slots holding their published sequence: {held} of the last {}", r.slot_count().min(p))?;
    }
    let area = pipeline::pipeline_area(region)?;
    let pl = &area.placement;
    if pl.is_recorded() {
        let sectors: Vec<String> = pl.streams().iter().map(u32::to_string).collect();
        writeln!(
            out,
            "placement: sectors {} of {} of a {} x {} frame; rectangles [row, col, full_row, full_col, rows, cols] {:?}",
            sectors.join(","),
            pl.detector_streams,
            pl.full_rows,
            pl.full_cols,
            pl.rect_numbers()
        )?;
    }
    for st in Stage::ALL {
        let s = area.stage(st);
        writeln!(
            out,
            "stage {:<9}: pid {:<7} starts {:<4} heartbeat {:<10} allocations {}",
            st.name(),
            s.pid.load(Ordering::Relaxed),
            s.starts.load(Ordering::Relaxed),
            s.heartbeat.load(Ordering::Relaxed),
            s.allocations.load(Ordering::Relaxed)
        )?;
    }
    let j = &area.receive_journal;
    writeln!(
        out,
        "receive journal: {} (slot {}, from datagram {}, sector {})",
        match j.armed.load(Ordering::Relaxed) {
            0 => "no call in progress".to_string(),
            n => format!("a call of up to {n} datagrams in progress"),
        },
        j.seq.load(Ordering::Relaxed),
        j.base.load(Ordering::Relaxed),
        j.sector.load(Ordering::Relaxed)
    )?;
    for (k, v) in area.counters() {
        if v != 0 {
            writeln!(out, "{k:<32} {v}")?;
        }
    }
    writeln!(out, "active acquisition: {}", area.active_acquisition.load(Ordering::Relaxed))?;
    for a in &area.acquisitions {
        let id = a.id.load(Ordering::Relaxed);
        if id == 0 {
            continue;
        }
        let state = a.state();
        writeln!(
            out,
            "acquisition {id}: {state}, {} of {} frames assigned, {} written, first frame-ring seq {}; {}",
            a.assigned.load(Ordering::Relaxed),
            a.frames.load(Ordering::Relaxed),
            a.written.load(Ordering::Relaxed),
            a.first_seq.load(Ordering::Relaxed),
            a.path()
        )?;
    }
    Ok(())
}
