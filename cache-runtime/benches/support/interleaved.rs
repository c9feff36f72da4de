//! The benches' one way to compare a subject with its baseline in the same run: alternating
//! short batches of each, so that machine noise (a shared 2-core machine) falls on both
//! evenly, and the median of the per-round ratios. Included by each bench with
//! `#[path = "support/interleaved.rs"] mod interleaved;` (a directory cargo does not take
//! for a bench of its own).

use std::future::Future;
use std::hint::black_box;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

/// Times `rounds` alternating batches of `batch` calls of `subject` and `baseline` (the order
/// flips every round, after one untimed round of each) and returns (median of the per-round
/// ratios subject / baseline, mean ns per subject call, mean ns per baseline call).
pub(crate) fn interleaved<S, SF, B, BF>(
    runtime: &Runtime,
    rounds: usize,
    batch: u32,
    mut subject: S,
    mut baseline: B,
) -> (f64, f64, f64)
where
    S: FnMut() -> SF,
    SF: Future,
    B: FnMut() -> BF,
    BF: Future,
{
    async fn time<F: Future>(batch: u32, call: &mut impl FnMut() -> F) -> Duration {
        let started = Instant::now();
        for _ in 0..batch {
            black_box(call().await);
        }
        started.elapsed()
    }
    runtime.block_on(async {
        // One untimed round to settle caches and branch predictors.
        time(batch, &mut subject).await;
        time(batch, &mut baseline).await;
        let mut ratios = Vec::with_capacity(rounds);
        let (mut subject_total, mut baseline_total) = (Duration::ZERO, Duration::ZERO);
        for round in 0..rounds {
            let (s, b) = if round % 2 == 0 {
                let s = time(batch, &mut subject).await;
                (s, time(batch, &mut baseline).await)
            } else {
                let b = time(batch, &mut baseline).await;
                (time(batch, &mut subject).await, b)
            };
            subject_total += s;
            baseline_total += b;
            ratios.push(s.as_secs_f64() / b.as_secs_f64());
        }
        ratios.sort_by(f64::total_cmp);
        let calls = (rounds as u32 * batch) as f64;
        (
            ratios[rounds / 2],
            subject_total.as_nanos() as f64 / calls,
            baseline_total.as_nanos() as f64 / calls,
        )
    })
}
