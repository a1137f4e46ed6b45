//! The `mynah` binary: reads configuration, starts logging, and hands over to the library.

use clap::Parser;

// candle allocates a fresh buffer per tensor op; glibc's allocator returns large blocks to the
// kernel each time and training spent a third of its time in page faults.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // A missing .env is normal; a broken one is worth a word.
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            eprintln!("warning: .env was not loaded: {e}");
        }
    }
    let cli = mynah::cli::Cli::parse();
    // The playground shares the terminal with its prompt, so it only logs problems by default.
    let default_filter = match cli.command {
        mynah::cli::Command::Playground { .. } => "warn",
        _ => "mynah=info,warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)))
        .with_writer(std::io::stderr)
        .init();
    let config = match mynah::config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mynah: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match mynah::cli::run(cli, config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mynah: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
