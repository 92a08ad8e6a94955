//! `ringdaq`: see the library for everything it does.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = supervisor::cli::Cli::parse();
    let json =
        cli.log_format.map_or_else(shm_protocol::logging::json_from_env, |f| f == supervisor::cli::LogFormat::Json);
    supervisor::stages::LOG_JSON.store(json, std::sync::atomic::Ordering::Relaxed);
    // `ringdaq run` at a terminal: warnings and errors here, every line in <runtime dir>/ringdaq.log.
    let split = match &cli.command {
        supervisor::cli::Command::Run(a) if std::io::IsTerminal::is_terminal(&std::io::stderr()) => {
            a.log_split(cli.runtime_dir.as_deref())
        }
        _ => None,
    };
    if let Some(s) = &split {
        eprintln!("ringdaq: the full log is in {} (-v shows it here)", s.file.display());
        let _ = supervisor::stages::LOG_SPLIT.set(s.clone());
    }
    shm_protocol::logging::init_split(json, split.or_else(shm_protocol::logging::Split::from_env));
    let _span = shm_protocol::logging::process_span("supervisor").entered();
    match supervisor::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringdaq: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
