//! The zero-loss search (RFC 2544 style), shared by the throughput cases and the soak: a binary
//! search over the offered rate for the highest rate at which every frame sent is delivered.

use crate::cases::Sample;

/// Searches between 0 and `high` pps in `steps` trials, each a run at the midpoint of what is
/// left (`trial(rate)`); returns the highest lossless rate tried (0 if none) and the trials,
/// in order.
pub(crate) fn zero_loss(
    high: u64,
    steps: usize,
    mut trial: impl FnMut(u64) -> anyhow::Result<Sample>,
) -> anyhow::Result<(u64, Vec<Sample>)> {
    let (mut low, mut high) = (0u64, high);
    let mut trials = Vec::with_capacity(steps);
    for _ in 0..steps {
        let rate = (low + high) / 2;
        let sample = trial(rate)?;
        if sample.lossless() {
            low = rate;
        } else {
            high = rate;
        }
        trials.push(sample);
    }
    Ok((low, trials))
}
