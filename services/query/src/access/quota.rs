//! Per-caller quotas: a token bucket for requests per second and one for model tokens per
//! minute. A request is admitted while its caller's bucket holds at least one unit; model
//! tokens are charged when their count is known, so a large call may take the bucket below
//! zero and its caller then waits until it refills (the retry hint says how long).

use std::time::{Duration, Instant};

/// A token bucket refilled at `rate` units per second up to `capacity`.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    capacity: f64,
    level: f64,
    updated: Instant,
}

impl Bucket {
    /// A full bucket; `capacity` is the largest burst.
    pub fn new(rate: f64, capacity: f64, now: Instant) -> Self {
        Bucket { rate, capacity, level: capacity, updated: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.rate).min(self.capacity);
        self.updated = now;
    }

    /// Takes one unit if the bucket holds one; else how long until it will.
    pub fn take_one(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level >= 1.0 {
            self.level -= 1.0;
            Ok(())
        } else {
            Err(self.wait_for(1.0))
        }
    }

    /// Whether anything is left (a call that will charge later may start).
    pub fn check_positive(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level > 0.0 {
            Ok(())
        } else {
            Err(self.wait_for(f64::MIN_POSITIVE))
        }
    }

    /// Charges `units`, going below zero if need be.
    pub fn charge(&mut self, units: f64, now: Instant) {
        self.refill(now);
        self.level -= units;
    }

    fn wait_for(&self, units: f64) -> Duration {
        Duration::from_secs_f64(((units - self.level) / self.rate).max(0.001))
    }
}

/// The quotas of one caller; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaLimits {
    pub requests_per_second: Option<f64>,
    pub model_tokens_per_minute: Option<u64>,
}

/// One caller's buckets.
#[derive(Debug)]
pub struct CallerQuota {
    pub limits: QuotaLimits,
    requests: Option<Bucket>,
    model_tokens: Option<Bucket>,
}

impl CallerQuota {
    pub fn new(limits: QuotaLimits, now: Instant) -> Self {
        // A second's worth of requests (at least one) and a minute's worth of model tokens.
        let requests = limits.requests_per_second.map(|rps| Bucket::new(rps, rps.max(1.0), now));
        let model_tokens = limits.model_tokens_per_minute.map(|tpm| Bucket::new(tpm as f64 / 60.0, tpm as f64, now));
        CallerQuota { limits, requests, model_tokens }
    }

    /// Admits a request: one unit of the request bucket, and for a model call some model
    /// tokens left.
    pub fn admit(&mut self, model_call: bool, now: Instant) -> Result<(), (Duration, &'static str)> {
        if let Some(bucket) = &mut self.model_tokens {
            if model_call {
                bucket.check_positive(now).map_err(|wait| (wait, "model tokens per minute"))?;
            }
        }
        if let Some(bucket) = &mut self.requests {
            bucket.take_one(now).map_err(|wait| (wait, "requests per second"))?;
        }
        Ok(())
    }

    pub fn charge_model_tokens(&mut self, tokens: usize, now: Instant) {
        if let Some(bucket) = &mut self.model_tokens {
            bucket.charge(tokens as f64, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_admits_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut quota = CallerQuota::new(QuotaLimits { requests_per_second: Some(10.0), model_tokens_per_minute: None }, t0);
        for _ in 0..10 {
            quota.admit(false, t0).unwrap();
        }
        let (wait, what) = quota.admit(false, t0).unwrap_err();
        assert_eq!(what, "requests per second");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // A tenth of a second refills one request, and only one.
        let t1 = t0 + Duration::from_millis(100);
        quota.admit(false, t1).unwrap();
        assert!(quota.admit(false, t1).is_err());
    }

    #[test]
    fn model_tokens_are_charged_after_the_fact_and_wait_off_the_debt() {
        let t0 = Instant::now();
        let mut quota = CallerQuota::new(QuotaLimits { requests_per_second: None, model_tokens_per_minute: Some(600) }, t0);
        quota.admit(true, t0).unwrap();
        quota.charge_model_tokens(900, t0); // 300 in debt, refilled at 10 per second
        let (wait, what) = quota.admit(true, t0).unwrap_err();
        assert_eq!(what, "model tokens per minute");
        assert!((wait.as_secs_f64() - 30.0).abs() < 0.01, "{wait:?}");
        quota.admit(false, t0).unwrap(); // calls without the model are not held back
        quota.admit(true, t0 + Duration::from_secs(31)).unwrap();
    }
}
