//! The pipeline's configuration: a TOML file (every setting optional, see `ringdaq.example.toml`), overridden by
//! command-line flags.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use detector::{Format, Streams, View};
use serde::{Deserialize, Serialize};

/// Everything `ringdaq run` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the detector sockets bind to.
    pub bind: IpAddr,
    /// UDP port of stream (sector) 0; stream s listens on port_base + s.
    pub port_base: u16,
    /// Detector format, by its registry name (`"is"`, `"summit"`, `"jungfrau-2"`).
    pub mode: Format,
    /// Detector family (`"jungfrau"`); with `modules`, picks `mode` (see [`Config::resolve_detector`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detector: Option<String>,
    /// Modules of the detector (with `detector`, or within the family of `mode`); default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modules: Option<usize>,
    /// The detector's streams (K2 sectors, JUNGFRAU modules) this pipeline receives, assembles and writes:
    /// `"0-3"`, `"0,1,2,3"` or `[0, 1, 2, 3]`; default every stream. Stream s stays on `port_base + s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sectors: Option<SectorList>,
    /// Multicast group to join on every socket (the real K2 sends to 225.1.1.1).
    pub multicast_group: Option<std::net::Ipv4Addr>,
    /// Interface address for the multicast join.
    pub multicast_interface: std::net::Ipv4Addr,
    /// Receive buffer per socket, bytes: what the kernel holds while a receiver restarts.
    pub recv_buffer_bytes: usize,
    /// Runtime directory (control socket). Default: $RINGDAQ_RUNTIME_DIR, else $XDG_RUNTIME_DIR/ringdaq, else
    /// /tmp/ringdaq-<uid>.
    pub runtime_dir: Option<PathBuf>,
    /// Ring sizes.
    pub rings: RingsConfig,
    /// Assembler tuning.
    pub assembler: AssemblerConfig,
    /// Writer tuning.
    pub writer: WriterConfig,
    /// Restart policy.
    pub supervisor: SupervisorConfig,
    /// Serve the counters in the Prometheus text format on this address (`GET /metrics`).
    pub metrics: Option<std::net::SocketAddr>,
    /// The built-in simulator (`ringdaq run --simulate`).
    pub simulator: SimulatorConfig,
}

/// The built-in simulator's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Pixel values: `"counting"` (default), `"stem"` or `"stem:SEED"` (a 4D-STEM scan; see `detector::pattern`).
    pub pattern: detector::pattern::Pattern,
}

/// Ring sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RingsConfig {
    /// Block-ring slots.
    pub block_slots: u32,
    /// Datagrams per block slot (one `recvmmsg` batch at most).
    pub datagrams_per_slot: u32,
    /// Frame-ring slots.
    pub frame_slots: u32,
    /// Frame-ring cursors: the writer's plus external consumers'.
    pub frame_cursors: u32,
    /// Value of the pixels of missing blocks.
    pub fill_value: u16,
}

/// Assembler tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssemblerConfig {
    /// Frames in flight.
    pub window: usize,
    /// Milliseconds without a block after which a frame is published incomplete.
    pub timeout_ms: u64,
    /// Datagrams that must agree on an out-of-window frame id to follow it as a reset.
    pub reset_threshold: u32,
    /// Seconds without a frame after which a running acquisition ends short, its file finished with the frames
    /// so far (reason `stream_idle`); 0: never.
    pub stream_idle_timeout_s: f64,
}

/// Writer tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriterConfig {
    /// Use O_DIRECT where the file system supports it.
    pub direct_io: bool,
}

/// Restart policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorConfig {
    /// At most this many restarts of one stage ...
    pub max_restarts: u32,
    /// ... within this many seconds; past that the pipeline stops.
    pub restart_window_s: u64,
    /// A stage whose input waits this long without its heartbeat moving is killed and restarted (0: never).
    pub hang_timeout_ms: u64,
    /// Seconds the stages of a supervisor that died wait for a successor (`ringdaq run` again, or systemd's
    /// restart) before they finish what the rings hold, end the acquisition (`orphaned`) and exit.
    pub orphan_timeout_s: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: std::net::Ipv4Addr::LOCALHOST.into(),
            port_base: 2001,
            mode: Format::default(),
            detector: None,
            modules: None,
            sectors: None,
            multicast_group: None,
            multicast_interface: std::net::Ipv4Addr::UNSPECIFIED,
            recv_buffer_bytes: 64 << 20,
            runtime_dir: None,
            rings: RingsConfig::default(),
            assembler: AssemblerConfig::default(),
            writer: WriterConfig::default(),
            supervisor: SupervisorConfig::default(),
            metrics: None,
            simulator: SimulatorConfig::default(),
        }
    }
}

impl Default for RingsConfig {
    fn default() -> Self {
        Self { block_slots: 64, datagrams_per_slot: 64, frame_slots: 16, frame_cursors: 8, fill_value: 0 }
    }
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        Self {
            window: 4,
            timeout_ms: 100,
            reset_threshold: 32,
            // The assembler's own default (`assembler::DEFAULT_STREAM_IDLE`).
            stream_idle_timeout_s: 5.0,
        }
    }
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self { direct_io: true }
    }
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self { max_restarts: 5, restart_window_s: 60, hang_timeout_ms: 5000, orphan_timeout_s: 30.0 }
    }
}

impl Config {
    /// Reads a TOML file; unknown keys are an error (a typo must not silently fall back to a default).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let mut c: Self = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        c.resolve_detector().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(c)
    }

    /// Sets `mode` from `detector` and `modules`: the registry's format of that family (else of the family of
    /// `mode`) with that many modules (else 1). Without either, `mode` stands.
    pub fn resolve_detector(&mut self) -> anyhow::Result<()> {
        if self.detector.is_none() && self.modules.is_none() {
            return Ok(());
        }
        let family = self.detector.clone().unwrap_or_else(|| self.mode.family().to_string());
        let modules = self.modules.unwrap_or(1);
        self.mode = detector::registry::by_detector(&family, modules).ok_or_else(|| {
            let sizes: Vec<String> = detector::registry::FORMATS
                .iter()
                .filter(|f| f.family().eq_ignore_ascii_case(&family))
                .map(|f| f.modules().to_string())
                .collect();
            if sizes.is_empty() {
                anyhow::anyhow!(
                    "unknown detector {family:?} (expected one of {})",
                    detector::registry::families().join(", ")
                )
            } else {
                anyhow::anyhow!(
                    "detector {family} with {modules} modules is not supported (modules: {})",
                    sizes.join(", ")
                )
            }
        })?;
        Ok(())
    }

    /// Checks values that would make the pipeline unusable.
    pub fn validate(&self) -> anyhow::Result<()> {
        let r = &self.rings;
        anyhow::ensure!(r.block_slots >= 4, "rings.block_slots must be at least 4");
        anyhow::ensure!(r.frame_slots >= 2, "rings.frame_slots must be at least 2");
        anyhow::ensure!((1..=1024).contains(&r.datagrams_per_slot), "rings.datagrams_per_slot must be 1..=1024");
        anyhow::ensure!((1..=64).contains(&r.frame_cursors), "rings.frame_cursors must be 1..=64");
        anyhow::ensure!(self.assembler.window >= 1, "assembler.window must be at least 1");
        let idle = self.assembler.stream_idle_timeout_s;
        anyhow::ensure!(idle.is_finite() && idle >= 0.0, "assembler.stream_idle_timeout_s must be 0 or more seconds");
        let orphan = self.supervisor.orphan_timeout_s;
        anyhow::ensure!(orphan.is_finite() && orphan >= 0.0, "supervisor.orphan_timeout_s must be 0 or more seconds");
        anyhow::ensure!(
            usize::from(self.port_base) + self.mode.streams() <= 65536,
            "port_base leaves no room for {} ports",
            self.mode.streams()
        );
        let f = self.view()?;
        anyhow::ensure!(
            f.blocks_per_frame() <= shm_protocol::pipeline::MAX_BLOCKS_PER_FRAME,
            "mode {f} has {} blocks per frame, more than a frame header records",
            f.blocks_per_frame()
        );
        anyhow::ensure!(
            shm_protocol::pipeline::invalid_reason_names(f.invalid_reasons()).len()
                <= shm_protocol::pipeline::MAX_INVALID_REASONS,
            "mode {f} has more invalid reasons than the region counts"
        );
        let held = u64::from(r.block_slots) * u64::from(r.datagrams_per_slot);
        let need = (self.assembler.window as u64 + 1) * f.blocks_per_frame() as u64;
        anyhow::ensure!(
            held >= need,
            "the block ring holds {held} datagrams, fewer than the {need} that {} frames in flight need; \
             raise rings.block_slots or rings.datagrams_per_slot",
            self.assembler.window + 1
        );
        Ok(())
    }

    /// The part of the detector this pipeline takes: `mode` restricted to `sectors` (the whole without them).
    pub fn view(&self) -> anyhow::Result<View> {
        let Some(list) = &self.sectors else { return Ok(View::whole(self.mode)) };
        let streams = Streams::new(self.mode.get(), &list.0).map_err(|e| anyhow::anyhow!("sectors: {e}"))?;
        View::new(self.mode, streams).map_err(|e| anyhow::anyhow!("sectors: {e}"))
    }

    /// The runtime directory to use.
    pub fn runtime_dir(&self) -> PathBuf {
        resolve_runtime_dir(self.runtime_dir.as_deref())
    }
}

/// Stream indices as a user writes them (`"0-3"`, `"0,1,2,3"`, `[0, 1, 2, 3]` or `3`), checked against the
/// detector by [`Config::view`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectorList(pub Vec<usize>);

impl std::str::FromStr for SectorList {
    type Err = detector::subset::SubsetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        detector::subset::parse_list(s).map(Self)
    }
}

impl Serialize for SectorList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.iter().map(usize::to_string).collect::<Vec<_>>().join(","))
    }
}

impl<'de> Deserialize<'de> for SectorList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Text(String),
            List(Vec<usize>),
            One(usize),
        }
        match Written::deserialize(d)? {
            Written::Text(t) => t.parse().map_err(serde::de::Error::custom),
            Written::List(v) if v.is_empty() => Err(serde::de::Error::custom("sectors: an empty list")),
            Written::List(v) => Ok(Self(v)),
            Written::One(n) => Ok(Self(vec![n])),
        }
    }
}

pub use shm_protocol::pipeline::client::{control_socket, resolve_runtime_dir};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_to_the_defaults() {
        let text = include_str!("../../ringdaq.example.toml");
        let c: Config = toml::from_str(text).unwrap();
        // The example sets bind and multicast_group as for a camera; everything else is the default.
        let d = Config { multicast_group: c.multicast_group, bind: c.bind, ..Config::default() };
        assert_eq!(c, d);
        assert_eq!(c.multicast_group, Some(std::net::Ipv4Addr::new(225, 1, 1, 1)));
    }

    #[test]
    fn modes_are_named_as_before() {
        let c: Config = toml::from_str("mode = \"summit\"").unwrap();
        assert_eq!(c.mode, detector::k2::SUMMIT);
        assert!(toml::from_str::<Config>("mode = \"Summit\"").is_err());
        assert!(toml::from_str::<Config>("mode = \"k3\"").is_err());
        assert_eq!(
            toml::to_string(&Config::default()).unwrap().lines().find(|l| l.starts_with("mode")),
            Some("mode = \"is\"")
        );
    }

    #[test]
    fn detector_and_modules_pick_the_format() {
        let mut c: Config = toml::from_str("detector = \"jungfrau\"\nmodules = 2").unwrap();
        c.resolve_detector().unwrap();
        assert_eq!((c.mode.name(), c.mode.streams()), ("jungfrau-2", 2));
        let mut c: Config = toml::from_str("mode = \"jungfrau-1\"\nmodules = 3").unwrap();
        c.resolve_detector().unwrap();
        assert_eq!(c.mode.name(), "jungfrau-3");
        let mut c: Config = toml::from_str("detector = \"jungfrau\"\nmodules = 9").unwrap();
        assert!(c.resolve_detector().unwrap_err().to_string().contains("not supported"));
        let mut c: Config = toml::from_str("detector = \"k3\"").unwrap();
        assert!(c.resolve_detector().unwrap_err().to_string().contains("unknown detector"));
        let mut c = Config::default();
        c.resolve_detector().unwrap();
        assert_eq!(c.mode, detector::k2::IS);
    }

    #[test]
    fn sectors_are_a_range_or_a_list_of_existing_ones() {
        for text in ["sectors = \"0-3\"", "sectors = \"0,1,2,3\"", "sectors = [0, 1, 2, 3]"] {
            let c: Config = toml::from_str(text).unwrap();
            let v = c.view().unwrap();
            assert_eq!((v.subset().to_string(), v.cols(), v.streams()), ("0-3".into(), 1024, 4), "{text}");
            c.validate().unwrap();
        }
        let c: Config = toml::from_str("sectors = 5").unwrap();
        assert_eq!(c.view().unwrap().subset().to_string(), "5");
        let c: Config = toml::from_str("sectors = \"4-8\"").unwrap();
        assert_eq!(c.validate().unwrap_err().to_string(), "sectors: sector 8 does not exist: is has sectors 0-7");
        assert!(toml::from_str::<Config>("sectors = \"3-1\"").is_err());
        assert!(toml::from_str::<Config>("sectors = []").is_err());
        assert!(toml::from_str::<Config>("sectors = \"x\"").is_err());
        let c: Config = toml::from_str("mode = \"jungfrau-2\"\nsectors = \"1\"").unwrap();
        assert_eq!((c.view().unwrap().rows(), c.view().unwrap().cols()), (512, 1024));
        let round: Config = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(round, c);
        assert!(Config::default().view().unwrap().is_whole());
    }

    #[test]
    fn the_simulator_pattern_is_configurable() {
        use detector::pattern::Pattern;
        assert_eq!(Config::default().simulator.pattern, Pattern::Counting);
        let c: Config = toml::from_str("[simulator]\npattern = \"stem\"").unwrap();
        assert_eq!(c.simulator.pattern, Pattern::Stem { seed: 0 });
        let c: Config = toml::from_str("[simulator]\npattern = \"stem:5\"").unwrap();
        assert_eq!(c.simulator.pattern, Pattern::Stem { seed: 5 });
        assert!(toml::from_str::<Config>("[simulator]\npattern = \"noise\"").is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("prot_base = 3").is_err());
    }

    #[test]
    fn a_block_ring_too_small_for_the_window_is_refused() {
        let mut c = Config::default();
        c.rings.block_slots = 4;
        assert!(c.validate().unwrap_err().to_string().contains("block ring holds"));
    }
}
