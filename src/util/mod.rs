//! Primitives every layer may use and that know nothing of proxies: a single-threaded
//! latch, a per-core buffer pool, deadlines on futures.

pub mod buf;
pub mod latch;
pub mod time;

pub use buf::{BufPool, RELAY_BUF, RELAY_BUF_BULK};
pub use latch::{any_fired, Latch, LatchWait};
pub use time::{until, within};
