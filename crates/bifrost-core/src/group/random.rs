//! Cheap randomness for jitter and lease ids: a per-thread xorshift generator seeded
//! from the operating system (through a v4 UUID), so no extra dependency is needed.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let bytes = uuid::Uuid::new_v4().as_u64_pair();
    (bytes.0 ^ bytes.1) | 1
}

/// A uniformly distributed `u64`.
pub fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

/// A uniformly distributed number in `[0, 1)`.
pub fn unit() -> f64 {
    (next_u64() >> 11) as f64 / (1u64 << 53) as f64
}
