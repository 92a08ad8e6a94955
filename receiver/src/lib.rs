//! The receive stage: datagrams from the supervisor's UDP sockets straight into block-ring slots.
//!
//! Each `recvmmsg` call scatters datagrams directly into the slot's datagram buffers in the region (no copy in
//! user space), and the receiver records per datagram its length, sector (which socket) and receive time, then
//! publishes the slot. It never opens a socket itself: the sockets belong to the supervisor, so the kernel keeps
//! queueing datagrams while a receiver restarts.
//!
//! Kernel drops (datagrams the kernel discarded because a socket's buffer was full) are read with
//! `getsockopt(SO_MEMINFO)`, whose `SK_MEMINFO_DROPS` is the socket's `sk_drops`. `SO_RXQ_OVFL` would report the
//! same counter with each datagram, but Linux 6.18 does not deliver it for UDP sockets (checked: no control
//! message arrives after drops), so it cannot be relied on.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shm_protocol::pipeline::{
    self, BLOCK_RING, BlockSlotHeader, DATAGRAM_TRUNCATED, DatagramRecord, PipelineArea, PipelineParams, Stage,
};
use shm_protocol::{Producer, Region, RingError};

/// Why the receiver stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// The region is not a pipeline region.
    #[error(transparent)]
    Pipeline(#[from] pipeline::PipelineError),
    /// A ring operation failed.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The region lacks a ring.
    #[error(transparent)]
    Region(#[from] shm_protocol::RegionError),
    /// The supervisor handed over no sockets, or more than the sectors.
    #[error("expected 1..={max} UDP sockets from the supervisor, got {got}")]
    Sockets {
        /// Sockets received.
        got: usize,
        /// Sectors in the region's geometry.
        max: usize,
    },
    /// A receive failed for a reason other than "nothing there".
    #[error("recvmmsg on sector {sector}: {source}")]
    Recv {
        /// Socket index.
        sector: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// How often the receiver looks up from its sockets when they are idle.
pub const IDLE_POLL: Duration = Duration::from_millis(50);

/// Most datagrams taken from one socket before the next socket's turn (half a sector's share of an IS frame).
/// Sockets are served strictly in turn, so that under backlog no sector falls behind the others by more than a
/// turn: the assembler holds only a few frames in flight.
pub const TURN: usize = 16;

/// A partly filled slot is published once its first datagram is this old (and the sockets are empty). Slots
/// are filled rather than published at every lull so that the block ring's capacity, counted in datagrams,
/// does not shrink with the traffic's rate: a ring of N slots always spans at least N × 5 ms of stream (longer
/// than the assembler's frame timeout), or N full slots. At the K2's rate a 64-datagram slot fills in 0.6 ms,
/// so this adds latency only to slow streams.
pub const FLUSH_AFTER: Duration = Duration::from_millis(5);

/// Per-message scatter state, kept in process memory (it holds pointers, which the region must not).
struct Batch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    /// Per message: room for the kernel's receive timestamp (SCM_TIMESTAMPNS).
    cmsg: Vec<[u64; 8]>,
}

/// The sockets and the per-call `recvmmsg` state.
struct Io {
    sockets: Vec<OwnedFd>,
    batch: Batch,
    /// Latest SK_MEMINFO_DROPS per socket (cumulative drops of that socket).
    drops: Vec<u32>,
    /// When the drop counters were last read.
    drops_read: Instant,
    next_socket: usize,
}

/// The receive loop over one region and its sockets.
pub struct Receiver<'r> {
    producer: Producer<'r>,
    area: &'r PipelineArea,
    params: PipelineParams,
    io: Io,
    /// A stop was asked for (latched: the request is consumed when read).
    stopping: bool,
}

impl<'r> Receiver<'r> {
    /// Attaches as the block ring's producer. `sockets[i]` is sector `i`.
    pub fn new(region: &'r Region, sockets: Vec<OwnedFd>) -> Result<Self, ReceiverError> {
        let area = pipeline::pipeline_area(region)?;
        let max = region.header().geometry.sectors.max(1) as usize;
        if sockets.is_empty() || sockets.len() > max {
            return Err(ReceiverError::Sockets { got: sockets.len(), max });
        }
        let params = area.params;
        let n = params.datagrams_per_slot as usize;
        let producer = region.ring(BLOCK_RING)?.producer()?;
        let batch = Batch {
            // SAFETY: mmsghdr/iovec are plain C structs; all-zero is valid. They are filled before each use.
            hdrs: vec![unsafe { std::mem::zeroed() }; n],
            iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; n],
            cmsg: vec![[0; 8]; n],
        };
        for s in &sockets {
            // Receive times from the kernel (when the datagram arrived), not from us (when we read it): the
            // assembler's clock must not jump when a restarted receiver reads a backlog.
            let one: libc::c_int = 1;
            // SAFETY: setsockopt reads one int from a valid pointer of the given size.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_TIMESTAMPNS,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        let drops = vec![0; sockets.len()];
        Ok(Self {
            producer,
            area,
            params,
            io: Io { sockets, batch, drops, drops_read: Instant::now(), next_socket: 0 },
            stopping: false,
        })
    }

    /// Runs until `stop` is set (checked at least every [`IDLE_POLL`]) or `should_stop` returns true.
    pub fn run(&mut self, stop: &AtomicBool, mut should_stop: impl FnMut() -> bool) -> Result<(), ReceiverError> {
        // Tell the assembler a receiver runs (the supervisor clears this when a receiver dies).
        self.area.stage(Stage::Receiver).pid.store(std::process::id(), Ordering::Release);
        let r = self.receive(stop, &mut should_stop);
        self.area.stage(Stage::Receiver).pid.store(0, Ordering::Release);
        r
    }

    fn receive(&mut self, stop: &AtomicBool, mut should_stop: impl FnMut() -> bool) -> Result<(), ReceiverError> {
        let mut last_check = Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) || self.stopping {
                return Ok(());
            }
            if last_check.elapsed() >= IDLE_POLL {
                last_check = Instant::now();
                if should_stop() {
                    return Ok(());
                }
            }
            self.fill_one_slot(stop, &mut should_stop, &mut last_check)?;
        }
    }

    /// Claims a slot, fills it from the sockets, publishes it. Returns when the slot is full, or partly full and
    /// the sockets are momentarily empty, or when asked to stop.
    fn fill_one_slot(
        &mut self,
        stop: &AtomicBool,
        should_stop: &mut impl FnMut() -> bool,
        last_check: &mut Instant,
    ) -> Result<(), ReceiverError> {
        let per_slot = self.params.datagrams_per_slot as usize;
        let stride = self.params.datagram_stride as usize;
        let data_off = self.params.datagram_offset as usize;
        let io = &mut self.io;
        let area = self.area;
        let interrupted = self.producer.take_interrupted();
        let mut slot = match self.producer.claim(Some(IDLE_POLL)) {
            Ok(s) => s,
            // The assembler is a full ring behind; the sockets buffer meanwhile.
            Err(RingError::Timeout) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let base = slot.as_mut_ptr();
        let records = base.wrapping_add(std::mem::size_of::<BlockSlotHeader>()).cast::<DatagramRecord>();
        // The slot's datagram count is kept current after every batch, so that a receiver killed before it
        // publishes loses nothing it took from the kernel: its successor continues filling the same slot.
        let count = base.cast::<u32>();
        // SAFETY: the slot begins with a BlockSlotHeader whose first field is the u32 count; the slot is ours
        // until published, and nobody reads it before.
        let mut filled = if interrupted { (unsafe { count.read_volatile() }) as usize } else { 0 }.min(per_slot);
        if filled > 0 {
            tracing::info!(datagrams = filled, "resuming the slot the previous receiver was filling");
        }
        // SAFETY: as above.
        unsafe { count.write_volatile(filled as u32) };
        let mut first_at = Instant::now();
        loop {
            let mut got_any = false;
            for _ in 0..io.sockets.len() {
                if filled == per_slot {
                    break;
                }
                let sector = io.next_socket;
                io.next_socket = (sector + 1) % io.sockets.len();
                let n = io.recv_into(sector, base, data_off, stride, filled, (per_slot - filled).min(TURN))?;
                if n == 0 {
                    continue;
                }
                if filled == 0 {
                    first_at = Instant::now();
                }
                got_any = true;
                let now = pipeline::now_ns();
                for i in 0..n {
                    let h = &io.batch.hdrs[i];
                    let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
                    let rec = DatagramRecord {
                        len: h.msg_len,
                        sector: sector as u16,
                        flags: if truncated { DATAGRAM_TRUNCATED } else { 0 },
                        recv_ns: kernel_time(&h.msg_hdr).unwrap_or(now),
                    };
                    if truncated {
                        area.receiver.truncated.fetch_add(1, Ordering::Relaxed);
                    }
                    // SAFETY: `filled + i < per_slot`, and the slot holds a BlockSlotHeader followed by
                    // per_slot records (datagram_offset was computed to leave room for them); the slot is ours
                    // until published.
                    unsafe { records.add(filled + i).write(rec) };
                    area.receiver.bytes.fetch_add(u64::from(h.msg_len), Ordering::Relaxed);
                }
                area.receiver.datagrams.fetch_add(n as u64, Ordering::Relaxed);
                area.receiver.batches.fetch_add(1, Ordering::Relaxed);
                filled += n;
                // SAFETY: as above; volatile so that the count is in memory before the next system call.
                unsafe { count.write_volatile(filled as u32) };
            }
            let age = first_at.elapsed();
            if filled == per_slot || (!got_any && filled > 0 && age >= FLUSH_AFTER) {
                break;
            }
            if !got_any && filled > 0 {
                io.wait_readable(FLUSH_AFTER - age);
                continue;
            }
            if !got_any {
                // Nothing anywhere: sleep in poll until a socket is readable (never spin).
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                if last_check.elapsed() >= IDLE_POLL {
                    *last_check = Instant::now();
                    if should_stop() {
                        self.stopping = true;
                        return Ok(());
                    }
                    io.read_drops();
                    area.receiver.kernel_drops.store(io.drops.iter().map(|&d| u64::from(d)).sum(), Ordering::Relaxed);
                }
                io.wait_readable(IDLE_POLL);
            }
        }
        let header = BlockSlotHeader { count: filled as u32, ..Default::default() };
        // SAFETY: the slot begins with a BlockSlotHeader; it is ours until published.
        unsafe { base.cast::<BlockSlotHeader>().write(header) };
        slot.publish();
        area.receiver.slots.fetch_add(1, Ordering::Relaxed);
        area.stage(Stage::Receiver).heartbeat.fetch_add(1, Ordering::Relaxed);
        if io.drops_read.elapsed() >= IDLE_POLL {
            io.read_drops();
            area.receiver.kernel_drops.store(io.drops.iter().map(|&d| u64::from(d)).sum(), Ordering::Relaxed);
        }
        Ok(())
    }

    /// The sockets, in sector order.
    pub fn sockets(&self) -> impl Iterator<Item = std::os::fd::BorrowedFd<'_>> {
        self.io.sockets.iter().map(|s| s.as_fd())
    }
}

/// The kernel's receive time of a message (SCM_TIMESTAMPNS), ns since the Unix epoch.
fn kernel_time(h: &libc::msghdr) -> Option<u64> {
    // SAFETY: CMSG_FIRSTHDR/NXTHDR walk the control buffer the kernel filled, within msg_controllen; the
    // timespec is read unaligned from inside it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

impl Io {
    /// One non-blocking `recvmmsg` on `sector` into datagram buffers `first .. first + max` of the slot at `base`.
    fn recv_into(
        &mut self,
        sector: usize,
        base: *mut u8,
        data_off: usize,
        stride: usize,
        first: usize,
        max: usize,
    ) -> Result<usize, ReceiverError> {
        for i in 0..max {
            self.batch.iovs[i] =
                libc::iovec { iov_base: base.wrapping_add(data_off + (first + i) * stride).cast(), iov_len: stride };
            let h = &mut self.batch.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = std::ptr::null_mut();
            h.msg_hdr.msg_namelen = 0;
            h.msg_hdr.msg_iov = &mut self.batch.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.batch.cmsg[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = std::mem::size_of::<[u64; 8]>();
            h.msg_hdr.msg_flags = 0;
        }
        loop {
            // SAFETY: hdrs[..max] point at iovecs that point into the claimed slot's datagram buffers (each
            // `stride` bytes, all inside the slot: datagram_offset + per_slot * stride <= slot size by layout) and
            // at our own control buffers; all outlive the call.
            let n = unsafe {
                libc::recvmmsg(
                    self.sockets[sector].as_raw_fd(),
                    self.batch.hdrs.as_mut_ptr(),
                    max as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(0),
                Some(libc::EINTR) => continue,
                _ => return Err(ReceiverError::Recv { sector, source: e }),
            }
        }
    }

    /// Reads each socket's kernel drop counter (`SO_MEMINFO`, entry `SK_MEMINFO_DROPS`).
    fn read_drops(&mut self) {
        const SK_MEMINFO_DROPS: usize = 8;
        for (i, s) in self.sockets.iter().enumerate() {
            let mut info = [0u32; 9];
            let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
            // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that large.
            let r = unsafe {
                libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MEMINFO, info.as_mut_ptr().cast(), &mut len)
            };
            if r == 0 && len as usize > SK_MEMINFO_DROPS * 4 {
                self.drops[i] = info[SK_MEMINFO_DROPS];
            }
        }
        self.drops_read = Instant::now();
    }

    /// Sleeps until a socket is readable or `timeout` passes.
    fn wait_readable(&self, timeout: Duration) {
        let mut fds: Vec<_> =
            self.sockets.iter().map(|s| rustix::event::PollFd::new(s, rustix::event::PollFlags::IN)).collect();
        let ts = rustix::event::Timespec { tv_sec: 0, tv_nsec: timeout.as_nanos().clamp(1, 999_999_999) as i64 };
        let _ = rustix::event::poll(&mut fds, Some(&ts));
    }
}
