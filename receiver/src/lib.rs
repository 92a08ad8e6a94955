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
    self, BLOCK_RING, BlockSlotHeader, DATAGRAM_TRUNCATED, DatagramRecord, PipelineArea, PipelineParams, RECEIVE_BATCH,
    ReceiveJournal, Stage,
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

/// How often the receiver looks up from its sockets when they are idle (each time it beats, so the assembler
/// knows it is alive; see the assembler's `RECEIVER_SILENT`). Every wake costs CPU on an idle machine.
pub const IDLE_POLL: Duration = Duration::from_millis(100);

/// Most datagrams taken from one socket before the next socket's turn (half a sector's share of an IS frame).
/// Sockets are served strictly in turn, so that under backlog no sector falls behind the others by more than a
/// turn: the assembler holds only a few frames in flight.
pub const TURN: usize = RECEIVE_BATCH;

/// A partly filled slot is published once its first datagram is this old (and the sockets are empty). Slots
/// are filled rather than published at every lull so that the block ring's capacity, counted in datagrams,
/// does not shrink with the traffic's rate: a ring of N slots always spans at least N × 5 ms of stream (longer
/// than the assembler's frame timeout), or N full slots. At the K2's rate a 64-datagram slot fills in 0.6 ms,
/// so this adds latency only to slow streams.
pub const FLUSH_AFTER: Duration = Duration::from_millis(5);

/// Fault injection for tests: when set to N, the receiver kills itself with SIGKILL right after its N-th
/// `recvmmsg` call that returned datagrams, before recording them: the instant of a crash that only the
/// [`ReceiveJournal`] survives. Only the first three receivers of a pipeline do, so that the pipeline goes on.
pub const FAULT_KILL_AFTER_CALLS: &str = "RINGDAQ_FAULT_RECEIVER_KILL_AFTER_CALLS";

/// Per-message scatter state. The message headers and control buffers the kernel fills are the region's
/// [`ReceiveJournal`], so that they outlive this process; only the iovecs are private.
struct Batch<'r> {
    journal: &'r ReceiveJournal,
    iovs: Vec<libc::iovec>,
}

// The journal's opaque arrays must hold the kernel's structures exactly.
const _: () = {
    assert!(std::mem::size_of::<libc::mmsghdr>() == 64);
    assert!(std::mem::align_of::<libc::mmsghdr>() <= 8);
};

impl Batch<'_> {
    fn hdrs(&self) -> *mut libc::mmsghdr {
        self.journal.msgs.get().cast()
    }

    /// Message `i` of the last call (`i < RECEIVE_BATCH`).
    fn message(&self, i: usize) -> libc::mmsghdr {
        assert!(i < RECEIVE_BATCH);
        // SAFETY: the journal's message array holds RECEIVE_BATCH mmsghdr (size and alignment asserted above);
        // only this process writes it, and the kernel is not writing it now (no call is in progress). Read as a
        // copy.
        unsafe { self.hdrs().add(i).read() }
    }

    /// The kernel's receive time of message `i`, read from its control buffer in the journal.
    fn receive_time(&self, i: usize) -> Option<u64> {
        let mut h = self.message(i).msg_hdr;
        // The pointer stored may be a predecessor's: point it at the buffer as this process maps it.
        h.msg_control = self.journal.control.get().cast::<[u64; 8]>().wrapping_add(i).cast();
        h.msg_controllen = h.msg_controllen.min(std::mem::size_of::<[u64; 8]>());
        kernel_time(&h)
    }
}

/// The sockets and the per-call `recvmmsg` state.
struct Io<'r> {
    sockets: Vec<OwnedFd>,
    batch: Batch<'r>,
    /// Latest SK_MEMINFO_DROPS per socket (cumulative drops of that socket).
    drops: Vec<u32>,
    /// When the drop counters were last read.
    drops_read: Instant,
    next_socket: usize,
    /// One `pollfd` per socket, made once: waiting allocates nothing.
    pollfds: Vec<libc::pollfd>,
    /// Bit `i`: socket `i` may hold datagrams. Cleared when a call drains it, set again by `poll`; so that a
    /// round over the sockets makes no system call (and arms no journal) for a socket known to be empty. The
    /// sender fills the sectors' sockets one after another, so most of them are empty at any moment.
    maybe_readable: u32,
}

/// The receive loop over one region and its sockets.
pub struct Receiver<'r> {
    producer: Producer<'r>,
    area: &'r PipelineArea,
    params: PipelineParams,
    io: Io<'r>,
    /// A stop was asked for (latched: the request is consumed when read).
    stopping: bool,
    /// [`FAULT_KILL_AFTER_CALLS`]: calls with data left before this process kills itself.
    fault_countdown: Option<u64>,
    /// The acquisition id last put in the log span.
    logged_acquisition: u64,
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
        let producer = region.ring(BLOCK_RING)?.producer()?;
        let batch = Batch {
            journal: &area.receive_journal,
            iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; RECEIVE_BATCH],
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
        let pollfds =
            sockets.iter().map(|s| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
        Ok(Self {
            producer,
            area,
            params,
            io: Io {
                sockets,
                batch,
                drops,
                drops_read: Instant::now(),
                next_socket: 0,
                pollfds,
                maybe_readable: u32::MAX,
            },
            stopping: false,
            fault_countdown: std::env::var(FAULT_KILL_AFTER_CALLS)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|_| area.stage(Stage::Receiver).starts.load(Ordering::Relaxed) <= 3),
            logged_acquisition: 0,
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
            // The assembler is a full ring behind; the sockets buffer meanwhile. Waiting is not a hang of ours.
            Err(RingError::Timeout) => {
                area.stage(Stage::Receiver).beat();
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let base = slot.as_mut_ptr();
        let records = base.wrapping_add(std::mem::size_of::<BlockSlotHeader>()).cast::<DatagramRecord>();
        // The slot's datagram count is kept current after every batch, so that a receiver killed before it
        // publishes loses nothing it took from the kernel: its successor continues filling the same slot.
        let header = base.cast::<BlockSlotHeader>();
        let seq = slot.seq();
        // SAFETY: the slot begins with a BlockSlotHeader (64-byte aligned: slots are page aligned); it is ours
        // until published, and nobody reads it before. Fields are accessed through raw pointers, volatile, so that
        // each store is in memory before the next system call.
        let (count, slot_seq) = unsafe { (&raw mut (*header).count, &raw mut (*header).seq) };
        // The count is the predecessor's only if it had stamped the slot with this sequence (it stores count 0
        // before the sequence, so a matching sequence never comes with a previous lap's count).
        // SAFETY: as above.
        let mut filled = if interrupted && unsafe { slot_seq.read_volatile() } == seq {
            // SAFETY: as above.
            (unsafe { count.read_volatile() }) as usize
        } else {
            0
        }
        .min(per_slot);
        if interrupted {
            let adopted = io.adopt_interrupted_call(area, seq, filled, records);
            if adopted > 0 {
                tracing::info!(datagrams = adopted, "adopted the datagrams of the previous receiver's last call");
            }
            filled += adopted;
        }
        if filled > 0 {
            tracing::info!(datagrams = filled, "resuming the slot the previous receiver was filling");
        }
        // SAFETY: as above.
        unsafe {
            count.write_volatile(filled as u32);
            slot_seq.write_volatile(seq);
        }
        io.batch.journal.armed.store(0, Ordering::Release);
        let mut first_at = Instant::now();
        let all = (1u32 << io.sockets.len()) - 1;
        loop {
            let mut got_any = false;
            if io.maybe_readable & all != all {
                // Some socket was drained: ask the kernel which have data now (one call, not one per socket), so
                // that a socket drained once is not passed over while the others stay busy.
                io.wait_readable(Duration::ZERO);
            }
            for _ in 0..io.sockets.len() {
                if filled == per_slot {
                    break;
                }
                let sector = io.next_socket;
                io.next_socket = (sector + 1) % io.sockets.len();
                if io.maybe_readable & (1 << sector) == 0 {
                    continue;
                }
                let max = (per_slot - filled).min(TURN);
                let n = io.recv_into(sector, seq, base, data_off, stride, filled, max)?;
                if n < max {
                    // Drained (a short batch, or none): skip it until poll says otherwise.
                    io.maybe_readable &= !(1 << sector);
                }
                if n == 0 {
                    io.batch.journal.armed.store(0, Ordering::Release);
                    continue;
                }
                if filled == 0 {
                    first_at = Instant::now();
                }
                got_any = true;
                if let Some(k) = self.fault_countdown.as_mut() {
                    *k = k.saturating_sub(1);
                    if *k == 0 {
                        tracing::warn!(datagrams = n, "fault injection: killing the receiver before it records them");
                        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
                    }
                }
                io.record(area, records, filled, sector, n);
                filled += n;
                // SAFETY: as above; volatile so that the count is in memory before the journal is cleared.
                unsafe { count.write_volatile(filled as u32) };
                io.batch.journal.armed.store(0, Ordering::Release);
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
                    // Drops need traffic: idle, once a second is enough.
                    if io.drops_read.elapsed() >= Duration::from_secs(1) {
                        io.read_drops();
                        area.receiver
                            .kernel_drops
                            .store(io.drops.iter().map(|&d| u64::from(d)).sum(), Ordering::Relaxed);
                    }
                    let active = area.active_acquisition.load(Ordering::Relaxed);
                    if active != 0 && active != self.logged_acquisition {
                        self.logged_acquisition = active;
                        shm_protocol::logging::set_acquisition(active);
                    }
                }
                // Beat while idle too: the assembler tells a silent stream from a stopped receiver by it.
                area.stage(Stage::Receiver).beat();
                io.wait_readable(IDLE_POLL);
            }
        }
        // SAFETY: the slot begins with a BlockSlotHeader; it is ours until published.
        unsafe { header.write(BlockSlotHeader { count: filled as u32, seq, ..Default::default() }) };
        slot.publish();
        area.receiver.slots.fetch_add(1, Ordering::Relaxed);
        area.stage(Stage::Receiver).beat();
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

impl Io<'_> {
    /// One non-blocking `recvmmsg` on `sector` into datagram buffers `first .. first + max` of the slot at `base`
    /// (block-ring sequence `seq`), journalled: on return the journal is still armed, and the caller clears it
    /// once it has recorded the datagrams and the slot's new count.
    #[allow(clippy::too_many_arguments)]
    fn recv_into(
        &mut self,
        sector: usize,
        seq: u64,
        base: *mut u8,
        data_off: usize,
        stride: usize,
        first: usize,
        max: usize,
    ) -> Result<usize, ReceiverError> {
        let max = max.min(RECEIVE_BATCH);
        let hdrs = self.batch.hdrs();
        let control = self.batch.journal.control.get().cast::<[u64; 8]>();
        for i in 0..max {
            self.batch.iovs[i] =
                libc::iovec { iov_base: base.wrapping_add(data_off + (first + i) * stride).cast(), iov_len: stride };
            // SAFETY: `i < RECEIVE_BATCH`, the size of the journal's message array (layout asserted above); only
            // this process writes it, and no call is in progress.
            let h = unsafe { &mut *hdrs.add(i) };
            // No datagram is this long: a length the kernel did not overwrite means "not received".
            h.msg_len = u32::MAX;
            h.msg_hdr.msg_name = std::ptr::null_mut();
            h.msg_hdr.msg_namelen = 0;
            h.msg_hdr.msg_iov = &mut self.batch.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = control.wrapping_add(i).cast();
            h.msg_hdr.msg_controllen = std::mem::size_of::<[u64; 8]>();
            h.msg_hdr.msg_flags = 0;
        }
        let j = self.batch.journal;
        j.seq.store(seq, Ordering::Relaxed);
        j.base.store(first as u32, Ordering::Relaxed);
        j.sector.store(sector as u32, Ordering::Relaxed);
        j.armed.store(max as u32, Ordering::Release);
        loop {
            // SAFETY: hdrs[..max] point at iovecs that point into the claimed slot's datagram buffers (each
            // `stride` bytes, all inside the slot: datagram_offset + per_slot * stride <= slot size by layout) and
            // at the journal's control buffers; all outlive the call.
            let n = unsafe {
                libc::recvmmsg(
                    self.sockets[sector].as_raw_fd(),
                    hdrs,
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

    /// Writes the records of messages `0..n` of the last call, which landed at datagram indices `first..` of the
    /// slot whose records start at `records`.
    fn record(&self, area: &PipelineArea, records: *mut DatagramRecord, first: usize, sector: usize, n: usize) {
        let now = pipeline::now_ns();
        let mut bytes = 0;
        for i in 0..n {
            let h = self.batch.message(i);
            let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let rec = DatagramRecord {
                len: h.msg_len,
                sector: sector as u16,
                flags: if truncated { DATAGRAM_TRUNCATED } else { 0 },
                recv_ns: self.batch.receive_time(i).unwrap_or(now),
            };
            if truncated {
                area.receiver.truncated.fetch_add(1, Ordering::Relaxed);
            }
            // SAFETY: the caller's `first + n <= per_slot`, and the slot holds a BlockSlotHeader followed by
            // per_slot records (datagram_offset was computed to leave room for them); the slot is ours until
            // published.
            unsafe { records.add(first + i).write(rec) };
            bytes += u64::from(h.msg_len);
        }
        area.receiver.bytes.fetch_add(bytes, Ordering::Relaxed);
        area.receiver.datagrams.fetch_add(n as u64, Ordering::Relaxed);
        area.receiver.batches.fetch_add(1, Ordering::Relaxed);
    }

    /// After a restart: the datagrams the previous receiver's last call took from the kernel but did not live to
    /// record, if that call was into slot `seq` at datagram index `filled`. Records them and returns how many.
    fn adopt_interrupted_call(
        &self,
        area: &PipelineArea,
        seq: u64,
        filled: usize,
        records: *mut DatagramRecord,
    ) -> usize {
        let j = self.batch.journal;
        let armed = (j.armed.load(Ordering::Acquire) as usize).min(RECEIVE_BATCH);
        if armed == 0 || j.seq.load(Ordering::Relaxed) != seq || j.base.load(Ordering::Relaxed) as usize != filled {
            return 0;
        }
        let per_slot = area.params.datagrams_per_slot as usize;
        // The kernel fills messages in order and stores each length as it goes.
        let n = (0..armed.min(per_slot.saturating_sub(filled)))
            .take_while(|&i| self.batch.message(i).msg_len != u32::MAX)
            .count();
        let sector = j.sector.load(Ordering::Relaxed) as usize;
        if n > 0 && sector < self.sockets.len() {
            self.record(area, records, filled, sector, n);
            return n;
        }
        0
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

    /// Sleeps until a socket is readable or `timeout` passes (zero: just looks), and marks the readable ones.
    fn wait_readable(&mut self, timeout: Duration) {
        let ts = libc::timespec { tv_sec: 0, tv_nsec: timeout.as_nanos().min(999_999_999) as libc::c_long };
        // SAFETY: `pollfds` holds `len` initialised pollfd entries whose fds (our sockets) stay open for the call;
        // the kernel writes only their `revents`.
        let r = unsafe {
            libc::ppoll(self.pollfds.as_mut_ptr(), self.pollfds.len() as libc::nfds_t, &ts, std::ptr::null())
        };
        if r < 0 {
            // Interrupted (or failed): look at every socket again rather than trust stale results.
            self.maybe_readable = u32::MAX;
            return;
        }
        for (i, p) in self.pollfds.iter().enumerate() {
            // Errors too: the next call reports them.
            if p.revents != 0 {
                self.maybe_readable |= 1 << i;
            }
        }
    }
}
