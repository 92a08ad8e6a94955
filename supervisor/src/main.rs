//! `ringdaq`: see the library for everything it does.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = supervisor::cli::Cli::parse();
    let json =
        cli.log_format.map_or_else(shm_protocol::logging::json_from_env, |f| f == supervisor::cli::LogFormat::Json);
    supervisor::stages::LOG_JSON.store(json, std::sync::atomic::Ordering::Relaxed);
    shm_protocol::logging::init_with(json);
    let _span = shm_protocol::logging::process_span("supervisor").entered();
    match supervisor::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringdaq: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
