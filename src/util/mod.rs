//! Primitives every layer may use and that know nothing of proxies: a single-threaded
//! latch, a per-core buffer pool, deadlines on futures, the parse result of every codec.

pub mod buf;
pub mod db;
pub mod latch;
pub mod parsed;
pub mod time;

pub use buf::{BufPool, RELAY_BUF, RELAY_BUF_BULK};
pub use latch::{any_fired, Latch, LatchKey, LatchWait};
pub use parsed::Parsed;
pub use time::{epoch_ms, epoch_ns, until, wall_now, within};
