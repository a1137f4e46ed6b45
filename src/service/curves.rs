//! Recording a run's loss curve as it trains: the training thread samples its progress into
//! points and sends them over a channel (it never waits on SQL); a task on the async side writes
//! them to the store in batches.

use std::time::Instant;

use tokio::sync::mpsc;

use crate::engine::train::{Phase, Progress, Report};
use crate::store::{CurvePoint, Store};

/// About this many training-loss points per run (evaluations add theirs).
const POINTS_PER_RUN: usize = 120;
/// Points written in one transaction at most.
const BATCH: usize = 64;

/// The training thread's end: turns progress into curve points and sends them.
pub(super) struct CurveSink {
    tx: mpsc::UnboundedSender<CurvePoint>,
    started: Instant,
    last_step: usize,
    /// Losses of the steps since the last point, summed, and how many.
    loss_sum: f64,
    losses: usize,
}

impl CurveSink {
    /// Called with every progress report; cheap, never blocks.
    pub(super) fn observe(&mut self, p: &Progress) {
        if p.phase != Phase::Training || p.step <= self.last_step {
            return;
        }
        if p.loss.is_finite() {
            self.loss_sum += f64::from(p.loss);
            self.losses += 1;
        }
        let stride = p.total_steps.div_ceil(POINTS_PER_RUN).max(1);
        let due = p.val_bits_per_byte.is_some() || p.step == 1 || p.step - self.last_step >= stride;
        if !due || self.losses == 0 {
            return;
        }
        let point = CurvePoint {
            step: p.step as i64,
            elapsed_ms: self.started.elapsed().as_millis() as i64,
            tokens: p.tokens as i64,
            train_loss: self.loss_sum / self.losses as f64,
            val_bpb: p.val_bits_per_byte,
        };
        (self.last_step, self.loss_sum, self.losses) = (p.step, 0.0, 0);
        // The writer is gone only if the run's task is: nothing to record into then.
        let _ = self.tx.send(point);
    }

    /// The last point: the final evaluation of a finished run, sent by the async side.
    pub(super) fn finish(&mut self, report: &Report) {
        let _ = self.tx.send(CurvePoint {
            step: report.steps as i64,
            elapsed_ms: (report.seconds * 1000.0) as i64,
            tokens: report.tokens as i64,
            train_loss: if self.losses > 0 {
                self.loss_sum / self.losses as f64
            } else {
                f64::from(report.train_loss)
            },
            val_bpb: Some(report.val_bits_per_byte),
        });
    }
}

/// Starts the writer of run `run_id`'s curve; it ends once every sink is dropped and what they
/// sent is written (await its handle before marking the run finished).
pub(super) fn record(store: Store, run_id: i64) -> (CurveSink, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            if let Err(e) = store.add_curve_points(run_id, &batch).await {
                // A curve with a gap is no reason to disturb the training.
                tracing::warn!(run = run_id, error = %e, "could not record loss-curve points");
            }
            batch.clear();
        }
    });
    let sink = CurveSink { tx, started: Instant::now(), last_step: 0, loss_sum: 0.0, losses: 0 };
    (sink, writer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(step: usize, total: usize, loss: f32, val: Option<f64>) -> Progress {
        Progress {
            phase: Phase::Training,
            step,
            total_steps: total,
            epoch: 0.0,
            loss,
            tokens: step as u64 * 100,
            tokens_per_second: 1.0,
            eta_seconds: 0.0,
            val_bits_per_byte: val,
        }
    }

    #[tokio::test]
    async fn a_long_run_is_sampled_with_mean_losses_and_every_evaluation_kept() {
        let store = Store::open_for_test().await.unwrap();
        let run = store.start_run("g", "command", None, 1, 10, None).await.unwrap();
        let (mut sink, writer) = record(store.clone(), run);
        let total = 1200;
        for step in 1..=total {
            let val = (step == 601).then_some(2.5);
            sink.observe(&progress(step, total, step as f32, val));
        }
        drop(sink);
        writer.await.unwrap();
        let curve = store.run_curve(run).await.unwrap();
        assert!((100..=130).contains(&curve.len()), "{} points", curve.len());
        assert_eq!(curve[0].step, 1);
        // Step 1's point, then the mean of steps 2..=11.
        assert_eq!((curve[1].step, curve[1].train_loss), (11, 6.5));
        let evaluated: Vec<_> = curve.iter().filter(|p| p.val_bpb.is_some()).map(|p| p.step).collect();
        assert_eq!(evaluated, vec![601]);
    }
}
