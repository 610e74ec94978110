//! The `privacy-router` binary: parse the command line, set up logging, run.

use clap::Parser;

/// mimalloc: the pipeline allocates many small, short-lived values per event;
/// measured about 4% faster than the system allocator on the pure path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = privacy_router::cli::Cli::parse();
    privacy_router::cli::init_tracing(cli.log_format);
    match privacy_router::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
