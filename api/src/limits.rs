//! Per-key token buckets: mutating calls per principal, and failed authentications per
//! client address. A refusal says when to try again (`retry-after`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Refills `per_minute` tokens a minute up to `per_minute`; 0 turns the limit off.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets are forgotten when this many keys are held (they are refilled by then anyway
/// for any key idle over a minute): memory stays bounded under a flood of keys.
const MAX_KEYS: usize = 100_000;

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        RateLimiter {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, b: Bucket, now: Instant) -> Bucket {
        let rate = f64::from(self.per_minute) / 60.0;
        Bucket {
            tokens: (b.tokens + now.duration_since(b.at).as_secs_f64() * rate)
                .min(f64::from(self.per_minute)),
            at: now,
        }
    }

    /// How long until one token is back.
    fn wait(&self, b: Bucket) -> Duration {
        let rate = f64::from(self.per_minute) / 60.0;
        Duration::from_secs_f64(((1.0 - b.tokens) / rate).max(0.0)).max(Duration::from_secs(1))
    }

    /// Takes one token for `key`, or answers how long to wait.
    pub fn take(&self, key: &str) -> Result<(), Duration> {
        self.update(key, true)
    }

    /// Answers how long to wait if `key` has no token left, without taking one.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.update(key, false)
    }

    fn update(&self, key: &str, take: bool) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            buckets.clear();
        }
        let full = Bucket {
            tokens: f64::from(self.per_minute),
            at: now,
        };
        let b = self.refilled(*buckets.get(key).unwrap_or(&full), now);
        if b.tokens < 1.0 {
            buckets.insert(key.to_owned(), b);
            return Err(self.wait(b));
        }
        let b = Bucket {
            tokens: if take { b.tokens - 1.0 } else { b.tokens },
            at: now,
        };
        buckets.insert(key.to_owned(), b);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_empties_per_key_and_says_when_to_come_back() {
        let l = RateLimiter::new(3);
        for _ in 0..3 {
            assert!(l.take("alice").is_ok());
        }
        let wait = l
            .take("alice")
            .expect_err("the fourth in a minute is refused");
        assert!(
            wait >= Duration::from_secs(1) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(l.check("alice").is_err());
        assert!(l.take("bob").is_ok(), "other keys are not affected");
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let l = RateLimiter::new(0);
        for _ in 0..1000 {
            assert!(l.take("k").is_ok());
        }
    }
}
