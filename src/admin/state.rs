//! What the admin's handlers share.

use super::scrape::Metrics;
use crate::accounts::store::AccountSource;
use crate::route::sessions::SessionTable;
use crate::world::World;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// What `/healthz` consults.
pub trait Health: Send + Sync {
    /// `Ok` while every executor serves; `Err(reason)` while draining or when one stalls.
    fn check(&self) -> Result<(), String>;
}

/// When the dashboard last read the exits' connect counts, and what they were.
pub type ExitSample = (Option<std::time::Instant>, ahash::AHashMap<String, u64>);

/// What the admin's handlers share.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<dyn Health>,
    /// The running world (its token, accounts, ledger).
    pub world: Arc<ArcSwap<World>>,
    pub sessions: Arc<SessionTable>,
    /// The accounts API's handle on the store (`None`: no store, the API answers 503).
    pub store: Option<Arc<parking_lot::Mutex<Box<dyn AccountSource>>>>,
    /// Failed-login tracking (the dashboard's customer logins go through it too).
    pub guard: Arc<crate::auth::guard::AuthGuard>,
    /// Signs customers' dashboard sessions; made at start.
    pub secret: [u8; 32],
    /// The dashboard's last look at exit connect counts (for connects per second).
    pub exit_rates: Arc<parking_lot::Mutex<ExitSample>>,
    /// A proxy address for the customer's copy-paste lines.
    pub proxy_addr: Option<String>,
    /// The support trail's records, for lookups (`None`: none kept).
    pub trail: Option<Arc<parking_lot::Mutex<Box<dyn crate::support::TrailStore>>>>,
}
