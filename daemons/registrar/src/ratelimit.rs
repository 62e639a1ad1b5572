//! Per-source token buckets for Register and Activate (`registration_rate_limit` per minute).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sources not seen for this long are forgotten (their bucket would be full again anyway).
const IDLE: Duration = Duration::from_secs(120);
/// How many sources may be tracked before idle ones are swept.
const SWEEP_AT: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A token bucket per source address: `per_minute` requests of burst, refilled continuously at
/// `per_minute` per minute. `per_minute = 0` turns limiting off.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_minute: u64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub fn new(per_minute: u64) -> RateLimiter {
        RateLimiter { per_minute, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes a token for `source`; false when its bucket is empty.
    pub fn allow(&self, source: IpAddr) -> bool {
        self.allow_at(source, Instant::now())
    }

    fn allow_at(&self, source: IpAddr, now: Instant) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let capacity = self.per_minute as f64;
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= SWEEP_AT {
            buckets.retain(|_, b| now.saturating_duration_since(b.updated) < IDLE);
        }
        let bucket = buckets.entry(source).or_insert(Bucket { tokens: capacity, updated: now });
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
}
