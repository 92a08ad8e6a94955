//! Logging set-up shared by every ringdaq process (feature `logging`): human-readable by default, one JSON
//! object per line when `RINGDAQ_LOG_FORMAT=json` (or `ringdaq --log-format json`), the level from `RUST_LOG`
//! (default `info`). Every line carries its process's span: the stage and the acquisition id (0: none).

use tracing::Span;

/// The environment variable that selects the format: `text` (default) or `json`.
pub const FORMAT_ENV: &str = "RINGDAQ_LOG_FORMAT";

/// Installs the global subscriber, writing to stderr. Colour codes only when stderr is a terminal, so that log
/// files stay greppable.
pub fn init() {
    init_with(json_from_env());
}

/// Whether [`FORMAT_ENV`] asks for JSON.
pub fn json_from_env() -> bool {
    std::env::var(FORMAT_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("json"))
}

/// [`init`] with the format chosen by the caller (a command-line flag).
pub fn init_with(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().with_current_span(true).with_span_list(false).init();
    } else {
        builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
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
