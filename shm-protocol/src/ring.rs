//! A ring of fixed slots in the region, used strictly in order, with one producer and cursor-based consumers.
//!
//! Sequence `s` lives in slot `s % slot_count`. The producer may write sequence `p` only when every *gating*
//! consumer's cursor is above `p - slot_count`. Consumers read sequences below `published` and commit by
//! advancing their cursor. *Lossy* consumers never hold the producer back: each slot carries a stamp (a seqlock
//! word) from which they learn that a slot was overwritten under them, and how many sequences they missed.
//!
//! There are no locks: progress is 64-bit cursors, each on its own cache line, so a process that dies anywhere
//! leaves nothing held. Waiting sleeps on a futex; the waker makes the system call only when a sleeper has
//! announced itself.

use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::Duration;

use crate::layout::{
    CACHE_LINE, ConsumerLine, ConsumerMode, RingControl, RingDesc, RingKind, SlotStamp, stamp_writing, stamp_written,
};
use crate::wait::{self, Deadline, Wake};

/// Why a ring operation did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The timeout elapsed before a slot became free / available.
    #[error("timed out")]
    Timeout,
    /// A lossy consumer fell behind: `missed` sequences were overwritten before it could read them.
    #[error("fell behind: {missed} slots overwritten before they were read")]
    Overrun {
        /// How many sequences were skipped.
        missed: u64,
    },
    /// No consumer cursor with that index.
    #[error("no consumer cursor {index} (ring has {max})")]
    NoSuchConsumer {
        /// Requested index.
        index: usize,
        /// Cursors in the ring.
        max: usize,
    },
    /// The consumer cursor is not active (never registered, or released).
    #[error("consumer cursor {0} is not active")]
    Inactive(usize),
    /// Every consumer cursor is in use.
    #[error("all consumer cursors are in use")]
    NoFreeConsumer,
    /// The region is mapped read-only; this operation writes.
    #[error("the region is mapped read-only")]
    ReadOnly,
    /// A read past the end of a slot.
    #[error("{len} bytes at offset {offset} run past the end of a {slot}-byte slot")]
    OutOfSlot {
        /// Offset asked for.
        offset: usize,
        /// Bytes asked for.
        len: usize,
        /// The slot's size.
        slot: usize,
    },
}

/// How a process maps the region, and so what it may do with a ring in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Pipeline stages: may write slots and cursors.
    ReadWrite,
    /// External consumers: the mapping is not writable at all.
    ReadOnly,
}

/// Where a newly registered consumer starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// At the next sequence to be published: sees only what comes after registration.
    Next,
    /// At an explicit sequence (for stages whose position is known, e.g. a fresh ring: 0).
    Seq(u64),
}

/// A view of one ring in a mapped region. Cheap to copy; borrows the region.
#[derive(Clone, Copy)]
pub struct Ring<'r> {
    base: *mut u8,
    desc: RingDesc,
    access: Access,
    _region: std::marker::PhantomData<&'r ()>,
}

// SAFETY: a `Ring` is a view of process-shared memory that is only mutated through atomics or under the ring
// protocol (one producer, each cursor owned by one consumer); the borrow of the region keeps the mapping alive.
unsafe impl Send for Ring<'_> {}
// SAFETY: as above.
unsafe impl Sync for Ring<'_> {}

impl std::fmt::Debug for Ring<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("desc", &self.desc).field("published", &self.published()).finish()
    }
}

impl<'r> Ring<'r> {
    /// Builds a view from a mapping base and a validated descriptor.
    ///
    /// # Safety
    /// `base` must be a mapping of the whole region that outlives `'r`, and every offset in `desc` must have been
    /// validated to lie inside it with cache-line (control, cursors, stamps) and page (slots) alignment.
    pub(crate) unsafe fn from_raw(base: *mut u8, desc: RingDesc, access: Access) -> Self {
        Self { base, desc, access, _region: std::marker::PhantomData }
    }

    /// The ring's descriptor.
    pub fn desc(&self) -> &RingDesc {
        &self.desc
    }

    /// What the ring carries, if it is a known kind.
    pub fn kind(&self) -> Option<RingKind> {
        RingKind::from_raw(self.desc.kind)
    }

    /// Number of slots.
    pub fn slot_count(&self) -> u64 {
        u64::from(self.desc.slot_count)
    }

    /// Bytes per slot.
    pub fn slot_size(&self) -> usize {
        self.desc.slot_size as usize
    }

    /// Number of consumer cursors.
    pub fn max_consumers(&self) -> usize {
        self.desc.max_consumers as usize
    }

    fn control(&self) -> &'r RingControl {
        // SAFETY: control_offset is in bounds and cache-line aligned (see `from_raw`); RingControl is all atomics,
        // valid for any bit pattern, and shared mutation goes through them only.
        unsafe { &*self.base.add(self.desc.control_offset as usize).cast::<RingControl>() }
    }

    /// Consumer line `i`, unchecked index.
    fn line(&self, i: usize) -> &'r ConsumerLine {
        debug_assert!(i < self.max_consumers());
        // SAFETY: i < max_consumers, so the line lies in the validated consumers array; all atomics.
        unsafe { &*self.base.add(self.desc.consumers_offset as usize + i * CACHE_LINE).cast::<ConsumerLine>() }
    }

    fn stamp(&self, seq: u64) -> &'r AtomicU64 {
        let i = (seq % self.slot_count()) as usize;
        // SAFETY: i < slot_count, so the stamp lies in the validated stamps array; an atomic.
        let s = unsafe { &*self.base.add(self.desc.stamps_offset as usize + i * CACHE_LINE).cast::<SlotStamp>() };
        &s.stamp
    }

    /// Pointer to the first byte of the slot that holds `seq`.
    pub fn slot_ptr(&self, seq: u64) -> *mut u8 {
        let i = (seq % self.slot_count()) as usize;
        // SAFETY: i < slot_count; slots_offset + slot_count * slot_size was validated to lie inside the mapping.
        unsafe { self.base.add(self.desc.slots_offset as usize + i * self.slot_size()) }
    }

    /// Number of sequences published so far (every sequence below is readable).
    pub fn published(&self) -> u64 {
        self.control().producer.published.load(Ordering::Acquire)
    }

    /// The producer's attach count (restarts show as increments).
    pub fn producer_generation(&self) -> u32 {
        self.control().producer.producer_generation.load(Ordering::Relaxed)
    }

    /// Pid of the process that attached as producer last (0: none yet).
    pub fn producer_pid(&self) -> u32 {
        self.control().producer.producer_pid.load(Ordering::Relaxed)
    }

    /// Whether the slot of `seq` is being written as `seq` now (claimed, not yet published; or its producer died
    /// while filling it).
    pub fn is_being_written(&self, seq: u64) -> bool {
        self.stamp(seq).load(Ordering::Acquire) == stamp_writing(seq)
    }

    /// Pid of the process that attached to consumer line `index` last.
    pub fn consumer_pid(&self, index: usize) -> Result<u32, RingError> {
        self.check_index(index)?;
        Ok(self.line(index).owner_pid.load(Ordering::Relaxed))
    }

    /// Committed cursor, mode and attach count of consumer `index`.
    pub fn consumer_state(&self, index: usize) -> Result<(u64, ConsumerMode, u32), RingError> {
        self.check_index(index)?;
        let l = self.line(index);
        Ok((
            l.cursor.load(Ordering::Acquire),
            ConsumerMode::from_raw(l.mode.load(Ordering::Acquire)),
            l.generation.load(Ordering::Relaxed),
        ))
    }

    fn check_index(&self, index: usize) -> Result<(), RingError> {
        if index >= self.max_consumers() {
            return Err(RingError::NoSuchConsumer { index, max: self.max_consumers() });
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<(), RingError> {
        match self.access {
            Access::ReadWrite => Ok(()),
            Access::ReadOnly => Err(RingError::ReadOnly),
        }
    }

    /// Lowest committed cursor over the gating consumers, or `None` if there are none.
    pub fn min_gating_cursor(&self) -> Option<u64> {
        (0..self.max_consumers())
            .map(|i| self.line(i))
            .filter(|l| l.mode.load(Ordering::Acquire) == ConsumerMode::Gating as u32)
            .map(|l| l.cursor.load(Ordering::Acquire))
            .min()
    }

    /// Activates consumer cursor `index` in `mode`, positioned at `start`. Used by whoever assigns cursors (the
    /// supervisor) before the consumer process attaches with [`Ring::consumer`].
    pub fn activate_consumer(&self, index: usize, mode: ConsumerMode, start: StartAt) -> Result<(), RingError> {
        self.check_writable()?;
        self.check_index(index)?;
        let l = self.line(index);
        // Position first, then mode: a producer that sees the mode also sees a sane cursor.
        let pos = match start {
            StartAt::Next => self.published(),
            StartAt::Seq(s) => s,
        };
        l.cursor.store(pos, Ordering::Release);
        l.wake_word.store(pos as u32, Ordering::Release);
        self.control().sleep.consumer_sleeping[index].store(0, Ordering::Relaxed);
        l.mode.store(mode as u32, Ordering::Release);
        self.wake_producer();
        Ok(())
    }

    /// Finds a free consumer cursor, activates it in `mode` at the next sequence and returns its index.
    pub fn register_consumer(&self, mode: ConsumerMode) -> Result<usize, RingError> {
        self.check_writable()?;
        for i in 0..self.max_consumers() {
            let l = self.line(i);
            // Claim with a value the producer treats as "not gating" while the cursor is positioned.
            const CLAIMING: u32 = 0xFFFF_0000;
            if l.mode.compare_exchange(ConsumerMode::Free as u32, CLAIMING, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            {
                self.activate_consumer(i, mode, StartAt::Next)?;
                return Ok(i);
            }
        }
        Err(RingError::NoFreeConsumer)
    }

    /// Releases consumer cursor `index`: a gating consumer no longer holds the producer back, and the free line
    /// no longer asks for wake-ups ([`Ring::set_wake_always`]).
    pub fn release_consumer(&self, index: usize) -> Result<(), RingError> {
        self.check_writable()?;
        self.check_index(index)?;
        self.control().sleep.consumer_sleeping[index].store(0, Ordering::SeqCst);
        self.line(index).mode.store(ConsumerMode::Free as u32, Ordering::Release);
        self.wake_producer();
        Ok(())
    }

    /// Marks consumer `index` as always asleep (`on`), so that the producer wakes the ring's sleepers after every
    /// publish, or clears the mark. For [`Reader`]s, which cannot announce their sleep in a read-only mapping:
    /// whoever registers one for them (the supervisor) sets this. It costs the producer one `futex` wake system
    /// call per publish while set.
    pub fn set_wake_always(&self, index: usize, on: bool) -> Result<(), RingError> {
        self.check_writable()?;
        self.check_index(index)?;
        self.control().sleep.consumer_sleeping[index].store(u8::from(on), Ordering::SeqCst);
        Ok(())
    }

    /// Whether the slot of `seq` holds `seq`, published and not (being) overwritten: what a reader checks after
    /// using a slot it does not gate.
    pub fn holds(&self, seq: u64) -> bool {
        fence(Ordering::Acquire);
        self.stamp(seq).load(Ordering::Relaxed) == stamp_written(seq)
    }

    /// A [`Reader`] positioned at `next`: reads without writing anything to the region. `gated`: a gate cursor
    /// holds the producer back for it (see [`Reader`]).
    pub fn reader(&self, next: u64, gated: bool) -> Reader<'r> {
        Reader { ring: *self, next, gated }
    }

    /// Attaches this process as the ring's (single) producer. The producer resumes at `published`.
    pub fn producer(&self) -> Result<Producer<'r>, RingError> {
        self.check_writable()?;
        let p = &self.control().producer;
        // A producer that died asleep left its flag set; clear it (there is one producer per ring).
        self.control().sleep.producer_sleeping.store(0, Ordering::Relaxed);
        p.producer_pid.store(std::process::id(), Ordering::Relaxed);
        p.producer_generation.fetch_add(1, Ordering::Relaxed);
        let next = p.published.load(Ordering::Acquire);
        // The previous producer died while filling the next slot: its bytes are still there to resume from.
        let interrupted = self.stamp(next).load(Ordering::Acquire) == stamp_writing(next);
        Ok(Producer { ring: *self, next, gate_limit: next, interrupted })
    }

    /// Attaches this process to the active consumer cursor `index`; it resumes at the committed cursor.
    pub fn consumer(&self, index: usize) -> Result<Consumer<'r>, RingError> {
        self.check_writable()?;
        self.check_index(index)?;
        let l = self.line(index);
        let mode = ConsumerMode::from_raw(l.mode.load(Ordering::Acquire));
        if mode == ConsumerMode::Free {
            return Err(RingError::Inactive(index));
        }
        // A consumer that died asleep left its flag set; clear it (one process per cursor).
        self.control().sleep.consumer_sleeping[index].store(0, Ordering::Relaxed);
        l.owner_pid.store(std::process::id(), Ordering::Relaxed);
        l.generation.fetch_add(1, Ordering::Relaxed);
        let next = l.cursor.load(Ordering::Acquire);
        Ok(Consumer { ring: *self, index, mode, next, seen_published: 0 })
    }

    /// Wakes every consumer that announced it sleeps. Called after publishing.
    ///
    /// Waking is a Dekker handshake, every access SeqCst: the waker swaps the wake word, then reads the sleep
    /// flags; a sleeper sets its flag, then re-reads the wake word (and the kernel compares it once more). Either
    /// the sleeper sees the new word and does not sleep, or the waker sees the flag and wakes it. The locked swap
    /// orders as a full barrier does, for less than a separate fence.
    fn wake_consumers(&self) {
        let flags = &self.control().sleep.consumer_sleeping[..self.max_consumers()];
        if flags.iter().any(|f| f.load(Ordering::SeqCst) != 0) {
            wait::wake_all(&self.control().producer.wake_word);
        }
    }

    /// Wakes the producer if it sleeps on a gate. Called after a consumer commits (same handshake as
    /// [`Ring::wake_consumers`], on the consumer's wake word).
    fn wake_producer_from(&self, line: &ConsumerLine) {
        if self.control().sleep.producer_sleeping.load(Ordering::SeqCst) != 0 {
            wait::wake_all(&line.wake_word);
        }
    }

    /// Wakes the producer from whatever gate it sleeps on (used when gates change).
    fn wake_producer(&self) {
        fence(Ordering::SeqCst);
        if self.control().sleep.producer_sleeping.load(Ordering::Relaxed) != 0 {
            for i in 0..self.max_consumers() {
                wait::wake_all(&self.line(i).wake_word);
            }
        }
    }
}

/// Iterations of a CPU pause before a waiter goes to sleep.
///
/// A peer that is actively producing (or consuming) usually moves within a microsecond; checking for that
/// briefly saves the sleeper a futex wait and its peer the wake-up system call, which otherwise cost more than
/// the hand-off itself. Bounded (~1-2 µs), so an idle waiter still sleeps almost at once.
const SPIN: u32 = 200;

/// Spins up to [`SPIN`] pauses for `ready`; whether it became true.
fn spin_until(mut ready: impl FnMut() -> bool) -> bool {
    for _ in 0..SPIN {
        if ready() {
            return true;
        }
        std::hint::spin_loop();
    }
    ready()
}

/// The ring's single producer.
#[derive(Debug)]
pub struct Producer<'r> {
    ring: Ring<'r>,
    /// Next sequence to write (== `published` between operations).
    next: u64,
    /// Sequences below this may be written without re-reading the gating cursors.
    gate_limit: u64,
    /// A previous producer was writing slot `next` when it stopped (until taken).
    interrupted: bool,
}

/// A claimed slot: fill it through [`WriteSlot::as_mut_ptr`] / [`WriteSlot::bytes_mut`], then [`WriteSlot::publish`].
///
/// Dropping it without publishing publishes nothing; the next claim returns the same sequence again.
#[derive(Debug)]
pub struct WriteSlot<'p, 'r> {
    producer: &'p mut Producer<'r>,
    seq: u64,
}

impl<'r> Producer<'r> {
    /// The ring this producer writes.
    pub fn ring(&self) -> &Ring<'r> {
        &self.ring
    }

    /// The sequence the next claim will return.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Whether the previous producer of this ring died while filling the slot the next claim returns (its
    /// contents are still there). True once, until taken.
    pub fn take_interrupted(&mut self) -> bool {
        std::mem::take(&mut self.interrupted)
    }

    /// Whether sequence `self.next` may be written now (every gating consumer is within a lap).
    fn slot_free(&mut self) -> bool {
        if self.next < self.gate_limit {
            return true;
        }
        // Rescan. Without gates the limit is one lap ahead of where we are, so a gate registered later (whose
        // cursor starts at or above `published`) is seen before we could lap it.
        let base = self.ring.min_gating_cursor().map_or(self.next, |c| c.min(self.next));
        self.gate_limit = base + self.ring.slot_count();
        self.next < self.gate_limit
    }

    /// Claims the next slot if it is free now.
    pub fn try_claim(&mut self) -> Option<WriteSlot<'_, 'r>> {
        if !self.slot_free() {
            return None;
        }
        Some(self.begin_write())
    }

    /// Claims the next slot, sleeping while a gating consumer is a full ring behind; at most `timeout`.
    pub fn claim(&mut self, timeout: Option<Duration>) -> Result<WriteSlot<'_, 'r>, RingError> {
        let deadline = Deadline::after(timeout);
        if !self.slot_free() {
            spin_until(|| self.ring.min_gating_cursor().is_none_or(|c| self.next < c + self.ring.slot_count()));
        }
        while !self.slot_free() {
            let sleeping = &self.ring.control().sleep.producer_sleeping;
            // Find the gate that blocks us and sleep on its wake word.
            let Some((line, seen)) = self.blocking_gate() else {
                continue;
            };
            sleeping.store(1, Ordering::SeqCst);
            let still_blocked = line.wake_word.load(Ordering::SeqCst) == seen
                && line.cursor.load(Ordering::Acquire) + self.ring.slot_count() <= self.next
                && line.mode.load(Ordering::Acquire) == ConsumerMode::Gating as u32;
            let woke = if still_blocked {
                wait::wait_while_equal(&line.wake_word, seen, deadline.remaining())
            } else {
                Wake::Changed
            };
            sleeping.store(0, Ordering::Relaxed);
            if woke == Wake::TimedOut || deadline.expired() {
                if self.slot_free() {
                    break;
                }
                return Err(RingError::Timeout);
            }
        }
        Ok(self.begin_write())
    }

    /// The gating consumer line that is a full lap behind, with its wake word as read before its cursor.
    fn blocking_gate(&self) -> Option<(&'r ConsumerLine, u32)> {
        (0..self.ring.max_consumers()).map(|i| self.ring.line(i)).find_map(|l| {
            let w = l.wake_word.load(Ordering::Acquire);
            let gating = l.mode.load(Ordering::Acquire) == ConsumerMode::Gating as u32;
            (gating && l.cursor.load(Ordering::Acquire) + self.ring.slot_count() <= self.next).then_some((l, w))
        })
    }

    fn begin_write(&mut self) -> WriteSlot<'_, 'r> {
        let seq = self.next;
        // Seqlock write side: mark the slot as being rewritten before touching its bytes.
        self.ring.stamp(seq).store(stamp_writing(seq), Ordering::Relaxed);
        fence(Ordering::Release);
        WriteSlot { producer: self, seq }
    }
}

impl WriteSlot<'_, '_> {
    /// The sequence this slot will publish.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Start of the slot's bytes (`slot_size` long).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.producer.ring.slot_ptr(self.seq)
    }

    /// Length of the slot in bytes.
    pub fn len(&self) -> usize {
        self.producer.ring.slot_size()
    }

    /// Whether the slot has no bytes (never: slots are at least a page).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slot's bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len();
        // SAFETY: the slot lies in the mapping; gating consumers have all passed this sequence's previous lap
        // (checked by the claim), so no gating reader reads these bytes while we hold them. Lossy readers may
        // read concurrently; they only copy bytes out and re-check the stamp, never trusting torn data.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), len) }
    }

    /// Makes the slot visible to consumers and wakes those that sleep.
    pub fn publish(self) {
        let p = self.producer;
        let seq = self.seq;
        p.ring.stamp(seq).store(stamp_written(seq), Ordering::Release);
        let ctl = &p.ring.control().producer;
        ctl.published.store(seq + 1, Ordering::Release);
        ctl.wake_word.swap((seq + 1) as u32, Ordering::SeqCst);
        p.next = seq + 1;
        p.ring.wake_consumers();
    }
}

/// A consumer cursor attached by this process.
#[derive(Debug)]
pub struct Consumer<'r> {
    ring: Ring<'r>,
    index: usize,
    mode: ConsumerMode,
    /// Next sequence to read; may run ahead of the committed cursor.
    next: u64,
    /// `published` as last read: re-read only when the consumer has caught up with it, so that a consumer that
    /// is behind does not touch the producer's line at every item.
    seen_published: u64,
}

/// A slot being read: a guard that borrows its consumer (or reader), so that nothing read through it outlives
/// the consumer's next commit, which lets the producer rewrite the slot (as Aeron's and iceoryx2's read APIs
/// tie a sample to its subscriber).
///
/// A gating consumer's slot is stable while the guard lives: [`ReadSlot::bytes`] lends it. A lossy reader's
/// slot may be rewritten under it at any time, so it is only copied out ([`ReadSlot::copy_to`], volatile reads)
/// and the copy checked with the seqlock stamp.
///
/// Bytes kept past a commit do not compile:
/// ```compile_fail
/// # use shm_protocol::{layout::*, ring::StartAt, Region};
/// # let region = Region::create(&RegionSpec { geometry: Geometry::default(),
/// #     rings: vec![RingSpec { kind: RingKind::Bytes, slot_count: 2, slot_bytes: 64, max_consumers: 1 }],
/// #     app_bytes: 0 }).unwrap();
/// # let ring = region.ring(0).unwrap();
/// # ring.activate_consumer(0, ConsumerMode::Gating, StartAt::Seq(0)).unwrap();
/// # let mut consumer = ring.consumer(0).unwrap();
/// # ring.producer().unwrap().claim(None).unwrap().publish();
/// let bytes = consumer.next(None).unwrap().bytes().unwrap();
/// consumer.commit(1); // the producer may now rewrite the slot...
/// assert_eq!(bytes[0], 0); // ...so this borrow is refused
/// ```
#[derive(Debug)]
pub struct ReadSlot<'c> {
    ring: Ring<'c>,
    seq: u64,
    /// The producer cannot rewrite the slot before the borrowed consumer commits past it.
    stable: bool,
}

impl<'r> Consumer<'r> {
    /// Index of this consumer's cursor in the ring.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The ring.
    pub fn ring(&self) -> &Ring<'r> {
        &self.ring
    }

    /// Gating or lossy.
    pub fn mode(&self) -> ConsumerMode {
        self.mode
    }

    /// Next sequence [`Consumer::try_next`] returns.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// The committed cursor.
    pub fn committed(&self) -> u64 {
        self.ring.line(self.index).cursor.load(Ordering::Acquire)
    }

    /// Moves the read position back to the committed cursor (to re-read what was not committed).
    pub fn rewind(&mut self) {
        self.next = self.committed();
    }

    /// Returns the next published slot if there is one, without sleeping.
    ///
    /// A lossy consumer that was lapped gets [`RingError::Overrun`] once, with the count it missed, and is moved
    /// to the oldest slot that cannot be being rewritten.
    pub fn try_next(&mut self) -> Result<Option<ReadSlot<'_>>, RingError> {
        Ok(self.advance()?.map(|seq| self.slot(seq)))
    }

    /// Returns the next published slot, sleeping until there is one, at most `timeout`.
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<ReadSlot<'_>, RingError> {
        let deadline = Deadline::after(timeout);
        loop {
            if let Some(seq) = self.advance()? {
                return Ok(self.slot(seq));
            }
            if self.wait_published(self.next + 1, &deadline) == Wake::TimedOut {
                let seq = self.advance()?.ok_or(RingError::Timeout)?;
                return Ok(self.slot(seq));
            }
        }
    }

    /// The guard of `seq`, borrowing this consumer.
    fn slot(&self, seq: u64) -> ReadSlot<'_> {
        ReadSlot { ring: self.ring, seq, stable: self.mode == ConsumerMode::Gating }
    }

    /// Moves past the next published sequence and returns it, if there is one (see [`Consumer::try_next`]).
    fn advance(&mut self) -> Result<Option<u64>, RingError> {
        if self.next >= self.seen_published || self.mode == ConsumerMode::Lossy {
            self.seen_published = self.ring.published();
        }
        let published = self.seen_published;
        if self.next >= published {
            return Ok(None);
        }
        if self.mode == ConsumerMode::Lossy {
            // The producer may be rewriting the slot of `published - slot_count` right now.
            let oldest = (published + 1).saturating_sub(self.ring.slot_count());
            if self.next < oldest {
                let missed = oldest - self.next;
                self.next = oldest;
                return Err(RingError::Overrun { missed });
            }
            if self.ring.stamp(self.next).load(Ordering::Acquire) != stamp_written(self.next) {
                let missed = 1;
                self.next += 1;
                return Err(RingError::Overrun { missed });
            }
        }
        let seq = self.next;
        self.next += 1;
        Ok(Some(seq))
    }

    /// Sleeps until at least `want` sequences are published or the deadline passes.
    fn wait_published(&self, want: u64, deadline: &Deadline) -> Wake {
        let ctl = &self.ring.control().producer;
        let sleeping = &self.ring.control().sleep.consumer_sleeping[self.index];
        if spin_until(|| ctl.published.load(Ordering::Acquire) >= want) {
            return Wake::Changed;
        }
        while ctl.published.load(Ordering::Acquire) < want {
            if deadline.expired() {
                return Wake::TimedOut;
            }
            let w = ctl.wake_word.load(Ordering::Acquire);
            // The sleeper's half of the handshake in `Ring::wake_consumers`.
            sleeping.store(1, Ordering::SeqCst);
            let r = if ctl.wake_word.load(Ordering::SeqCst) == w && ctl.published.load(Ordering::Acquire) < want {
                wait::wait_while_equal(&ctl.wake_word, w, deadline.remaining())
            } else {
                Wake::Changed
            };
            sleeping.store(0, Ordering::Relaxed);
            if r == Wake::TimedOut {
                return if ctl.published.load(Ordering::Acquire) >= want { Wake::Changed } else { Wake::TimedOut };
            }
        }
        Wake::Changed
    }

    /// Sleeps until something past the read position is published (or timeout); returns `published`.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<u64, RingError> {
        let deadline = Deadline::after(timeout);
        match self.wait_published(self.next + 1, &deadline) {
            Wake::Changed => Ok(self.ring.published()),
            Wake::TimedOut => Err(RingError::Timeout),
        }
    }

    /// Commits every sequence below `upto`: the producer may reuse their slots, and a restarted consumer resumes
    /// there. Committing backwards is ignored.
    pub fn commit(&mut self, upto: u64) {
        let line = self.ring.line(self.index);
        if upto <= line.cursor.load(Ordering::Relaxed) {
            return;
        }
        debug_assert!(upto <= self.ring.published());
        line.cursor.store(upto, Ordering::Release);
        line.wake_word.swap(upto as u32, Ordering::SeqCst);
        if self.next < upto {
            self.next = upto;
        }
        if self.mode == ConsumerMode::Gating {
            self.ring.wake_producer_from(line);
        }
    }

    /// Commits everything read so far.
    pub fn commit_read(&mut self) {
        self.commit(self.next);
    }
}

impl<'c> ReadSlot<'c> {
    /// The slot's sequence.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Start of the slot's bytes.
    pub fn as_ptr(&self) -> *const u8 {
        self.ring.slot_ptr(self.seq)
    }

    /// Length of the slot in bytes.
    pub fn len(&self) -> usize {
        self.ring.slot_size()
    }

    /// Whether the slot has no bytes (never).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slot's bytes, for a gating consumer: stable until it commits past this sequence, which the borrow
    /// prevents while they are used. `None` for a lossy consumer or a reader, whose slot may be rewritten while
    /// read: they copy it out with [`ReadSlot::copy_to`].
    pub fn bytes(&self) -> Option<&'c [u8]> {
        // SAFETY: the slot lies inside the mapping, which outlives 'c. A gating consumer's slot is not rewritten
        // before it commits past it (the producer checks the gate), and committing needs the consumer borrowed
        // mutably, which the returned borrow (of lifetime 'c) excludes.
        self.stable.then(|| unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len()) })
    }

    /// Copies `dst.len()` bytes from `offset` and tells whether the copy is the published content of this
    /// sequence (lossy readers: `false` means it was overwritten and the copy must be discarded). The copy reads
    /// volatile, word by word: the producer may be writing the same bytes meanwhile (a seqlock read).
    pub fn copy_to(&self, offset: usize, dst: &mut [u8]) -> Result<bool, RingError> {
        let end = offset.checked_add(dst.len()).filter(|&e| e <= self.len());
        if end.is_none() {
            return Err(RingError::OutOfSlot { offset, len: dst.len(), slot: self.len() });
        }
        // SAFETY: the range lies in the slot (checked above), which lies in the mapping; reads are volatile
        // because another process may write the slot; the destination is our own buffer.
        unsafe { volatile_copy(self.as_ptr().add(offset), dst) };
        Ok(self.still_valid())
    }

    /// Whether the slot still holds this sequence (seqlock read side; always true for gating consumers).
    pub fn still_valid(&self) -> bool {
        fence(Ordering::Acquire);
        self.ring.stamp(self.seq).load(Ordering::Relaxed) == stamp_written(self.seq)
    }
}

/// Copies `dst.len()` bytes from `src` with volatile reads, eight bytes at a time where `src` is aligned (a
/// lossy reader copies whole block slots, 350 KiB, this way).
///
/// # Safety
/// `src .. src + dst.len()` must be readable memory.
unsafe fn volatile_copy(src: *const u8, dst: &mut [u8]) {
    let n = dst.len();
    let head = src.align_offset(8).min(n);
    let mut i = 0;
    while i < head {
        // SAFETY: i < n, within the readable range.
        dst[i] = unsafe { std::ptr::read_volatile(src.add(i)) };
        i += 1;
    }
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, within the range; `src + i` is 8-aligned (the head brought it there).
        let w = unsafe { std::ptr::read_volatile(src.add(i).cast::<u64>()) };
        dst[i..i + 8].copy_from_slice(&w.to_ne_bytes());
        i += 8;
    }
    while i < n {
        // SAFETY: i < n, within the range.
        dst[i] = unsafe { std::ptr::read_volatile(src.add(i)) };
        i += 1;
    }
}

/// A consumer that writes nothing to the region: what a process with a read-only mapping uses.
///
/// It keeps its position in its own memory. It never holds the producer back by itself; to be lossless, a gate
/// cursor must be registered and advanced for it by a process that may write (the supervisor does, from the
/// reader's release messages, in [`crate::pipeline::consumer`]). Either way it checks each slot's stamp, so a slot
/// overwritten before (or while) it is read is reported, never returned as good. It sleeps on the producer's
/// wake word without announcing itself, so the producer must be told to always wake ([`Ring::set_wake_always`]);
/// otherwise its waits last until their timeout.
#[derive(Debug, Clone)]
pub struct Reader<'r> {
    ring: Ring<'r>,
    next: u64,
    /// A gate at or below `next` holds the producer back, so a published slot at `next` cannot be being rewritten.
    gated: bool,
}

impl<'r> Reader<'r> {
    /// The ring.
    pub fn ring(&self) -> &Ring<'r> {
        &self.ring
    }

    /// Next sequence [`Reader::try_next`] returns.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Returns the next published slot if there is one, without sleeping. If the reader was lapped it gets
    /// [`RingError::Overrun`] once, with the count it missed, and moves to the oldest slot that cannot be being
    /// rewritten.
    pub fn try_next(&mut self) -> Result<Option<ReadSlot<'_>>, RingError> {
        Ok(self.advance()?.map(|seq| ReadSlot { ring: self.ring, seq, stable: false }))
    }

    /// Moves past the next readable sequence and returns it (see [`Reader::try_next`]).
    fn advance(&mut self) -> Result<Option<u64>, RingError> {
        let published = self.ring.published();
        if self.next >= published {
            return Ok(None);
        }
        // Without a gate, the producer may be rewriting the slot of `published - slot_count` right now. (With one,
        // it may have published a full ring ahead of us, but cannot claim our slot.)
        let oldest = (published + 1).saturating_sub(self.ring.slot_count());
        if !self.gated && self.next < oldest {
            let missed = oldest - self.next;
            self.next = oldest;
            return Err(RingError::Overrun { missed });
        }
        if self.ring.stamp(self.next).load(Ordering::Acquire) != stamp_written(self.next) {
            // Overwritten (lossy, or a gate that was dropped): skip to what can still be read.
            let missed = oldest.max(self.next + 1) - self.next;
            self.next += missed;
            return Err(RingError::Overrun { missed });
        }
        let seq = self.next;
        self.next += 1;
        Ok(Some(seq))
    }

    /// Returns the next published slot, sleeping until there is one, at most `timeout`.
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<ReadSlot<'_>, RingError> {
        let deadline = Deadline::after(timeout);
        loop {
            if let Some(seq) = self.advance()? {
                return Ok(ReadSlot { ring: self.ring, seq, stable: false });
            }
            let ctl = &self.ring.control().producer;
            let want = self.next + 1;
            if spin_until(|| ctl.published.load(Ordering::Acquire) >= want) {
                continue;
            }
            let w = ctl.wake_word.load(Ordering::SeqCst);
            if ctl.published.load(Ordering::Acquire) >= want {
                continue;
            }
            if deadline.expired() {
                return Err(RingError::Timeout);
            }
            // The producer swaps the wake word before it wakes: a publish after the load above either changed
            // the word (the kernel then refuses to sleep) or wakes us.
            if wait::wait_while_equal(&ctl.wake_word, w, deadline.remaining()) == Wake::TimedOut
                && ctl.published.load(Ordering::Acquire) < want
            {
                return Err(RingError::Timeout);
            }
        }
    }
}
