//! Acting on a batch's replies: slots taken (or given back for acquirers that left),
//! bandwidth granted (or, while Redis is down, the down allowance), sessions bound.

use super::{Node, Then, DOWN_GRANT};
use crate::plan::{Down, SharedSlot};
use redis::Value;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Node {
    /// Act on the replies (`None`: Redis is down; fall back).
    pub(super) fn finish(&mut self, then: Vec<Then>, values: Option<Vec<Value>>) {
        let up = values.is_some();
        let mut values = values.map(Vec::into_iter);
        // Accounts whose acquirer left before the answer: their count is written again.
        let mut gave_up: Vec<String> = Vec::new();
        for t in then {
            let v = values.as_mut().and_then(Iterator::next);
            match t {
                Then::Ignore => {}
                Then::Heartbeat => {
                    let (lapsed, live) = match &v {
                        Some(Value::Array(items)) if items.len() == 2 => {
                            (int(&items.first().cloned()), int(&items.get(1).cloned()))
                        }
                        _ => (None, None),
                    };
                    if lapsed == Some(1) {
                        // Our entry had lapsed: others may have dropped our counts.
                        self.resync = true;
                    }
                    if let Some(n) = live.filter(|n| *n > 0) {
                        self.stats.nodes.store(n as u64, Ordering::Relaxed);
                    }
                }
                Then::Acquired(name, reply) => {
                    if !self.acquired(&name, reply, &v) {
                        gave_up.push(name);
                    }
                }
                Then::Granted(name) => self.granted(&name, up, &v),
                Then::Session(reply) => {
                    let _ = reply.send(session(&v));
                }
            }
        }
        // Give back the slots taken for acquirers that left.
        if !gave_up.is_empty() {
            let cmds: Vec<redis::Cmd> = gave_up
                .iter()
                .flat_map(|n| self.slot_writes(n).collect::<Vec<_>>())
                .collect();
            let _ = self.call(&cmds);
        }
    }

    /// A slot acquisition's answer, passed on; `false` when the connection gave up waiting
    /// for a slot it got (the slot is given back).
    fn acquired(
        &mut self,
        name: &str,
        reply: flume::Sender<Result<SharedSlot, Down>>,
        v: &Option<Value>,
    ) -> bool {
        let answer = match int(v) {
            Some(1) => {
                if let Some(a) = self.accounts.get_mut(name) {
                    a.held += 1;
                    // Redis added one to what we last wrote.
                    a.held_written += 1;
                }
                Ok(SharedSlot::Taken)
            }
            Some(2) => Ok(SharedSlot::Full { closing: true }),
            Some(_) => Ok(SharedSlot::Full { closing: false }),
            None => Err(Down),
        };
        let ok = answer == Ok(SharedSlot::Taken);
        if reply.send(answer).is_err() && ok {
            if let Some(a) = self.accounts.get_mut(name) {
                a.held = a.held.saturating_sub(1);
            }
            return false;
        }
        true
    }

    /// A bandwidth grant's answer; while Redis is down, live tunnels go on within the
    /// allowance.
    fn granted(&mut self, name: &str, up: bool, v: &Option<Value>) {
        let Some(a) = self.accounts.get_mut(name) else {
            return;
        };
        match (up, int(v)) {
            (true, Some(g)) if g > 0 => {
                a.state.add_grant(g as u64);
                // Redis added the grant to this node's `out` itself: what was last written
                // no longer stands there, so the next settle writes it whatever it is (an
                // idle node handing it all back writes the same figures as before the
                // grant, and skipping that write would leave the grant counted as held).
                a.bw_written = None;
            }
            // Nothing more for now: used up only once this node has nothing of its
            // grants left to lease either (a refill asked for early must not cut the
            // connections still spending the last grant).
            (true, Some(_)) if a.state.remaining() == 0 => a.state.set_exhausted(),
            // Cores handed back leases since: what they returned is this node's to lease.
            (true, Some(_)) => a.state.clear_exhausted(),
            _ => {
                let left = self.cfg.down_allowance.0.saturating_sub(a.down_granted);
                if left == 0 {
                    a.state.set_exhausted();
                } else {
                    let g = left.min(DOWN_GRANT);
                    a.down_granted += g;
                    a.state.add_grant(g);
                }
            }
        }
        a.state.finish_grant();
    }
}

/// A session script's answer: `[exit, ttl ms]`.
fn session(v: &Option<Value>) -> Result<(String, Duration), Down> {
    let Some(Value::Array(items)) = v else {
        return Err(Down);
    };
    let [Value::BulkString(exit), ttl] = items.as_slice() else {
        return Err(Down);
    };
    let ttl = match ttl {
        Value::Int(ms) => (*ms).max(0) as u64,
        _ => 0,
    };
    let exit = String::from_utf8(exit.clone()).map_err(|_| Down)?;
    Ok((exit, Duration::from_millis(ttl)))
}

fn int(v: &Option<Value>) -> Option<i64> {
    match v {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    }
}
