//! Per-source token buckets for Register and Activate (`registration_rate_limit` per minute).
//!
//! A source is an IPv4 address or an IPv6 /64 (one host commonly holds a whole /64, so counting
//! IPv6 addresses one by one would not limit anybody). The buckets live in two generations: a
//! source seen during the current period is in `current`; at the end of each period `current`
//! becomes `previous` and the old `previous` is dropped. A bucket idle for a whole period is full
//! again (a period is the refill time), so forgetting it changes nothing. The number of sources
//! tracked is bounded: when `current` reaches [`MAX_SOURCES`] the period ends early, which can
//! only forget buckets, never block a source wrongly. Every call is O(1) amortised.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a bucket takes to refill, and so how long a generation lasts.
const PERIOD: Duration = Duration::from_secs(60);
/// Most sources tracked in one generation.
pub(crate) const MAX_SOURCES: usize = 65_536;

/// What a bucket is kept for: an IPv4 address, or the first 64 bits of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6Prefix(u64),
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => Source::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug)]
struct Generations {
    current: HashMap<Source, Bucket>,
    previous: HashMap<Source, Bucket>,
    started: Instant,
}

/// A token bucket per source: `per_minute` requests of burst, refilled continuously at
/// `per_minute` per minute. `per_minute = 0` turns limiting off.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_minute: u64,
    buckets: Mutex<Generations>,
}

impl RateLimiter {
    pub fn new(per_minute: u64) -> RateLimiter {
        let generations = Generations {
            current: HashMap::new(),
            previous: HashMap::new(),
            started: Instant::now(),
        };
        RateLimiter { per_minute, buckets: Mutex::new(generations) }
    }

    /// Takes a token for `source`; false when its bucket is empty.
    pub fn allow(&self, source: IpAddr) -> bool {
        self.allow_at(source, Instant::now())
    }

    fn allow_at(&self, source: IpAddr, now: Instant) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let source = Source::of(source);
        let capacity = self.per_minute as f64;
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let generations = &mut *buckets;
        if now.saturating_duration_since(generations.started) >= PERIOD
            || generations.current.len() >= MAX_SOURCES
        {
            generations.previous = std::mem::take(&mut generations.current);
            generations.started = now;
        }
        let carried = generations.previous.remove(&source);
        let bucket = generations
            .current
            .entry(source)
            .or_insert_with(|| carried.unwrap_or(Bucket { tokens: capacity, updated: now }));
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        let buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        buckets.current.len() + buckets.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_per_source() {
        let limiter = RateLimiter::new(60);
        let (a, b): (IpAddr, IpAddr) = ([192, 0, 2, 1].into(), [192, 0, 2, 2].into());
        let start = Instant::now();
        assert!((0..60).all(|_| limiter.allow_at(a, start)));
        assert!(!limiter.allow_at(a, start));
        assert!(limiter.allow_at(b, start), "another source has its own bucket");
        assert!(!limiter.allow_at(a, start + Duration::from_millis(500)));
        assert!(limiter.allow_at(a, start + Duration::from_millis(1000)), "one token a second");
        assert!(!limiter.allow_at(a, start + Duration::from_millis(1000)));
    }

    #[test]
    fn zero_means_unlimited() {
        let limiter = RateLimiter::new(0);
        let a: IpAddr = [192, 0, 2, 1].into();
        assert!((0..10_000).all(|_| limiter.allow(a)));
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source() {
        let limiter = RateLimiter::new(2);
        let start = Instant::now();
        let host = |n: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, n]);
        assert!(limiter.allow_at(host(1), start));
        assert!(limiter.allow_at(host(2), start));
        assert!(!limiter.allow_at(host(3), start), "another address of the same /64");
        assert!(limiter.allow_at(IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]), start));
        // An IPv4-mapped address counts as its IPv4 address.
        let v4: IpAddr = [192, 0, 2, 1].into();
        assert!(limiter.allow_at(v4, start));
        assert!(limiter.allow_at(IpAddr::from([0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0201]), start));
        assert!(!limiter.allow_at(v4, start));
    }

    #[test]
    fn tracked_sources_are_bounded_and_an_active_source_keeps_its_bucket() {
        let limiter = RateLimiter::new(1);
        let start = Instant::now();
        let limited: IpAddr = [192, 0, 2, 1].into();
        assert!(limiter.allow_at(limited, start));
        // Many active sources within one period, each of them used.
        for n in 0..(3 * MAX_SOURCES as u32) {
            let now = start + Duration::from_micros(u64::from(n));
            assert!(
                limiter.allow_at(IpAddr::from(std::net::Ipv4Addr::from((10u32 << 24) + n)), now)
            );
            assert!(limiter.tracked() <= 2 * MAX_SOURCES, "{} sources", limiter.tracked());
        }
        // A limited source stays limited across the generations.
        let busy: IpAddr = [198, 51, 100, 1].into();
        let limiter = RateLimiter::new(60);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert!((0..60).all(|_| limiter.allow_at(busy, at(59_500))));
        // A new generation starts at 60 s; the bucket has refilled one token since.
        assert!(limiter.allow_at(busy, at(60_500)));
        assert!(!limiter.allow_at(busy, at(60_500)), "forgotten at a new generation");
        // Emptied again just before the next generation (at 120.5 s).
        assert_eq!((0..100).filter(|_| limiter.allow_at(busy, at(120_400))).count(), 59);
        // 0.9 token left, 0.6 refilled by 121 s: one, not a fresh bucket.
        assert!(limiter.allow_at(busy, at(121_000)));
        assert!(!limiter.allow_at(busy, at(121_000)), "forgotten at the second generation");
    }
}
