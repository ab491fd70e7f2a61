//! The one interface the scheduler calls: a [`Backend`] answers calls. Which backend answers
//! which call (local inference, an HTTP endpoint, the tool sandbox, a recorded run) is decided
//! by whoever assembles them; the scheduler only sees this trait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::{Answer, Call, CallError, Cancel, Site};

pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<Answer, CallError>> + Send + 'a>>;

/// Told the number of tokens generated so far, as they come (for progress displays).
pub type OnTokens = Arc<dyn Fn(u64) + Send + Sync>;

/// Executes calls. Implementations must give up promptly once `cancel` fires.
pub trait Backend: Send + Sync {
    fn call<'a>(
        &'a self,
        site: &'a Site,
        call: &'a Call,
        cancel: &'a Cancel,
        on_tokens: &'a OnTokens,
    ) -> CallFuture<'a>;
}

/// Answers of earlier identical calls, for steps marked `cache: true`. `call` is the call as
/// JSON, exactly as recorded.
pub trait Cache: Send + Sync {
    fn lookup(&self, call: &serde_json::Value) -> Option<Answer>;
}

/// Exponential backoff with full jitter: a uniformly random wait in [0, base * 2^(attempt-1)],
/// capped at `max`. Spreads retries of many callers instead of synchronising them.
pub fn backoff(base: Duration, max: Duration, attempt: u32, seed: u64) -> Duration {
    let ceiling = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max);
    // splitmix64: jitter needs spread, not cryptographic randomness.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(u64::from(attempt) + 1));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ceiling.mul_f64((z >> 11) as f64 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jittered_and_capped() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(1));
        for attempt in 1..10 {
            let ceiling = Duration::from_millis(100 << (attempt - 1)).min(max);
            let waits: Vec<Duration> = (0..50)
                .map(|seed| backoff(base, max, attempt, seed))
                .collect();
            assert!(waits.iter().all(|w| *w <= ceiling), "attempt {attempt}");
            let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
            assert!(distinct.len() > 40, "jitter spreads the waits");
        }
    }
}
