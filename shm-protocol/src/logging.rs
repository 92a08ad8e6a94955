//! Logging set-up shared by every ringdaq process (feature `logging`): human-readable by default, one JSON
//! object per line when `RINGDAQ_LOG_FORMAT=json` (or `ringdaq --log-format json`), the level from `RUST_LOG`
//! (default `info`). Every line carries its process's span: the stage and the acquisition id (0: none).

use tracing::Span;

/// The environment variable that selects the format: `text` (default) or `json`.
pub const FORMAT_ENV: &str = "RINGDAQ_LOG_FORMAT";

/// Where a process writes its full log when its terminal gets only the important lines (set by `ringdaq run` on
/// a terminal, for itself and the stages it starts).
pub const FILE_ENV: &str = "RINGDAQ_LOG_FILE";

/// The level at and above which lines also go to stderr when [`FILE_ENV`] is set (`warn` by default).
pub const TERMINAL_LEVEL_ENV: &str = "RINGDAQ_LOG_TERMINAL";

/// Installs the global subscriber, writing to stderr (or as [`Split`] from the environment says). Colour codes
/// only when stderr is a terminal, so that log files stay greppable.
pub fn init() {
    init_with(json_from_env());
}

/// Whether [`FORMAT_ENV`] asks for JSON.
pub fn json_from_env() -> bool {
    std::env::var(FORMAT_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("json"))
}

/// A log split in two: every line (at the `RUST_LOG` level) to a file, and only lines at `terminal` and above
/// to stderr. A user at a terminal sees warnings and errors of every process, not their routine lines.
#[derive(Debug, Clone)]
pub struct Split {
    /// The full log, appended to.
    pub file: std::path::PathBuf,
    /// The least severe level shown on stderr.
    pub terminal: tracing::Level,
}

impl Split {
    /// The split [`FILE_ENV`] and [`TERMINAL_LEVEL_ENV`] ask for, if any.
    pub fn from_env() -> Option<Self> {
        let file = std::env::var_os(FILE_ENV)?.into();
        let terminal =
            std::env::var(TERMINAL_LEVEL_ENV).ok().and_then(|l| l.parse().ok()).unwrap_or(tracing::Level::WARN);
        Some(Self { file, terminal })
    }
}

/// [`init`] with the format chosen by the caller (a command-line flag), split as the environment says.
pub fn init_with(json: bool) {
    init_split(json, Split::from_env());
}

/// [`init_with`] with an explicit split (`None`: everything to stderr). A log file that cannot be opened leaves
/// everything on stderr, with a line that says why.
pub fn init_split(json: bool, split: Option<Split>) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let split = split.map(|s| {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&s.file);
        (s, f)
    });
    let Some((split, Ok(file))) = split else {
        let builder = tracing_subscriber::fmt().with_env_filter(filter()).with_writer(std::io::stderr);
        if json {
            // JSON span fields are an object: recording a field again replaces it.
            builder.json().with_current_span(true).with_span_list(false).init();
        } else {
            builder
                .fmt_fields(ReplacingFields::default())
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
        }
        if let Some((s, Err(e))) = split {
            tracing::warn!(file = %s.file.display(), error = %e, "cannot open the log file; logging everything here");
        }
        return;
    };
    let file = std::sync::Mutex::new(file);
    let terminal = tracing_subscriber::filter::LevelFilter::from_level(split.terminal);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry();
    if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(file)
                    .with_filter(filter()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr)
                    .with_filter(terminal),
            )
            .init();
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(ReplacingFields::default())
                    .with_ansi(false)
                    .with_writer(file)
                    .with_filter(filter()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(ReplacingFields::default())
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr)
                    .with_filter(terminal),
            )
            .init();
    }
}

/// The span a process's lines are logged in: its stage (`receiver`, ..., `supervisor`), pid, and the acquisition
/// it works on, updated by [`set_acquisition`].
pub fn process_span(stage: &'static str) -> Span {
    tracing::info_span!("ringdaq", stage, pid = std::process::id(), acquisition = 0u64)
}

/// Records in the current span (the process span, where it is entered) the acquisition now worked on.
pub fn set_acquisition(id: u64) {
    Span::current().record("acquisition", id);
}

/// The text formatter's span fields, where recording a field again replaces its value. tracing-subscriber's
/// default appends instead, so a process span whose `acquisition` was recorded for every acquisition carried
/// `acquisition=0 acquisition=1 … acquisition=10` on every line after ten of them.
#[derive(Debug, Default)]
pub struct ReplacingFields(tracing_subscriber::fmt::format::DefaultFields);

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for ReplacingFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        self.0.format_fields(writer, fields)
    }

    fn add_fields(
        &self,
        current: &'w mut tracing_subscriber::fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        // Format the new fields where the old ones were (so with the same colour setting), then merge by name:
        // our span fields are `name=value` with values that hold no space (names, numbers).
        let old = std::mem::take(&mut current.fields);
        self.0.format_fields(current.as_writer(), fields)?;
        let new = std::mem::replace(&mut current.fields, old);
        let name = |t: &str| t.split('=').next().unwrap_or(t).to_owned();
        let mut merged: Vec<String> = current.fields.split(' ').filter(|t| !t.is_empty()).map(String::from).collect();
        for t in new.split(' ').filter(|t| !t.is_empty()) {
            match merged.iter_mut().find(|m| name(m) == name(t)) {
                Some(m) => *m = t.to_owned(),
                None => merged.push(t.to_owned()),
            }
        }
        current.fields = merged.join(" ");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn one_acquisition_field_per_line_whatever_the_history() {
        let out = Captured::default();
        let w = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(ReplacingFields::default())
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = process_span("writer");
            let _g = span.enter();
            for id in 1..=10u64 {
                set_acquisition(id);
                tracing::info!("frame written");
            }
        });
        let text = String::from_utf8(out.0.lock().map(|v| v.clone()).unwrap_or_default()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 10, "{text}");
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(line.matches("acquisition=").count(), 1, "{line}");
            assert!(line.contains(&format!("acquisition={}", i + 1)), "{line}");
            assert!(line.contains("stage=\"writer\"") || line.contains("stage=writer"), "{line}");
        }
    }
}
