//! Pacing for `--rate`: frames fall due evenly at the rate asked. A sender that falls behind
//! (preempted, or its vCPU taken by the hypervisor) sends at most `max_burst` overdue frames back
//! to back and forgives the rest, as a constant-rate tester does (RFC 2544 spaces frames
//! evenly): a stall of the sender then reaches the receiver as a gap, never as a burst far above
//! the rate asked, which a receiver fast enough for the rate could still not take. The frames
//! forgiven are counted, and the rate offered is what was sent over the time it took.

use std::time::Instant;

pub(crate) struct Pacer {
    /// Frames per second; 0: every frame is due at once.
    rate: u64,
    /// Frames to send in all.
    count: u64,
    /// The most overdue frames sent back to back.
    max_burst: u64,
    started: Instant,
    /// Frames that fell due while the sender was behind by more than `max_burst`, not sent.
    forgiven: u64,
}

impl Pacer {
    pub(crate) fn new(rate: u64, count: u64, max_burst: u64) -> Self {
        Self {
            rate,
            count,
            max_burst: max_burst.max(1),
            started: Instant::now(),
            forgiven: 0,
        }
    }

    /// How many frames may have been sent by now, `sent` of them sent so far (never less than
    /// `sent`).
    pub(crate) fn allowed(&mut self, sent: u64) -> u64 {
        if self.rate == 0 {
            return self.count.max(sent);
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        self.allowed_after(elapsed, sent)
    }

    fn allowed_after(&mut self, elapsed: f64, sent: u64) -> u64 {
        let due = ((elapsed * self.rate as f64) as u64).saturating_sub(self.forgiven);
        let most = sent + self.max_burst;
        if due > most {
            self.forgiven += due - most;
        }
        due.min(most).min(self.count).max(sent)
    }

    /// Frames forgiven so far (the sender was behind by more than `max_burst`).
    pub(crate) fn forgiven(&self) -> u64 {
        self.forgiven
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_fall_due_at_the_rate() {
        let mut pacer = Pacer::new(1_000, 1_000_000, 64);
        assert_eq!(pacer.allowed_after(0.010, 0), 10);
        assert_eq!(pacer.allowed_after(0.020, 10), 20);
        assert_eq!(pacer.forgiven(), 0);
    }

    #[test]
    fn a_stalled_sender_sends_at_most_max_burst_and_forgives_the_rest() {
        let mut pacer = Pacer::new(1_000, 1_000_000, 64);
        assert_eq!(pacer.allowed_after(0.010, 10), 10);
        // 100 ms later, 100 frames are due: 64 go back to back, 36 are forgiven.
        assert_eq!(pacer.allowed_after(0.110, 10), 74);
        assert_eq!(pacer.forgiven(), 36);
        // Then the schedule goes on from where the burst left it, not from the stall.
        assert_eq!(pacer.allowed_after(0.111, 74), 75);
        assert_eq!(pacer.forgiven(), 36);
    }

    #[test]
    fn never_beyond_the_count_nor_below_what_was_sent() {
        let mut pacer = Pacer::new(1_000_000, 50, 64);
        assert_eq!(pacer.allowed_after(1.0, 0), 50);
        let mut unpaced = Pacer::new(0, 50, 64);
        assert_eq!(unpaced.allowed(60), 60);
        assert_eq!(unpaced.allowed(0), 50);
    }
}
