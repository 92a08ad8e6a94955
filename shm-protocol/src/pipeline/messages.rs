//! The messages of ringdaq's control protocol (postcard-encoded, one per packet; see [`crate::control`]).
//!
//! A connection starts with [`Request::Hello`]; the supervisor answers [`Reply::Welcome`] (with the region's
//! memfd and, for the receiver, the UDP sockets attached) or [`Reply::Error`] for a version mismatch.

use serde::{Deserialize, Serialize};

use crate::pipeline::Stage;
pub use crate::pipeline::{AcquisitionState, CONTINUOUS, Compression, EndReason, SyncMode};

/// Version of this protocol; a peer speaking another is refused with both versions named.
pub const PROTOCOL_VERSION: u32 = 6;

/// Who connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A pipeline stage.
    Stage(Stage),
    /// A command-line client or a consumer.
    Client,
}

/// Messages to the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// First message of every connection.
    Hello {
        /// [`PROTOCOL_VERSION`] of the peer.
        protocol: u32,
        /// Who connects.
        role: Role,
    },
    /// A stage has attached its rings and works (sent once, after `Welcome`).
    Ready,
    /// Ask for the pipeline's state.
    Status,
    /// Arm an acquisition.
    Acquire {
        /// Frames to acquire ([`CONTINUOUS`]: until `Stop`).
        frames: u64,
        /// Final path of the output file (absolute; its extension chooses the format).
        path: String,
        /// When frame 0 is.
        sync: SyncMode,
        /// How frames are stored (`.h5` only takes another than none). Added in protocol 6; postcard has no
        /// optional trailing fields, hence the version.
        #[serde(default)]
        compression: Compression,
    },
    /// Ask for the state of an acquisition.
    Acquisition {
        /// Its id.
        id: u64,
    },
    /// End the running acquisition now (the file is finished with the frames acquired so far).
    Stop,
    /// End the pipeline cleanly.
    Shutdown,
    /// Subscribe this connection to the frame ring (answered with [`Reply::Subscribed`] and a read-only memfd of
    /// the region). The subscription lasts as long as the connection.
    Subscribe {
        /// Hold a gate the pipeline respects (every frame is delivered; a slow consumer slows the pipeline), or
        /// not (never slows anything; frames overwritten before they are read are counted as missed).
        lossless: bool,
    },
    /// A lossless subscriber is done with every frame-ring sequence below `upto` (not answered).
    Release {
        /// One past the last sequence released.
        upto: u64,
    },
    /// Restart a stage now (it finishes what it holds and a new process takes over).
    Restart {
        /// Which.
        stage: Stage,
    },
    /// Stop managing a stage: its process is stopped and not restarted; a process the user starts by hand may
    /// then attach as that stage (answered with [`Reply::Detached`]).
    Detach {
        /// Which.
        stage: Stage,
    },
    /// Manage a detached stage again: a hand-run process is told to stop, and the supervisor starts its own.
    Attach {
        /// Which.
        stage: Stage,
    },
    /// A read-only memfd of the region, for tools that look at it from outside (`ringdaq record`, `inspect`);
    /// answered with [`Reply::Region`].
    MapRegion,
}

/// Messages from the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// Answer to `Hello`; a stage gets the region memfd (and the receiver its sockets) attached.
    Welcome {
        /// [`PROTOCOL_VERSION`] of the supervisor.
        protocol: u32,
    },
    /// The pipeline's state.
    Status(Box<StatusReport>),
    /// An acquisition was armed.
    Armed {
        /// Its id.
        id: u64,
    },
    /// State of an acquisition.
    Acquisition(AcquisitionStatus),
    /// Done.
    Ok,
    /// Answer to [`Request::MapRegion`], with a read-only memfd of the region attached.
    Region,
    /// Answer to [`Request::Detach`].
    Detached {
        /// The command line that runs the stage by hand against this pipeline.
        command: String,
    },
    /// Answer to [`Request::Subscribe`], with a read-only memfd of the region attached.
    Subscribed {
        /// The frame-ring consumer line the subscription holds.
        cursor: u32,
        /// The first frame-ring sequence the subscriber gets (the next one to be published).
        next_seq: u64,
        /// Whether the subscription gates the pipeline.
        lossless: bool,
    },
    /// The request failed (or was malformed); the text says why.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// Messages from the supervisor to a stage, after `Welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageCommand {
    /// Finish what is in flight and exit 0; `why` is logged by the stage.
    Shutdown {
        /// Why the supervisor asks.
        why: StopReason,
    },
}

/// Why the supervisor tells a stage to stop (the stage logs it, so that its `stopped` line says why).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// The pipeline shuts down (`ringdaq shutdown`, a signal, or a stage out of its restart budget).
    PipelineShutdown,
    /// `ringdaq restart`: a new process takes over at once.
    Restart,
    /// `ringdaq detach`: the stage is to be run by hand.
    Detach,
    /// `ringdaq attach`: the supervisor runs the stage again, so the process run by hand must stop.
    Attach,
    /// This process said Ready after another one took the stage (or the stage was attached meanwhile).
    NotTheStage,
}

impl StopReason {
    /// The reason in words, as the stage logs it.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::PipelineShutdown => "the pipeline is shutting down",
            Self::Restart => "`ringdaq restart` asked for a new process",
            Self::Detach => "`ringdaq detach`: the stage is to be run by hand",
            Self::Attach => "`ringdaq attach`: the supervisor runs the stage again",
            Self::NotTheStage => "another process holds the stage (or it was attached meanwhile)",
        }
    }
}

/// An acquisition as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquisitionStatus {
    /// Id.
    pub id: u64,
    /// Final path.
    pub path: String,
    /// Where it is.
    pub state: AcquisitionState,
    /// Frames requested ([`CONTINUOUS`], 18446744073709551615: until stopped; see `continuous`).
    pub frames: u64,
    /// Whether it runs until stopped rather than for a number of frames.
    pub continuous: bool,
    /// Frames assigned so far.
    pub assigned: u64,
    /// Frames written so far.
    pub written: u64,
    /// Complete frames among those assigned.
    pub complete: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// How it ended (or is ending), once that is recorded: `complete`, `stopped` (by the user), `stream_idle`,
    /// `shutdown`, `pipeline_failed`, `disk_full`, `write_error`.
    pub ended: Option<EndReason>,
    /// How it ended, in words (for every ending but `complete`).
    pub reason: Option<String>,
}

/// What a stage is doing, as `ringdaq status` says it; serialised as the names of [`StageLabel::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StageLabel {
    /// Its process said Ready.
    #[serde(rename = "running")]
    Running,
    /// Its process was started and has not said Ready yet.
    #[serde(rename = "starting")]
    Starting,
    /// It died and its restart is due after a backoff.
    #[serde(rename = "restarting")]
    Restarting,
    /// Not running and not due to run (before its first start, after shutdown, or the budget was spent).
    #[serde(rename = "stopped")]
    Stopped,
    /// Detached: no process holds the stage.
    #[serde(rename = "detached")]
    Detached,
    /// Detached, and a process holds the stage with a live connection.
    #[serde(rename = "detached (run by hand)")]
    DetachedRunByHand,
}

impl StageLabel {
    /// Every label.
    pub const ALL: [Self; 6] =
        [Self::Running, Self::Starting, Self::Restarting, Self::Stopped, Self::Detached, Self::DetachedRunByHand];

    /// The word `ringdaq status` prints (public: `status --json` field `state`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Starting => "starting",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped",
            Self::Detached => "detached",
            Self::DetachedRunByHand => "detached (run by hand)",
        }
    }
}

impl std::fmt::Display for StageLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with a label's name (`state == "running"`), as scripts read `status --json`.
impl PartialEq<&str> for StageLabel {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One stage as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageStatus {
    /// Stage name.
    pub name: String,
    /// What it is doing.
    pub state: StageLabel,
    /// Pid, 0 if not running.
    pub pid: u32,
    /// Restarts so far.
    pub restarts: u32,
    /// How the last run ended, if it ended.
    pub last_exit: Option<String>,
    /// Seconds since the running process started (0 if none runs).
    pub uptime_s: u64,
}

/// The pipeline's state: the stages, the counters and the acquisitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StatusReport {
    /// Supervisor pid.
    pub pid: u32,
    /// Seconds since the pipeline started.
    pub uptime_s: u64,
    /// Detector mode.
    pub mode: String,
    /// The stages.
    pub stages: Vec<StageStatus>,
    /// Named counters (`receiver.datagrams`, `assembler.invalid.sync_word`, ...).
    pub counters: Vec<(String, u64)>,
    /// Rates over the last second: `datagrams_per_s`, `frames_per_s`, `receive_mb_per_s`, `write_mb_per_s`
    /// (pixels), `compress_cores` (CPU seconds a second spent compressing), `compressed_mb_per_s`.
    pub rates: Vec<(String, f64)>,
    /// Slots in each ring.
    pub block_ring_slots: u64,
    /// Slots in the frame ring.
    pub frame_ring_slots: u64,
    /// Block-ring slots filled and not yet consumed.
    pub block_ring_used: u64,
    /// Frame-ring slots filled and not yet written.
    pub frame_ring_used: u64,
    /// Recent acquisitions.
    pub acquisitions: Vec<AcquisitionStatus>,
}
