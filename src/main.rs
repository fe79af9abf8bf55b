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
    /// Read or adjust stored usage (works while the gateway runs; with [cluster], in Redis).
    Usage {
        #[command(subcommand)]
        action: Option<UsageAction>,
    },
    /// Accounts of the store (the accounts API's): list, show, put, set, delete,
    /// disconnect. A running gateway applies changes within 200 ms.
    Account {
        #[command(subcommand)]
        action: tollgate::admin::cli::AccountAction,
    },
    /// Plans of the store: list, put, delete.
    Plan {
        #[command(subcommand)]
        action: tollgate::admin::cli::PlanAction,
    },
}

#[derive(Subcommand)]
enum UsageAction {
    /// Print every account's plan, usage, credit and remaining bytes (the default).
    Show,
    /// Forget an account's usage and credit.
    Reset { account: String },
    /// Give an account extra bandwidth on top of its plan, e.g. `top-up alice 5GiB`.
    TopUp { account: String, size: String },
    /// An account's ended plan periods (`[[plan]] period`): start (UTC) and bytes used.
    History { account: String },
}

fn init_logging(level: &str, format: &str) {
    use tracing_subscriber::EnvFilter;
    // RUST_LOG must be ASCII: tracing-subscriber's parser panics on some other input.
    let env = std::env::var("RUST_LOG").ok().filter(|v| {
        let ok = v.is_ascii();
        if !ok {
            eprintln!("tollgate: ignoring RUST_LOG: filter directives are ASCII");
        }
        ok
    });
    let filter = env
        .map_or_else(|| EnvFilter::try_new(level), EnvFilter::try_new)
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

/// `tollgate check`: each prefix exit with its family and size, and whether its addresses
/// are local here (a warning with what to run when not).
fn check_prefix_exits(snap: &tollgate::config::Snapshot) {
    use tollgate::config::{ExitKind, Source};
    for e in &snap.exits {
        let ExitKind::Direct {
            source: Source::Prefix(net),
        } = &e.kind
        else {
            continue;
        };
        let family = if net.addr().is_ipv6() { "IPv6" } else { "IPv4" };
        let bits = tollgate::exit::source::size_bits(net);
        match tollgate::exit::source::probe_local(net) {
            Ok(()) => println!(
                "exit {}: source_cidr {net} ({family}, 2^{bits} addresses), local",
                e.name
            ),
            Err(why) => {
                println!(
                    "exit {}: source_cidr {net} ({family}, 2^{bits} addresses), NOT LOCAL",
                    e.name
                );
                eprintln!("tollgate check: warning: exit {}: {why}", e.name);
            }
        }
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
            let cluster = snap
                .cluster
                .as_ref()
                .map(|c| format!(", cluster node {:?}", c.node))
                .unwrap_or_default();
            println!(
                "{}: ok ({} listeners, {} networks, {} exits, {} plans, {} users{cluster})",
                cli.config.display(),
                snap.listeners.len(),
                snap.networks.len(),
                snap.exits.len(),
                snap.plans.len(),
                snap.accounts.len()
            );
            check_prefix_exits(&snap);
            ExitCode::SUCCESS
        }
        Command::Usage { action } => match usage(&snap, action.unwrap_or(UsageAction::Show)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tollgate usage: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Account { action } => match tollgate::admin::cli::account(&snap, action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tollgate account: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Plan { action } => match tollgate::admin::cli::plan(&snap, action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tollgate plan: {e}");
                ExitCode::FAILURE
            }
        },
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

fn usage(snap: &tollgate::config::Snapshot, action: UsageAction) -> Result<(), String> {
    use tollgate::plan::ledger::Adjustment;
    use tollgate::plan::store::{SqliteStore, UsageBackend};
    if let Some(cluster) = &snap.cluster {
        return cluster_usage(snap, cluster, action);
    }
    let mut store = SqliteStore::open(&snap.server.state_dir)?;
    match action {
        UsageAction::Reset { account } => {
            store.queue(&account, Adjustment::Reset)?;
            println!("queued: reset {account} (applied by the running gateway within one usage_flush, or at its next start)");
        }
        UsageAction::TopUp { account, size } => {
            let bytes = tollgate::config::parse_size(&size)?;
            store.queue(&account, Adjustment::TopUp(bytes))?;
            println!("queued: top up {account} by {bytes} bytes (applied within one usage_flush, or at the next start)");
        }
        UsageAction::History { account } => {
            println!("{:<22} {:>16}", "period start (UTC)", "used");
            for (start, used) in store.periods(&account)? {
                let at = jiff::Timestamp::from_second(start)
                    .map_or(start.to_string(), |t| t.to_string());
                println!("{at:<22} {used:>16}");
            }
        }
        UsageAction::Show => {
            let rows = store.load()?;
            let pending = store.queued()?;
            let mut names: Vec<&String> = snap.accounts.keys().collect();
            names.sort();
            println!(
                "{:<24} {:<12} {:>16} {:>16} {:>16} {:>16} {:>7} {:>8}",
                "account", "plan", "used", "credit", "limit", "remaining", "active", "pending"
            );
            for name in names {
                let acc = &snap.accounts[name];
                let plan = &snap.plans[acc.plan];
                let row = rows.get(name).copied().unwrap_or_default();
                let queued = pending.iter().filter(|(a, _)| a == name).count();
                let row = (row.used, row.credit, row.active);
                usage_row(name, plan, row, Some(queued));
            }
            // The store's accounts (the accounts API's), after the file's.
            use tollgate::accounts::store::AccountSource;
            let mut accounts =
                tollgate::accounts::store::AccountStore::open(&snap.server.state_dir)?;
            let plans: Vec<tollgate::config::Plan> = accounts
                .plans()?
                .iter()
                .filter_map(|p| tollgate::accounts::plan_from(p).ok())
                .collect();
            let mut stored = accounts.load_all()?;
            stored.sort_by(|a, b| a.name.cmp(&b.name));
            for a in stored {
                if snap.accounts.contains_key(&a.name) {
                    continue;
                }
                let plan = snap
                    .plan_named(&a.plan)
                    .map(|p| (**p).clone())
                    .or_else(|| plans.iter().find(|p| p.name == a.plan).cloned());
                let Some(plan) = plan else { continue };
                let row = rows.get(&a.name).copied().unwrap_or_default();
                let queued = pending.iter().filter(|(n, _)| *n == a.name).count();
                usage_row(
                    &a.name,
                    &plan,
                    (row.used, row.credit, row.active),
                    Some(queued),
                );
            }
        }
    }
    Ok(())
}

/// One line of `tollgate usage show`: (used, credit, active) and, for the local store,
/// the adjustments still queued.
fn usage_row(
    name: &str,
    plan: &tollgate::config::Plan,
    row: (u64, u64, u32),
    queued: Option<usize>,
) {
    let (used, credit, active) = row;
    let limit = plan.bandwidth.saturating_add(credit);
    let queued = queued.map(|q| format!(" {q:>8}")).unwrap_or_default();
    println!(
        "{:<24} {:<12} {:>16} {:>16} {:>16} {:>16} {:>7}{queued}",
        name,
        plan.name,
        used,
        credit,
        limit,
        limit.saturating_sub(used),
        active
    );
}

/// `tollgate usage` on a cluster: read and adjust the shared usage in Redis, at once.
fn cluster_usage(
    snap: &tollgate::config::Snapshot,
    cluster: &tollgate::config::ClusterSection,
    action: UsageAction,
) -> Result<(), String> {
    use tollgate::accounts::store::AccountSource;
    use tollgate::cluster::usage::{self, Roll};
    use tollgate::config::Plan;
    use tollgate::plan::ledger::Adjustment;
    let mut store = tollgate::cluster::accounts::RedisAccounts::open(cluster)?;
    let store_plans: Vec<Plan> = store
        .plans()?
        .iter()
        .filter_map(|p| tollgate::accounts::plan_from(p).ok())
        .collect();
    let plan_named = |name: &str| -> Option<Plan> {
        snap.plan_named(name)
            .map(|p| (**p).clone())
            .or_else(|| store_plans.iter().find(|p| p.name == name).cloned())
    };
    // Every account with its plan: the file's, then the store's (in Redis).
    let mut accounts: Vec<(String, Plan)> = snap
        .accounts
        .values()
        .map(|a| (a.name.clone(), (*snap.plans[a.plan]).clone()))
        .collect();
    for a in store.load_all()? {
        if !snap.accounts.contains_key(&a.name) {
            if let Some(p) = plan_named(&a.plan) {
                accounts.push((a.name, p));
            }
        }
    }
    accounts.sort_by(|a, b| a.0.cmp(&b.0));
    let plan_of = |name: &str| {
        accounts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .ok_or_else(|| format!("no account named {name:?}"))
    };
    match action {
        UsageAction::Reset { account } => {
            let roll = Roll::of(&plan_of(&account)?);
            usage::adjust(cluster, &account, Adjustment::Reset, roll)?;
            println!("reset {account} (every node sees it at its next grant)");
        }
        UsageAction::TopUp { account, size } => {
            let bytes = tollgate::config::parse_size(&size)?;
            let roll = Roll::of(&plan_of(&account)?);
            let (_, credit) = usage::adjust(cluster, &account, Adjustment::TopUp(bytes), roll)?;
            println!("topped up {account} by {bytes} bytes (credit now {credit})");
        }
        UsageAction::History { account } => {
            println!("{:<22} {:>16}", "period start (UTC)", "used");
            for (start, used) in usage::history(cluster, &account)? {
                let at = jiff::Timestamp::from_second(start)
                    .map_or(start.to_string(), |t| t.to_string());
                println!("{at:<22} {used:>16}");
            }
        }
        UsageAction::Show => {
            let names: Vec<(&str, Roll)> = accounts
                .iter()
                .map(|(n, p)| (n.as_str(), Roll::of(p)))
                .collect();
            let rows = usage::read(cluster, &names)?;
            println!(
                "{:<24} {:<12} {:>16} {:>16} {:>16} {:>16} {:>7}",
                "account", "plan", "used", "credit", "limit", "remaining", "active"
            );
            for (name, plan) in &accounts {
                let row = rows.get(name).copied().unwrap_or_default();
                usage_row(name, plan, (row.used, row.credit, row.active), None);
            }
        }
    }
    Ok(())
}
