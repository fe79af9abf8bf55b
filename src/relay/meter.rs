//! [`Meter`]: the one place a client connection's bytes are counted and, once an account
//! is bound, charged to its plan.

use crate::plan::shard::Charge;
use crate::util::Latch;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Context, Poll};

/// Bytes of one client connection, as seen at the client side of the gateway:
/// `up` = received from the client, `down` = sent to the client. The one place traffic is
/// counted; once an account is bound, the same calls charge its plan.
#[derive(Default)]
pub struct Meter {
    up: Cell<u64>,
    down: Cell<u64>,
    charge: RefCell<Option<Charge>>,
    /// Bytes seen before an account was bound (greeting, first request head), or while
    /// the meter is parked between two HTTP requests: billed at the next bind.
    unbilled_up: Cell<u64>,
    unbilled_down: Cell<u64>,
    /// Between two requests of a keep-alive client: the next request may be another
    /// account's, so its bytes wait for its admission. The charge stays for its cut latch.
    parked: Cell<bool>,
    /// Bytes reserved from the plan at bind (the handshake, the request head) and billed
    /// once the exchange is relayed ([`Meter::commit`]), or released when the gateway
    /// refuses it ([`Meter::forgive`]).
    held: Cell<u64>,
}

impl Meter {
    /// Bytes received from the client.
    pub fn add_up(&self, n: usize) {
        self.up.set(self.up.get() + n as u64);
        match &*self.charge.borrow() {
            Some(c) if !self.parked.get() => c.up(n as u64),
            _ => self.unbilled_up.set(self.unbilled_up.get() + n as u64),
        }
    }

    /// `n` bytes read were not the client's (a load balancer's PROXY header): neither
    /// counted nor billed. Only before an account is bound.
    pub fn not_the_clients(&self, n: usize) {
        self.up.set(self.up.get().saturating_sub(n as u64));
        self.unbilled_up
            .set(self.unbilled_up.get().saturating_sub(n as u64));
    }

    /// Bytes sent to the client.
    pub fn add_down(&self, n: usize) {
        self.down.set(self.down.get() + n as u64);
        match &*self.charge.borrow() {
            Some(c) if !self.parked.get() => c.down(n as u64),
            _ => self.unbilled_down.set(self.unbilled_down.get() + n as u64),
        }
    }

    /// Bytes read from the upstream on the client's behalf (within [`Meter::allow`]).
    pub fn read_for_client(&self, n: usize) {
        if let Some(c) = &*self.charge.borrow() {
            c.read_for_client(n as u64);
        }
    }

    /// How many of `want` bytes may be read now for this client; `Ready(0)` = its plan's
    /// bandwidth is used up; `Pending` while a cluster node waits for a grant. Unbound
    /// meters (no account yet) are not limited.
    pub fn poll_allow(&self, cx: &mut Context<'_>, want: usize) -> Poll<usize> {
        match &*self.charge.borrow() {
            Some(c) if !self.parked.get() => c.poll_allow(cx, want),
            _ => Poll::Ready(want),
        }
    }

    /// [`Meter::poll_allow`] as a future.
    pub async fn allow(&self, want: usize) -> usize {
        std::future::poll_fn(|cx| self.poll_allow(cx, want)).await
    }

    /// Reserve up to `n` bytes of the plan for bytes about to be written to the client
    /// (relayed, not the gateway's own reply): waits for a cluster grant like a read does.
    /// Returns what was reserved; less than `n` means the bandwidth ran out. Unbound meters
    /// are not limited.
    pub async fn reserve(&self, n: usize) -> usize {
        let mut got = 0;
        while got < n {
            let a = self.allow(n - got).await;
            if a == 0 {
                break;
            }
            if let Some(c) = &*self.charge.borrow() {
                c.read_for_client(a as u64);
            }
            got += a;
        }
        got
    }

    /// A datagram of `n` bytes relayed whole or not at all (SOCKS5 UDP): reserve all `n`
    /// from the plan (waiting for a cluster grant or the speed limit like a read), then
    /// count and bill them as received from the client (`up`) or sent to it. `false`: the
    /// plan's bandwidth cannot cover it; nothing is billed and the reservation goes back.
    pub async fn datagram(&self, n: usize, up: bool) -> bool {
        let got = self.reserve(n).await;
        let charge = self.charge.borrow();
        if got < n {
            if let Some(c) = &*charge {
                c.release_reserved(got as u64);
            }
            return false;
        }
        let counter = if up { &self.up } else { &self.down };
        counter.set(counter.get() + n as u64);
        if let Some(c) = &*charge {
            if up {
                c.commit_reserved(n as u64);
            } else {
                c.down(n as u64);
            }
        }
        true
    }

    /// Charge this connection's traffic to an account from now on, and reserve the bytes
    /// that came before (the handshake, the request head) within the plan: they are billed
    /// once the exchange is relayed ([`Meter::commit`]). `false` when the plan cannot cover
    /// them (its bandwidth is used up); nothing is billed then.
    pub async fn bind(&self, charge: Charge) -> bool {
        *self.charge.borrow_mut() = Some(charge);
        self.parked.set(false);
        let owed = self.unbilled_up.replace(0) + self.unbilled_down.replace(0);
        let got = self.reserve(owed as usize).await as u64;
        self.held.set(got);
        got == owed
    }

    /// The exchange is relayed: bill what [`Meter::bind`] reserved.
    pub fn commit(&self) {
        let n = self.held.replace(0);
        if let Some(c) = &*self.charge.borrow() {
            c.commit_reserved(n);
        }
    }

    /// The gateway refuses the exchange: what was reserved goes back, and the bytes read for
    /// it are not billed to anyone.
    pub fn forgive(&self) {
        let n = self.held.replace(0);
        if let Some(c) = &*self.charge.borrow() {
            c.release_reserved(n);
        }
        self.unbilled_up.set(0);
        self.unbilled_down.set(0);
    }

    /// The gateway's own reply: counted on the connection (for its access line), billed to
    /// no one.
    pub fn add_own_down(&self, n: usize) {
        self.down.set(self.down.get() + n as u64);
    }

    /// Stop billing the bound account until the next [`Meter::bind`] (a keep-alive client
    /// between requests); its cut latch still ends the wait.
    pub fn park(&self) {
        self.parked.set(true);
    }

    /// Fires when the bound account runs out of bandwidth.
    pub fn cut(&self) -> Option<Rc<Latch>> {
        self.charge.borrow().as_ref().map(|c| c.local().cut())
    }

    pub fn up(&self) -> u64 {
        self.up.get()
    }
    pub fn down(&self) -> u64 {
        self.down.get()
    }
}
