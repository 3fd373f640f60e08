//! How a fast-path endpoint waits when its rings are empty (feature `fast-path`; see "Waiting"
//! under "The fast path" in docs/ARCHITECTURE.md): a bounded spin kept only while spinning pays
//! ([`AdaptiveSpin`]), and an optional short sleep after a busy stretch that lets NAPI hand over
//! a batch before the thread sleeps in poll(2) ([`BatchWait`]).
//!
//! Both are decisions only; the client does the spinning and sleeping.

use std::time::Duration;

/// The longest spin before a sleep: about what one sleep in poll(2) and its wakeup cost the
/// thread, so a spin never costs more than the sleep it may save. A spin that "finds" frames
/// often found them only because NAPI preempted it, so longer spins mostly add CPU: at 50,000
/// datagrams/s 20 µs cost 14,000 ns a datagram against 6,000 with 5 µs or none (docs/BENCHMARKS.md,
/// "Full run after the third merge").
pub const SPIN: Duration = Duration::from_micros(5);

/// After this many spins in a row found nothing, the spin is skipped for up to this many
/// waits (the back-off doubles from 1).
pub const MAX_SKIP: u32 = 64;

/// The longest batch wait [`BatchWait::set`] takes.
pub const MAX_BATCH_WAIT: Duration = Duration::from_millis(1);

/// Whether to spin before the next sleep. A spin catches the next batch without a wakeup when
/// NAPI runs elsewhere (another CPU, or a softirq that interrupts the spin); when NAPI is a
/// thread on the client's own CPU it cannot run while the client spins, the spin finds nothing
/// and is pure loss. So: a spin that finds nothing makes the next 1, 2, 4, … [`MAX_SKIP`] waits
/// go to sleep at once; one that finds frames spins again next time.
#[derive(Debug, Default)]
pub struct AdaptiveSpin {
    skip: u32,
    backoff: u32,
}

impl AdaptiveSpin {
    /// Whether to spin before this sleep (a skipped wait counts down the back-off).
    pub fn should_spin(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    /// What the last spin found.
    pub fn spun(&mut self, found: bool) {
        if found {
            self.backoff = 0;
        } else {
            self.backoff = (self.backoff * 2).clamp(1, MAX_SKIP);
            self.skip = self.backoff;
        }
    }
}

/// User-space interrupt moderation, off unless asked for (`Endpoint::set_batch_wait`): when a
/// receive that found datagrams is followed by an empty look, the endpoint sleeps the set time
/// once (a timed sleep: no wait queue, so NAPI's batches in the meantime wake nobody) and then
/// drains what gathered, instead of sleeping in poll(2) and being woken for every few
/// datagrams. Fewer wakeups per datagram, traded for up to the wait (plus the thread's timer
/// slack, 50 µs by default) of latency. An idle endpoint never waits this way: the next empty
/// look sleeps in poll(2).
#[derive(Debug, Default)]
pub struct BatchWait {
    wait: Duration,
    /// Datagrams came since the last batch wait.
    flowing: bool,
}

impl BatchWait {
    /// Sets the wait (zero: off), at most [`MAX_BATCH_WAIT`].
    pub fn set(&mut self, wait: Duration) {
        self.wait = wait.min(MAX_BATCH_WAIT);
    }

    /// A receive handed over `n` datagrams.
    pub fn received(&mut self, n: usize) {
        if n > 0 {
            self.flowing = true;
        }
    }

    /// The rings are empty: how long to sleep before looking again, if at all (then once per
    /// busy stretch).
    pub fn before_sleep(&mut self) -> Option<Duration> {
        if self.wait.is_zero() || !self.flowing {
            return None;
        }
        self.flowing = false;
        Some(self.wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spin_that_finds_nothing_is_skipped_longer_each_time_up_to_the_bound() {
        let mut spin = AdaptiveSpin::default();
        let mut skipped_runs = Vec::new();
        for _ in 0..10 {
            assert!(spin.should_spin());
            spin.spun(false);
            let mut skipped = 0;
            while !spin.should_spin() {
                skipped += 1;
                assert!(skipped <= MAX_SKIP, "skipped past the bound");
            }
            skipped_runs.push(skipped);
            // `should_spin` said yes: that spin happens and finds nothing again next loop.
            spin.skip = 0;
        }
        assert_eq!(skipped_runs, [1, 2, 4, 8, 16, 32, 64, 64, 64, 64]);
    }

    #[test]
    fn a_spin_that_finds_frames_spins_again_next_time() {
        let mut spin = AdaptiveSpin::default();
        for _ in 0..5 {
            spin.spun(false);
            while !spin.should_spin() {}
        }
        spin.spun(true);
        assert!(spin.should_spin(), "a paying spin was skipped");
        spin.spun(false);
        assert!(!spin.should_spin(), "the back-off did not start over at 1");
        assert!(spin.should_spin());
    }

    #[test]
    fn a_batch_wait_comes_once_per_busy_stretch_and_never_when_idle() {
        let mut wait = BatchWait::default();
        wait.received(10);
        assert_eq!(wait.before_sleep(), None, "on while never set");
        wait.set(Duration::from_micros(30));
        assert_eq!(wait.before_sleep(), Some(Duration::from_micros(30)));
        assert_eq!(
            wait.before_sleep(),
            None,
            "twice without datagrams in between"
        );
        wait.received(0);
        assert_eq!(
            wait.before_sleep(),
            None,
            "an empty receive is no busy stretch"
        );
        wait.received(1);
        assert_eq!(wait.before_sleep(), Some(Duration::from_micros(30)));
        wait.set(Duration::from_secs(5));
        wait.received(1);
        assert_eq!(wait.before_sleep(), Some(MAX_BATCH_WAIT), "unbounded");
        wait.set(Duration::ZERO);
        wait.received(1);
        assert_eq!(wait.before_sleep(), None, "still on after set to zero");
    }
}
