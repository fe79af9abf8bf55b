//! A one-shot, single-threaded broadcast.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A one-shot, single-threaded broadcast: `fire()` once, every `wait()` resolves. A wait
/// that is dropped unresolved takes its waker back out, so a latch that never fires (the
/// drain latch, an account's cut latch) does not collect the wakers of every connection that
/// ever waited on it.
#[derive(Default)]
pub struct Latch {
    fired: Cell<bool>,
    /// Why it fired (the firer's code; 0 when fired by [`Latch::fire`]).
    why: Cell<u8>,
    next_key: Cell<u64>,
    waiters: RefCell<ahash::AHashMap<u64, Waker>>,
}

impl Latch {
    pub fn fire(&self) {
        if !self.fired.replace(true) {
            let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
            for (_, w) in waiters {
                w.wake();
            }
        }
    }

    /// Fire, saying why (read back by [`Latch::why`]).
    pub fn fire_because(&self, why: u8) {
        if !self.fired.get() {
            self.why.set(why);
        }
        self.fire();
    }

    /// The code it was fired with (0: plain [`Latch::fire`], or not fired).
    pub fn why(&self) -> u8 {
        self.why.get()
    }

    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    pub fn wait(&self) -> LatchWait<'_> {
        LatchWait {
            latch: self,
            key: LatchKey::default(),
        }
    }

    /// Poll for the latch to fire without a [`LatchWait`] (for a future that holds the
    /// latch itself): `key` is the waiter's slot, registered on the first call; give it
    /// back with [`Latch::forget`] when no longer waiting.
    pub fn poll_wait(&self, cx: &mut Context<'_>, key: &mut LatchKey) -> Poll<()> {
        if self.fired.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.waiters.borrow_mut();
        match key.0 {
            0 => {
                // Keys start at 1: 0 is "not registered".
                let k = self.next_key.get().wrapping_add(1).max(1);
                self.next_key.set(k);
                waiters.insert(k, cx.waker().clone());
                key.0 = k;
            }
            k => {
                if let Some(w) = waiters.get_mut(&k) {
                    if !w.will_wake(cx.waker()) {
                        *w = cx.waker().clone();
                    }
                }
            }
        }
        Poll::Pending
    }

    /// Take a [`Latch::poll_wait`] waiter's waker back out.
    pub fn forget(&self, key: &mut LatchKey) {
        match std::mem::take(&mut key.0) {
            0 => {}
            k => {
                self.waiters.borrow_mut().remove(&k);
            }
        }
    }

    /// Wakers registered now (for tests).
    pub fn waiting(&self) -> usize {
        self.waiters.borrow().len()
    }
}

/// A waiter's slot in a [`Latch`] (see [`Latch::poll_wait`]).
#[derive(Default)]
pub struct LatchKey(u64);

pub struct LatchWait<'a> {
    latch: &'a Latch,
    key: LatchKey,
}

impl Future for LatchWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.latch.poll_wait(cx, &mut this.key)
    }
}

impl Drop for LatchWait<'_> {
    fn drop(&mut self) {
        self.latch.forget(&mut self.key);
    }
}

/// Resolves when any of `latches` has fired.
pub async fn any_fired(latches: &[&Latch]) {
    let mut waits: Vec<LatchWait<'_>> = latches.iter().map(|l| l.wait()).collect();
    std::future::poll_fn(|cx| {
        for w in waits.iter_mut() {
            if Pin::new(w).poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Waker};

    #[test]
    fn latch_waits_deregister_when_dropped() {
        let latch = Latch::default();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..1000 {
            let mut w = latch.wait();
            assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
            assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
        }
        assert_eq!(latch.waiting(), 0);
        let mut a = latch.wait();
        let mut b = latch.wait();
        assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut b).poll(&mut cx).is_pending());
        assert_eq!(latch.waiting(), 2);
        latch.fire();
        assert!(Pin::new(&mut a).poll(&mut cx).is_ready());
        assert!(Pin::new(&mut b).poll(&mut cx).is_ready());
        assert!(Pin::new(&mut latch.wait()).poll(&mut cx).is_ready());
    }
}
