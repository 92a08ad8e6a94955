//! Ingest: the highest frame rate of a detector format (K2 IS; JUNGFRAU of 1 and 2 modules) that the simulator →
//! receiver → assembler path (the writer discarding: no acquisition armed) takes with no datagram lost, beside a
//! bare `recvmmsg` loop receiving the same traffic through the same kind of sockets.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use detector::Format;
use detector::sim::{SimConfig, SimReport, Simulator};

use crate::pipeline::Pipeline;

/// One run at one asked rate.
#[derive(Debug, Clone)]
pub struct Trial {
    /// Frames/s asked of the simulator.
    pub asked: f64,
    /// Frames/s it reached.
    pub sent_fps: f64,
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams received.
    pub received: u64,
    /// Frames published complete (the pipeline only; the bare loop does not assemble).
    pub complete: Option<u64>,
    /// Frames sent.
    pub frames: u64,
    /// CPU seconds of the receiving side during the trial: the receiver process, or the bare loop's thread.
    pub receive_cpu_s: f64,
    /// CPU seconds of the assembler (the pipeline only).
    pub assembler_cpu_s: Option<f64>,
}

impl Trial {
    /// CPU µs per frame of the receiving side.
    pub fn receive_us_per_frame(&self) -> f64 {
        self.receive_cpu_s / self.frames.max(1) as f64 * 1e6
    }
}

impl Trial {
    /// Nothing lost: every datagram received (and, for the pipeline, every frame complete).
    pub fn lossless(&self) -> bool {
        self.received == self.sent && self.complete.is_none_or(|c| c == self.frames)
    }
}

/// The outcome of a rate search.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// Every trial, in order.
    pub trials: Vec<Trial>,
    /// The lossless trial with the highest rate reached.
    pub best: Option<Trial>,
    /// The sender could not go faster than the best lossless rate: the receive side's limit is higher.
    pub sender_bound: bool,
}

/// Searches for the highest lossless rate: up from 400 frames/s in steps of 100 while lossless (and while the
/// simulator reaches what is asked), then bisects between the best lossless and the lowest lossy rate down to
/// `resolution` frames/s.
pub fn search(resolution: f64, trial: impl FnMut(f64) -> anyhow::Result<Trial>) -> anyhow::Result<Search> {
    search_from(400.0, 100.0, resolution, trial)
}

/// [`search`] from `start` frames/s up in steps of `step`.
pub fn search_from(
    start: f64,
    step: f64,
    resolution: f64,
    mut trial: impl FnMut(f64) -> anyhow::Result<Trial>,
) -> anyhow::Result<Search> {
    let mut s = Search::default();
    let (mut lo, mut hi): (f64, Option<f64>) = (0.0, None);
    let mut rate = start;
    loop {
        let t = trial(rate)?;
        tracing::info!(asked = rate, reached = t.sent_fps, sent = t.sent, received = t.received, complete = ?t.complete, "trial");
        let ok = t.lossless();
        let reached = t.sent_fps >= 0.97 * rate;
        if ok && s.best.as_ref().is_none_or(|b| t.sent_fps > b.sent_fps) {
            s.best = Some(t.clone());
        }
        s.trials.push(t);
        if ok {
            lo = rate;
            if !reached {
                s.sender_bound = true;
                break;
            }
        } else {
            hi = Some(rate);
        }
        rate = match hi {
            None => rate + step,
            Some(h) => (lo + h) / 2.0,
        };
        if hi.is_some_and(|h| h - lo <= resolution) || rate < resolution {
            break;
        }
    }
    Ok(s)
}

/// A trial of the pipeline: `frames` frames of format `mode` (the pipeline's) at `fps` into `p`'s sockets; counts
/// what arrived.
pub fn pipeline_trial(p: &mut Pipeline, mode: Format, fps: f64, frames: u64) -> anyhow::Result<Trial> {
    let (rx, asm) = (p.pid("receiver")?.0, p.pid("assembler")?.0);
    let cpu = || -> anyhow::Result<(u64, u64)> { Ok((crate::procfs::cpu_ns(rx)?, crate::procfs::cpu_ns(asm)?)) };
    let before = p.status()?;
    let cpu0 = cpu()?;
    let cfg = SimConfig { port_base: p.port_base, frames, fps: Some(fps), mode, ..Default::default() };
    let r = Simulator::new(cfg)?.run(&AtomicBool::new(false))?;
    let after = p.drain(Duration::from_millis(400), Duration::from_secs(30))?;
    let cpu1 = cpu()?;
    let d = |name: &str| Pipeline::counter(&after, name) - Pipeline::counter(&before, name);
    Ok(Trial {
        asked: fps,
        sent_fps: r.fps(),
        sent: r.datagrams,
        received: d("receiver.datagrams"),
        complete: Some(d("assembler.frames_complete")),
        frames,
        receive_cpu_s: (cpu1.0 - cpu0.0) as f64 / 1e9,
        assembler_cpu_s: Some((cpu1.1 - cpu0.1) as f64 / 1e9),
    })
}

/// Eight UDP sockets on 127.0.0.1 with `buffer` bytes of receive buffer each: the baseline's own, set up as the
/// supervisor sets up the pipeline's.
pub struct BareSockets {
    socks: Vec<UdpSocket>,
    /// First port.
    pub port_base: u16,
}

impl BareSockets {
    /// Binds eight consecutive free ports, each with a receive buffer of `buffer` bytes.
    pub fn bind(buffer: usize) -> anyhow::Result<Self> {
        let (port_base, socks) = crate::pipeline::bind_eight_udp()?;
        for s in &socks {
            s.set_nonblocking(true)?;
            if rustix::net::sockopt::set_socket_recv_buffer_size_force(s, buffer).is_err() {
                rustix::net::sockopt::set_socket_recv_buffer_size(s, buffer)?;
            }
        }
        Ok(Self { socks, port_base })
    }

    /// A trial of the bare loop: receives with `recvmmsg` (64 datagrams a call) from all eight sockets, polling
    /// when they are empty, while the simulator sends `frames` frames of format `mode` at `fps`.
    pub fn trial(&self, mode: Format, fps: f64, frames: u64) -> anyhow::Result<Trial> {
        let got = AtomicU64::new(0);
        let done = AtomicBool::new(false);
        let cfg = SimConfig { port_base: self.port_base, frames, fps: Some(fps), mode, ..Default::default() };
        let sim = Simulator::new(cfg)?;
        let (r, cpu): (SimReport, f64) = std::thread::scope(|s| -> anyhow::Result<(SimReport, f64)> {
            let rx = s.spawn(|| self.receive(&got, &done, mode.max_datagram() + 64));
            let r = sim.run(&AtomicBool::new(false));
            done.store(true, Ordering::Relaxed);
            let cpu = rx.join().map_err(|_| anyhow::anyhow!("bare receiver panicked"))?;
            Ok((r?, cpu))
        })?;
        Ok(Trial {
            asked: fps,
            sent_fps: r.fps(),
            sent: r.datagrams,
            received: got.load(Ordering::Relaxed),
            complete: None,
            frames,
            receive_cpu_s: cpu,
            assembler_cpu_s: None,
        })
    }

    /// Receives until the sender is done and the sockets have been empty for 300 ms; returns this thread's CPU
    /// seconds from its first datagram on (the idle wait at the end costs next to nothing: it sleeps in poll).
    fn receive(&self, got: &AtomicU64, done: &AtomicBool, max: usize) -> f64 {
        let thread_cpu = || {
            let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
            t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
        };
        let start = thread_cpu();
        const BATCH: usize = 64;
        let mut bufs = vec![0u8; BATCH * max];
        let mut iov: Vec<libc::iovec> =
            bufs.chunks_exact_mut(max).map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: max }).collect();
        // SAFETY: mmsghdr is plain C data (all-zero is a valid value); each header points at its own iovec below.
        let mut hdrs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (h, v) in hdrs.iter_mut().zip(iov.iter_mut()) {
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
        }
        let mut fds: Vec<libc::pollfd> =
            self.socks.iter().map(|s| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
        let mut idle = Instant::now();
        // Sleep in poll until a socket is readable, then empty each readable one (64 datagrams a call); until the
        // sender is done and the sockets have been empty for 300 ms.
        while !(done.load(Ordering::Relaxed) && idle.elapsed() > Duration::from_millis(300)) {
            // SAFETY: `fds` holds `len` pollfds of our open sockets; the kernel writes their `revents` only.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10) };
            if ready <= 0 {
                continue;
            }
            idle = Instant::now();
            for (sck, fd) in self.socks.iter().zip(&fds) {
                if fd.revents & libc::POLLIN == 0 {
                    continue;
                }
                loop {
                    // SAFETY: the headers point at live buffers of the stated sizes for the whole call.
                    let n = unsafe {
                        libc::recvmmsg(
                            sck.as_raw_fd(),
                            hdrs.as_mut_ptr(),
                            BATCH as u32,
                            libc::MSG_DONTWAIT,
                            std::ptr::null_mut(),
                        )
                    };
                    if n <= 0 {
                        break;
                    }
                    got.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
        thread_cpu() - start
    }
}
