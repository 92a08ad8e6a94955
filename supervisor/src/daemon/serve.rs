//! Serving the control socket: accepting connections, welcoming stages (the supervisor's own and hand-run
//! ones), and answering clients, consumers included.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shm_protocol::Region;
use shm_protocol::control::{Connection, ControlError, ControlListener};
use shm_protocol::messages::{PROTOCOL_VERSION, Reply, Request, Role, StageCommand, StopReason};
use shm_protocol::pipeline::{FRAME_RING, Stage};

use super::Supervisor;
use crate::stage_state::{Admitted, Refused};

/// How long a stage hello waits for a refusal that passes by itself (see
/// [`Refused::is_transient`](crate::stage_state::Refused::is_transient)): a stage's Session waits 10 s for its
/// welcome, and a detached process that drains is given 10 s by `detach` before it is killed; 5 s covers a
/// drain of a full frame ring (8 to 64 frames at a few ms each) with room to spare.
const ADMIT_WAIT: Duration = Duration::from_secs(5);

/// An external consumer's hold on the frame ring, for as long as its connection lasts.
struct Subscriber<'r> {
    index: usize,
    /// A lossless consumer's gate, advanced on its behalf (its own mapping is read-only).
    gate: Option<shm_protocol::Consumer<'r>>,
}

impl Subscriber<'_> {
    fn release(&mut self, upto: u64) {
        if let Some(gate) = self.gate.as_mut() {
            // A consumer cannot release what was not published (nor, by going back, hold the pipeline).
            let upto = upto.min(gate.ring().published());
            gate.commit(upto);
        }
    }

    fn end(self, region: &Region) {
        if let Ok(ring) = region.ring(FRAME_RING) {
            let _ = ring.release_consumer(self.index);
        }
        tracing::info!(cursor = self.index, "consumer gone");
    }
}

/// Whether one client connection waits for an acquisition to end, counted in the supervisor's `waiters` (see
/// `Supervisor::answer_waiters`); uncounted when dropped.
struct Waiting<'a> {
    count: &'a AtomicUsize,
    on: bool,
}

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        Self { count, on: false }
    }

    fn set(&mut self, on: bool) {
        if on != self.on {
            if on {
                self.count.fetch_add(1, Ordering::AcqRel);
            } else {
                self.count.fetch_sub(1, Ordering::AcqRel);
            }
            self.on = on;
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.set(false);
    }
}

impl Supervisor {
    /// Accepts control connections until shutdown; each is served on a thread of its own.
    pub(super) fn serve(self: Arc<Self>, listener: ControlListener) {
        while !self.shutting_down() {
            // The timeout only paces the shutdown check: a client is accepted the moment it connects.
            match listener.poll_accept(Duration::from_millis(250)) {
                Ok(true) => {}
                _ => continue,
            }
            match listener.accept_any() {
                Ok(conn) => {
                    let sup = self.clone();
                    let span = tracing::Span::current();
                    std::thread::spawn(move || {
                        let _in = span.enter();
                        match conn.check_peer() {
                            Ok(()) => sup.serve_connection(conn),
                            Err(e) => {
                                tracing::warn!(error = %e, "control connection refused");
                                conn.refuse(&Reply::Error { message: e.to_string() });
                            }
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "control connection refused"),
            }
        }
    }

    fn serve_connection(&self, mut conn: Connection) {
        let _ = conn.set_recv_timeout(Some(Duration::from_secs(10)));
        let role = match conn.recv::<Request>() {
            Ok(r) => match r.msg {
                Request::Hello { protocol, role } if protocol == PROTOCOL_VERSION => role,
                // Its descriptors (the region and sockets this supervisor holds already) are dropped.
                Request::Rejoin { protocol, stage } if protocol == PROTOCOL_VERSION => {
                    return self.welcome_back(stage, conn);
                }
                Request::Hello { protocol, .. } | Request::Rejoin { protocol, .. } => {
                    let _ = conn.send(&Reply::Error {
                        message: format!(
                            "protocol version {protocol} is not supported: this supervisor speaks version {PROTOCOL_VERSION}"
                        ),
                    });
                    return;
                }
                other => {
                    let _ = conn.send(&Reply::Error { message: format!("expected Hello first, got {other:?}") });
                    return;
                }
            },
            Err(e) => {
                let _ = conn.send(&Reply::Error { message: format!("bad first message: {e}") });
                return;
            }
        };
        match role {
            Role::Stage(st) => self.welcome_stage(st, conn),
            Role::Client => {
                if conn.send(&Reply::Welcome { protocol: PROTOCOL_VERSION }).is_err() {
                    return;
                }
                let _ = conn.set_recv_timeout(None);
                self.serve_client(conn);
            }
        }
    }

    /// Whether process `peer` may hold stage `st` ([`StageState::admit`](crate::stage_state::StageState::admit)),
    /// a refusal that can pass by itself retried for up to [`ADMIT_WAIT`].
    fn admit(&self, st: Stage, peer: u32) -> Result<Admitted, Refused> {
        let t = Instant::now();
        loop {
            // The lock is not held while sleeping.
            let r = self.lock().stages[st as usize].state.admit(peer);
            match r {
                Err(why) if why.is_transient() && t.elapsed() < ADMIT_WAIT && !self.shutting_down() => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                r => return r,
            }
        }
    }

    /// A process says hello as stage `st`. [`StageState::admit`](crate::stage_state::StageState::admit) alone
    /// decides whether it may hold the stage: only then does it get the region and the sockets (anything else that
    /// says it is a stage, a stray binary or a confused script, would take over the stage). A refusal that can
    /// pass by itself (the watcher records a child just after spawning it, a detached process is exiting) is
    /// retried for up to [`ADMIT_WAIT`]; the two processes never run at once.
    fn welcome_stage(&self, st: Stage, conn: Connection) {
        let peer = conn.peer().pid as u32;
        let admitted = self.admit(st, peer);
        let kind = match admitted {
            Ok(kind) => kind,
            Err(why) => {
                tracing::warn!(stage = st.name(), pid = peer, "refused a stage hello: {why}");
                let _ = conn.send(&Reply::Error { message: why.to_string() });
                return;
            }
        };
        let Some(conn) = self.hand_over(st, conn) else { return };
        let ready = {
            let mut g = self.lock();
            let state = &mut g.stages[st as usize].state;
            match kind {
                Admitted::Supervised => state.ready(peer, conn),
                Admitted::HandRun => state.hand_run_ready(peer, conn),
            }
        };
        match (ready, kind) {
            (Ok(()), Admitted::Supervised) => tracing::info!(stage = st.name(), pid = peer, "stage ready"),
            (Ok(()), Admitted::HandRun) => tracing::info!(stage = st.name(), pid = peer, "hand-run stage attached"),
            // It died, was detached or attached, or another process took the stage during its welcome: it is told
            // why, and its connection closes here.
            (Err(conn), _) => {
                tracing::warn!(stage = st.name(), pid = peer, "stage ready too late: it is not the stage's");
                let _ = conn.send(&StageCommand::Shutdown { why: StopReason::NotTheStage });
            }
        }
    }

    /// A stage of a supervisor that died, adopted by this one, rejoins: admitted as any hello is (only the pid
    /// adopted for the stage), it runs on at once.
    fn welcome_back(&self, st: Stage, conn: Connection) {
        let peer = conn.peer().pid as u32;
        let admitted = self.admit(st, peer);
        if admitted != Ok(Admitted::Supervised) {
            let why = admitted.err().map_or_else(|| format!("the {} is detached", st.name()), |e| e.to_string());
            tracing::warn!(stage = st.name(), pid = peer, "refused a rejoining stage: {why}");
            let _ = conn.send(&Reply::Error { message: why });
            return;
        }
        if conn.send(&Reply::Welcome { protocol: PROTOCOL_VERSION }).is_err() {
            return;
        }
        match self.lock().stages[st as usize].state.ready(peer, conn) {
            Ok(()) => tracing::info!(stage = st.name(), pid = peer, "adopted stage rejoined"),
            Err(conn) => {
                let _ = conn.send(&StageCommand::Shutdown { why: StopReason::NotTheStage });
            }
        }
    }

    /// Sends a stage its welcome with the region and the sockets, and waits for its Ready; the connection, if it
    /// came. Every stage gets the sockets, not only the receiver: any stage that outlives this supervisor hands
    /// them back to its successor, so the datagrams queued in them survive a crash of the supervisor and the
    /// receiver together.
    fn hand_over(&self, st: Stage, mut conn: Connection) -> Option<Connection> {
        let mut fds: Vec<std::os::fd::BorrowedFd<'_>> = vec![self.region.fd()];
        fds.extend(self.sockets.iter().map(|s| s.as_fd()));
        if let Err(e) = conn.send_with_fds(&Reply::Welcome { protocol: PROTOCOL_VERSION }, &fds) {
            tracing::warn!(stage = st.name(), error = %e, "welcome failed");
            return None;
        }
        let _ = conn.set_recv_timeout(Some(Duration::from_secs(30)));
        match conn.recv::<Request>() {
            Ok(r) if r.msg == Request::Ready => {
                let _ = conn.set_recv_timeout(None);
                Some(conn)
            }
            Ok(r) => {
                tracing::warn!(stage = st.name(), msg = ?r.msg, "expected Ready");
                None
            }
            Err(e) => {
                tracing::warn!(stage = st.name(), error = %e, "stage never became ready");
                None
            }
        }
    }

    fn serve_client(&self, mut conn: Connection) {
        let mut subscription: Option<Subscriber<'_>> = None;
        let mut waiting = Waiting::new(&self.waiters);
        loop {
            let req = match conn.recv::<Request>() {
                Ok(r) => r.msg,
                Err(ControlError::Closed) => break,
                Err(e) => {
                    // A malformed request gets an error reply and the connection is closed; nothing else changes.
                    let _ = conn.send(&Reply::Error { message: format!("malformed request: {e}") });
                    break;
                }
            };
            let reply = match req {
                Request::Subscribe { .. } | Request::Resubscribe { .. } if subscription.is_some() => {
                    Reply::Error { message: "this connection is subscribed already".into() }
                }
                // A new consumer line, or (a consumer whose supervisor died) the line it had.
                Request::Subscribe { lossless } | Request::Resubscribe { lossless, .. } => {
                    let made = match req {
                        Request::Resubscribe { cursor, released, .. } => {
                            self.resubscribe(cursor as usize, lossless, released)
                        }
                        _ => self.subscribe(lossless),
                    };
                    match made {
                        Ok((sub, reply)) => {
                            let fd = match self.region.read_only_fd() {
                                Ok(fd) => fd,
                                Err(e) => {
                                    let _ = conn.send(&Reply::Error { message: format!("{e}") });
                                    sub.end(&self.region);
                                    break;
                                }
                            };
                            let sent = conn.send_with_fds(&reply, &[fd.as_fd()]);
                            subscription = Some(sub);
                            if sent.is_err() {
                                break;
                            }
                            continue;
                        }
                        Err(e) => Reply::Error { message: format!("{e:#}") },
                    }
                }
                // Not answered: a lossless consumer sends one per frame.
                Request::Release { upto } => {
                    if let Some(sub) = subscription.as_mut() {
                        sub.release(upto);
                    }
                    continue;
                }
                Request::MapRegion => match self.region.read_only_fd() {
                    Ok(fd) => {
                        if conn.send_with_fds(&Reply::Region, &[fd.as_fd()]).is_err() {
                            break;
                        }
                        continue;
                    }
                    Err(e) => Reply::Error { message: format!("{e}") },
                },
                other => self.handle(other),
            };
            if let Reply::Acquisition(st) = &reply {
                waiting.set(!st.state.is_over());
            }
            if conn.send(&reply).is_err() {
                break;
            }
        }
        // The consumer is gone (or misbehaved): its gate, if it held one, must not hold the pipeline back.
        if let Some(sub) = subscription {
            sub.end(&self.region);
        }
    }

    /// Registers an external consumer on the frame ring.
    fn subscribe(&self, lossless: bool) -> anyhow::Result<(Subscriber<'_>, Reply)> {
        use shm_protocol::layout::ConsumerMode;
        anyhow::ensure!(!self.shutting_down(), "the pipeline is shutting down");
        let ring = self.region.ring(FRAME_RING)?;
        let mode = if lossless { ConsumerMode::Gating } else { ConsumerMode::Lossy };
        let index = ring.register_consumer(mode).map_err(|e| {
            anyhow::anyhow!("{e}: at most {} consumers (raise rings.frame_cursors)", ring.max_consumers() - 1)
        })?;
        let (next_seq, _, _) = ring.consumer_state(index)?;
        let gate = if lossless { Some(ring.consumer(index)?) } else { None };
        // A read-only consumer cannot announce that it sleeps: have the assembler always wake the ring. (After
        // attaching the gate, which clears the line's flag.)
        ring.set_wake_always(index, true)?;
        tracing::info!(cursor = index, lossless, next_seq, "consumer subscribed");
        let reply = Reply::Subscribed { cursor: index as u32, next_seq, lossless };
        Ok((Subscriber { index, gate }, reply))
    }

    /// A subscriber of the supervisor that died takes back the consumer line held for it (see
    /// `SUBSCRIPTION_HOLD`), releasing what it released meanwhile.
    fn resubscribe(&self, index: usize, lossless: bool, released: u64) -> anyhow::Result<(Subscriber<'_>, Reply)> {
        anyhow::ensure!(!self.shutting_down(), "the pipeline is shutting down");
        {
            let mut g = self.lock();
            let held = g.held_subscriptions.iter().position(|&(i, _)| i == index);
            let Some(at) = held else {
                anyhow::bail!("consumer line {index} is not held for a subscriber (it was freed); subscribe again");
            };
            g.held_subscriptions.remove(at);
        }
        let ring = self.region.ring(FRAME_RING)?;
        let (committed, mode, _) = ring.consumer_state(index)?;
        let gate = if lossless && mode == shm_protocol::layout::ConsumerMode::Gating {
            Some(ring.consumer(index)?)
        } else {
            None
        };
        ring.set_wake_always(index, true)?;
        let mut sub = Subscriber { index, gate };
        // Never back: a gate only moves forward.
        sub.release(released.max(committed));
        tracing::info!(cursor = index, lossless, "subscriber came back");
        Ok((sub, Reply::Subscribed { cursor: index as u32, next_seq: committed.max(released), lossless }))
    }

    /// Answers one client request.
    pub fn handle(&self, req: Request) -> Reply {
        match req {
            Request::Status => Reply::Status(Box::new(self.status())),
            Request::Acquire { frames, path, sync, compression } => match self.arm(frames, &path, sync, compression) {
                Ok(id) => Reply::Armed { id },
                Err(e) => Reply::Error { message: format!("{e:#}") },
            },
            Request::Acquisition { id } => match self.acquisition_status(id) {
                Some(s) => Reply::Acquisition(s),
                None => Reply::Error { message: format!("no acquisition {id}") },
            },
            Request::Stop => match self.stop_acquisition() {
                Ok(()) => Reply::Ok,
                Err(e) => Reply::Error { message: format!("{e:#}") },
            },
            Request::Shutdown => {
                self.request_shutdown();
                Reply::Ok
            }
            Request::Restart { stage } => match self.restart_stage(stage) {
                Ok(()) => Reply::Ok,
                Err(e) => Reply::Error { message: format!("{e:#}") },
            },
            Request::Detach { stage } => match self.detach_stage(stage) {
                Ok(command) => Reply::Detached { command },
                Err(e) => Reply::Error { message: format!("{e:#}") },
            },
            Request::Attach { stage } => match self.attach_stage(stage) {
                Ok(()) => Reply::Ok,
                Err(e) => Reply::Error { message: format!("{e:#}") },
            },
            Request::Hello { .. }
            | Request::Rejoin { .. }
            | Request::Resubscribe { .. }
            | Request::Ready
            | Request::Subscribe { .. }
            | Request::Release { .. }
            | Request::MapRegion => Reply::Error { message: "unexpected message".into() },
        }
    }
}
