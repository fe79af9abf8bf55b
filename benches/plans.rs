//! The plan path's costs: admission (slot CAS + release), a lease from the global ledger,
//! and the per-read charge a relay pays (`Meter::poll_allow` + `Meter::add_up`), which touches
//! only core-local `Cell`s. `cargo bench --bench plans`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::task::{Context, Poll, Waker};
use tollgate::plan::ledger::AccountState;
use tollgate::plan::shard::{Charge, Shard};
use tollgate::relay::Meter;

/// The relay's call: `poll_allow` from inside a poll (never pending on a single node).
fn allow(meter: &Meter, want: usize) -> usize {
    let mut cx = Context::from_waker(Waker::noop());
    match meter.poll_allow(&mut cx, want) {
        Poll::Ready(n) => n,
        Poll::Pending => 0,
    }
}

fn plans(c: &mut Criterion) {
    let state = AccountState::new("alice", u64::MAX / 2, 1_000_000, 0, 0);

    c.bench_function("admission_slot_acquire_release", |b| {
        b.iter(|| drop(black_box(state.try_acquire())))
    });

    c.bench_function("ledger_lease_and_return", |b| {
        b.iter(|| {
            let got = state.lease(black_box(16));
            state.give_back(got);
        })
    });

    let shard = Shard::new(16, Default::default());
    let meter = Meter::default();
    // Nothing was read before the bind, so it completes at once.
    futures_lite::future::block_on(meter.bind(Charge::new(shard.local(&state))));
    c.bench_function("per_read_charge_16KiB", |b| {
        b.iter(|| {
            let n = allow(&meter, black_box(16 * 1024));
            meter.add_up(n);
        })
    });
    c.bench_function("per_read_charge_down_16KiB", |b| {
        b.iter(|| {
            let n = allow(&meter, black_box(16 * 1024));
            meter.read_for_client(n);
            meter.add_down(n);
        })
    });
}

criterion_group!(benches, plans);
criterion_main!(benches);
