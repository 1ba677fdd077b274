//! Retry policy: exponential backoff with jitter, capped.

use std::time::Duration;

use rand::Rng;

/// Whether an error is worth another attempt. Each source and sink classifies
/// its own errors; the runner retries only transient ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// I/O hiccups, timeouts, lost connections: the same attempt may succeed later.
    Transient,
    /// Bad SQL, a missing column, a type mismatch: retrying cannot help.
    Permanent,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Extra attempts after the first.
    pub retries: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    pub fn new(retries: u32, base: Duration) -> Self {
        RetryPolicy {
            retries,
            base,
            cap: base.max(Duration::from_secs(60)),
        }
    }

    /// The wait after failed attempt `attempt` (1-based): `base * 2^(attempt-1)`
    /// capped, then "equal jitter" (half fixed, half random) so that parallel
    /// chunks failing together do not retry in lockstep.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1u32 << exp).min(self.cap);
        let half = full / 2;
        let jitter_nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(if jitter_nanos == 0 {
            0
        } else {
            rng.random_range(0..=jitter_nanos)
        })
    }

    pub fn should_retry(&self, attempt: u32, class: ErrorClass) -> bool {
        class == ErrorClass::Transient && attempt <= self.retries
    }
}

/// An error and its causes, each cause once: DataFusion and SQLite errors
/// often repeat their sources in their own message.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::new(5, Duration::from_secs(1));
        let mut rng = SmallRng::seed_from_u64(7);
        for attempt in 1..=10 {
            let d = p.delay(attempt, &mut rng);
            let full = Duration::from_secs(1u64 << (attempt - 1)).min(p.cap);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn only_transient_errors_are_retried() {
        let p = RetryPolicy::new(2, Duration::from_millis(1));
        assert!(p.should_retry(1, ErrorClass::Transient));
        assert!(p.should_retry(2, ErrorClass::Transient));
        assert!(!p.should_retry(3, ErrorClass::Transient));
        assert!(!p.should_retry(1, ErrorClass::Permanent));
    }
}
