//! Log output whose volume no peer can drive: every log line's call site
//! may print a burst, then a few lines a second; what it had to drop is
//! summed up in one line per call site every `SUMMARY_EVERY`. A flood of
//! provider records once made libp2p log 738,304 lines (95 MB) in 10 s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter};

/// Lines a call site may print at once.
pub const BURST: f64 = 50.0;
/// Lines a second a call site may print after its burst.
pub const PER_SECOND: f64 = 5.0;
/// How often dropped lines are summed up.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// A token bucket per call site.
struct Bucket {
    /// `target: file:line` of the call site, for the summary.
    name: String,
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

/// The shared state of a [`RateLimit`] filter.
#[derive(Clone, Default)]
pub struct RateLimit {
    buckets: Arc<Mutex<HashMap<Identifier, Bucket>>>,
}

impl RateLimit {
    pub fn new() -> Self {
        Self::default()
    }

    fn admit(&self, metadata: &'static Metadata<'static>) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets
            .entry(metadata.callsite())
            .or_insert_with(|| Bucket {
                name: format!(
                    "{}: {}:{}",
                    metadata.target(),
                    metadata.file().unwrap_or("?"),
                    metadata.line().unwrap_or(0)
                ),
                tokens: BURST,
                refilled: now,
                dropped: 0,
            });
        let earned = now.duration_since(bucket.refilled).as_secs_f64() * PER_SECOND;
        bucket.tokens = (bucket.tokens + earned).min(BURST);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            bucket.dropped += 1;
            false
        }
    }

    /// The call sites that dropped lines since the last call, with how many.
    pub fn take_dropped(&self) -> Vec<(String, u64)> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .values_mut()
            .filter(|b| b.dropped > 0)
            .map(|b| (b.name.clone(), std::mem::take(&mut b.dropped)))
            .collect()
    }

    /// Logs, every `SUMMARY_EVERY` on a thread of its own, how many lines
    /// each call site dropped.
    pub fn summarise_periodically(&self) {
        let limit = self.clone();
        let spawned = std::thread::Builder::new()
            .name("log-summary".into())
            .spawn(move || loop {
                std::thread::sleep(SUMMARY_EVERY);
                for (site, dropped) in limit.take_dropped() {
                    tracing::warn!(target: "peerpi::logging", %site, dropped, "log lines dropped (over {PER_SECOND}/s after a burst of {BURST})");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the log summary thread: {e}; dropped lines go uncounted");
        }
    }
}

impl<S: Subscriber> Filter<S> for RateLimit {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, _: &Context<'_, S>) -> bool {
        self.admit(event.metadata())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_flood_from_one_call_site_prints_its_burst_and_is_counted() {
        let out = Lines::default();
        let writer = out.clone();
        let limit = RateLimit::new();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_filter(limit.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..100_000 {
                tracing::info!(i, "provider record not stored");
            }
            tracing::info!("another call site is not silenced");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines = text.lines().count();
        assert!((50..=60).contains(&lines), "{lines} lines printed");
        assert!(text.contains("another call site"));
        let dropped: u64 = limit.take_dropped().iter().map(|(_, n)| n).sum();
        assert!(dropped >= 99_940, "{dropped}");
        assert!(limit.take_dropped().is_empty(), "counted once");
    }
}
