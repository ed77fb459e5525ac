//! When the peer phase asks a second provider: each node learns how long
//! providers take to answer (the 90th percentile of recent answers) and
//! hedges a provider that has not answered by then, within a budget, so
//! that a stalled or overloaded peer costs a client one hedge delay rather
//! than a stream timeout. At most one hedge per transfer start.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use crate::lock;

/// The hedge delay before any answer was seen: a LAN round trip and a
/// store lookup.
pub(crate) const INITIAL_DELAY: Duration = Duration::from_millis(50);
/// The delay's bounds, whatever the answers were.
const MIN_DELAY: Duration = Duration::from_millis(20);
const MAX_DELAY: Duration = Duration::from_secs(1);
/// Answers remembered for the percentile.
const SAMPLES: usize = 64;
/// The budget counts in tenths of a hedge: each transfer start earns one
/// (so at most one start in ten is hedged in the long run), a hedge costs
/// `HEDGE`, and at most `BURST` are saved up.
const HEDGE: u32 = 10;
const BURST: u32 = 8 * HEDGE;

/// A node's hedging state, shared by its flights.
pub(crate) struct Hedging {
    state: Mutex<State>,
}

struct State {
    answers: VecDeque<Duration>,
    /// In tenths of a hedge.
    budget: u32,
}

impl Default for Hedging {
    fn default() -> Self {
        Hedging {
            state: Mutex::new(State {
                answers: VecDeque::with_capacity(SAMPLES),
                budget: BURST,
            }),
        }
    }
}

impl Hedging {
    /// How long a provider may take to answer before a second is asked:
    /// the 90th percentile of recent answers, within 20 ms and 1 s.
    pub(crate) fn delay(&self) -> Duration {
        let state = lock(&self.state);
        if state.answers.is_empty() {
            return INITIAL_DELAY;
        }
        let mut answers: Vec<Duration> = state.answers.iter().copied().collect();
        answers.sort();
        let at = (answers.len() * 9 / 10).min(answers.len() - 1);
        answers[at].clamp(MIN_DELAY, MAX_DELAY)
    }

    /// A provider answered (with a transfer) after `took`.
    pub(crate) fn answered(&self, took: Duration) {
        let mut state = lock(&self.state);
        if state.answers.len() == SAMPLES {
            state.answers.pop_front();
        }
        state.answers.push_back(took);
    }

    /// Counts a transfer start towards the budget.
    pub(crate) fn started(&self) {
        let mut state = lock(&self.state);
        state.budget = (state.budget + 1).min(BURST);
    }

    /// Takes one hedge from the budget, if any is left.
    pub(crate) fn take(&self) -> bool {
        let mut state = lock(&self.state);
        if state.budget >= HEDGE {
            state.budget -= HEDGE;
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
    fn the_delay_is_the_90th_percentile_of_recent_answers_within_bounds() {
        let hedging = Hedging::default();
        assert_eq!(hedging.delay(), INITIAL_DELAY);
        for ms in 1..=100 {
            hedging.answered(Duration::from_millis(ms));
        }
        // The last 64 answers are 37..=100 ms: their 90th percentile.
        assert_eq!(hedging.delay(), Duration::from_millis(94));
        for _ in 0..SAMPLES {
            hedging.answered(Duration::from_millis(1));
        }
        assert_eq!(hedging.delay(), MIN_DELAY);
        for _ in 0..SAMPLES {
            hedging.answered(Duration::from_secs(30));
        }
        assert_eq!(hedging.delay(), MAX_DELAY);
    }

    #[test]
    fn hedges_come_in_a_burst_then_one_per_ten_starts() {
        let hedging = Hedging::default();
        for _ in 0..8 {
            assert!(hedging.take());
        }
        assert!(!hedging.take());
        for _ in 0..9 {
            hedging.started();
        }
        assert!(!hedging.take(), "nine starts earn less than a hedge");
        hedging.started();
        assert!(hedging.take());
        assert!(!hedging.take());
        for _ in 0..1_000 {
            hedging.started();
        }
        let burst = (0..100).filter(|_| hedging.take()).count();
        assert_eq!(burst, 8, "the budget never exceeds the burst");
    }
}
