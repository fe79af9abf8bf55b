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
    /// The support trail's records, for lookups (`None`: none kept).
    pub trail: Option<Arc<parking_lot::Mutex<Box<dyn crate::support::TrailStore>>>>,
}
