//! The `tollgate` binary: parse arguments, set up logging, load the config, run.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// SOCKS5 + HTTP proxy gateway: one port, both protocols, accounts with targeting
/// modifiers, thread-per-core.
#[derive(Parser)]
#[command(name = "tollgate", version, about)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(short, long, global = true, default_value = "config.example.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Validate the configuration file and exit: non-zero with the reason when invalid.
    Check,
}

fn init_logging(level: &str, format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let snap = match tollgate::config::load(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tollgate: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            println!(
                "{}: ok ({} listeners, {} networks, {} exits, {} plans, {} users)",
                cli.config.display(),
                snap.listeners.len(),
                snap.networks.len(),
                snap.exits.len(),
                snap.plans.len(),
                snap.accounts.len()
            );
            ExitCode::SUCCESS
        }
        Command::Run => {
            init_logging(&snap.log.level, &snap.log.format);
            let opts = tollgate::runtime::Options {
                config_path: cli.config.clone(),
            };
            match tollgate::runtime::run(opts, snap) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("tollgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
