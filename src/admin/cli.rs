//! `tollgate account …` and `tollgate plan …`: the accounts API's operations on the same
//! store ([`super::ops`]), from a shell. A running gateway applies what they write within
//! [`crate::accounts::store::POLL`] (it follows the store's change log).

use super::ops::{self, AccountBody, OpError, PlanBody, SizeValue, Write};
use crate::accounts::store::{AccountSource, Change};
use crate::config::Snapshot;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum AccountAction {
    /// List accounts by name, the file's and the store's.
    List {
        /// Start after this name (paging).
        #[arg(long, default_value = "")]
        after: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one account (never its password or hash).
    Show { name: String },
    /// Create or replace an account. The password is read from the first line of stdin.
    Put {
        name: String,
        #[arg(long)]
        plan: String,
        /// A network it may use (repeat for more).
        #[arg(long = "network", required = true)]
        networks: Vec<String>,
        /// A client address or CIDR that may connect without credentials (repeat).
        #[arg(long = "allow-ip")]
        allow_ips: Vec<String>,
        /// Created disabled (407 until enabled).
        #[arg(long)]
        disabled: bool,
        /// RFC 3339 time after which it is refused.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Change some fields of an account.
    Set {
        name: String,
        /// Read a new password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        #[arg(long)]
        plan: Option<String>,
        #[arg(long = "network")]
        networks: Vec<String>,
        #[arg(long = "allow-ip")]
        allow_ips: Vec<String>,
        /// `true` or `false`.
        #[arg(long)]
        enabled: Option<bool>,
        #[arg(long)]
        expires: Option<String>,
        /// Remove the expiry.
        #[arg(long)]
        no_expiry: bool,
    },
    /// Delete an account with its stored usage.
    Delete {
        name: String,
        /// Also cut its live connections.
        #[arg(long)]
        disconnect: bool,
    },
    /// Cut an account's live connections (on a running gateway).
    Disconnect { name: String },
}

#[derive(Subcommand)]
pub enum PlanAction {
    /// List plans, the file's and the store's.
    List,
    /// Create or replace a plan.
    Put {
        name: String,
        /// e.g. `10GiB`.
        #[arg(long)]
        bandwidth: String,
        #[arg(long)]
        threads: u32,
        /// `month`, `week`, `day` or `none`.
        #[arg(long)]
        period: Option<String>,
        /// e.g. `10MiB/s`.
        #[arg(long)]
        speed: Option<String>,
    },
    /// Delete a plan no account uses.
    Delete { name: String },
}

fn open(snap: &Snapshot) -> Result<Box<dyn AccountSource>, String> {
    ops::open_source(snap)
}

fn op(e: OpError) -> String {
    e.message
}

fn password_from_stdin() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("reading the password from stdin: {e}"))?;
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    if p.is_empty() {
        return Err("no password on stdin".into());
    }
    Ok(p)
}

pub fn account(snap: &Snapshot, action: AccountAction) -> Result<(), String> {
    let mut store = open(snap)?;
    match action {
        AccountAction::List { after, limit } => {
            let mut rows: Vec<(String, String, String, bool, String, &str)> = snap
                .accounts
                .values()
                .filter(|a| a.name > after)
                .map(|a| {
                    let nets: Vec<&str> = a
                        .networks
                        .iter()
                        .map(|i| snap.networks[*i].name.as_str())
                        .collect();
                    (
                        a.name.clone(),
                        snap.plans[a.plan].name.clone(),
                        nets.join(","),
                        true,
                        a.expires
                            .map(|t| t.to_string())
                            .unwrap_or_else(|| "-".into()),
                        "config",
                    )
                })
                .collect();
            for r in store.list(&after, limit)? {
                if !snap.accounts.contains_key(&r.name) {
                    rows.push((
                        r.name,
                        r.plan,
                        r.networks.join(","),
                        r.enabled,
                        r.expires.unwrap_or_else(|| "-".into()),
                        "api",
                    ));
                }
            }
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            rows.truncate(limit);
            println!(
                "{:<24} {:<12} {:<24} {:<8} {:<26} source",
                "account", "plan", "networks", "enabled", "expires"
            );
            for (n, p, nets, en, exp, src) in rows {
                println!("{n:<24} {p:<12} {nets:<24} {en:<8} {exp:<26} {src}");
            }
            Ok(())
        }
        AccountAction::Show { name } => {
            if snap.accounts.contains_key(&name) {
                println!("{name}: defined in the configuration file (read-only)");
                return Ok(());
            }
            let r = store
                .get(&name)?
                .ok_or_else(|| format!("no account named {name:?}"))?;
            println!("name:      {}", r.name);
            println!("plan:      {}", r.plan);
            println!("networks:  {}", r.networks.join(", "));
            println!("allow_ips: {}", r.allow_ips.join(", "));
            println!("enabled:   {}", r.enabled);
            println!("expires:   {}", r.expires.as_deref().unwrap_or("-"));
            Ok(())
        }
        AccountAction::Put {
            name,
            plan,
            networks,
            allow_ips,
            disabled,
            expires,
        } => {
            let hashed = ops::hash_password(&password_from_stdin()?).map_err(op)?;
            let body = AccountBody {
                password: None,
                password_hash: None,
                plan: Some(plan),
                networks: Some(networks),
                allow_ips: Some(allow_ips),
                enabled: Some(!disabled),
                expires: expires.map(Some),
            };
            let (row, created) =
                ops::account_row(snap, &mut *store, &name, &body, Some(hashed), Write::Put)
                    .map_err(op)?;
            store.put(&row)?;
            println!(
                "{} account {name}",
                if created { "created" } else { "replaced" }
            );
            Ok(())
        }
        AccountAction::Set {
            name,
            password_stdin,
            plan,
            networks,
            allow_ips,
            enabled,
            expires,
            no_expiry,
        } => {
            ops::account_writable(snap, &name).map_err(op)?;
            let hashed = if password_stdin {
                Some(ops::hash_password(&password_from_stdin()?).map_err(op)?)
            } else {
                None
            };
            let body = AccountBody {
                password: None,
                password_hash: None,
                plan,
                networks: (!networks.is_empty()).then_some(networks),
                allow_ips: (!allow_ips.is_empty()).then_some(allow_ips),
                enabled,
                expires: if no_expiry {
                    Some(None)
                } else {
                    expires.map(Some)
                },
            };
            let (row, _) = ops::account_row(snap, &mut *store, &name, &body, hashed, Write::Patch)
                .map_err(op)?;
            store.put(&row)?;
            println!("updated account {name}");
            Ok(())
        }
        AccountAction::Delete { name, disconnect } => {
            ops::account_writable(snap, &name).map_err(op)?;
            let row = store.get(&name)?;
            if !store.delete(&name)? {
                return Err(format!("no account named {name:?}"));
            }
            // On a cluster its usage lives in Redis by name: it goes with the account.
            if let (Some(c), Some(row)) = (&snap.cluster, row) {
                let plan = match snap.plan_named(&row.plan) {
                    Some(p) => Some((**p).clone()),
                    None => store
                        .get_plan(&row.plan)?
                        .and_then(|p| crate::accounts::plan_from(&p).ok()),
                };
                if let Some(plan) = plan {
                    let roll = crate::cluster::usage::Roll::of(&plan);
                    crate::cluster::usage::forget(c, &name, roll)?;
                }
            }
            if disconnect {
                store.note(&Change::Disconnect(name.clone()))?;
            }
            println!("deleted account {name}");
            Ok(())
        }
        AccountAction::Disconnect { name } => {
            if !snap.accounts.contains_key(&name) && store.get(&name)?.is_none() {
                return Err(format!("no account named {name:?}"));
            }
            store.note(&Change::Disconnect(name.clone()))?;
            println!("asked the running gateway to disconnect {name}");
            Ok(())
        }
    }
}

pub fn plan(snap: &Snapshot, action: PlanAction) -> Result<(), String> {
    let mut store = open(snap)?;
    match action {
        PlanAction::List => {
            println!(
                "{:<16} {:>16} {:>8} {:>12} {:<6} source",
                "plan", "bandwidth", "threads", "speed", "period"
            );
            for p in &snap.plans {
                println!(
                    "{:<16} {:>16} {:>8} {:>12} {:<6} config",
                    p.name,
                    p.bandwidth,
                    p.threads,
                    p.speed,
                    p.period.as_str()
                );
            }
            for p in store.plans()? {
                println!(
                    "{:<16} {:>16} {:>8} {:>12} {:<6} api",
                    p.name, p.bandwidth, p.threads, p.speed, p.period
                );
            }
            Ok(())
        }
        PlanAction::Put {
            name,
            bandwidth,
            threads,
            period,
            speed,
        } => {
            let body = PlanBody {
                bandwidth: Some(SizeValue::Text(bandwidth)),
                threads: Some(threads),
                period,
                speed: Some(speed),
            };
            let (row, created) =
                ops::plan_row(snap, &mut *store, &name, &body, Write::Put).map_err(op)?;
            store.put_plan(&row)?;
            println!(
                "{} plan {name}",
                if created { "created" } else { "replaced" }
            );
            Ok(())
        }
        PlanAction::Delete { name } => {
            ops::plan_deletable(snap, &mut *store, &name).map_err(op)?;
            if !store.delete_plan(&name)? {
                return Err(format!("no plan named {name:?}"));
            }
            println!("deleted plan {name}");
            Ok(())
        }
    }
}
