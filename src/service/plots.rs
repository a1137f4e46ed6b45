//! The pictures' figures gathered from the store and drawn off the async threads: a guild's
//! picture (`!llmstats`, `mynah stats --plot`) and a run's loss curve (`/api/ml/runs/{id}/loss.png`).

use super::{check_guild_id, Core, ServiceError};
use crate::plot::{self, Curve, GuildFigures, PlotError, RunFigure};
use crate::store::{CurvePoint, RunOutcome, RunRow};

/// Runs read for the runs chart (the newest successful ones are drawn).
const RECENT_RUNS: i64 = 30;

impl Core {
    /// The guild's picture as PNG: its recent runs' validation figures, the running (or else
    /// the latest) run's curve, and messages per day. `name` heads it when known.
    pub async fn guild_picture(&self, guild_id: &str, name: Option<&str>) -> Result<Vec<u8>, ServiceError> {
        check_guild_id(guild_id)?;
        let runs = self.store.runs(Some(guild_id), RECENT_RUNS).await?;
        let curve = match runs.first() {
            Some(run) => Some(curve(run, self.store.run_curve(run.id).await?)),
            None => None,
        };
        let days = self.store.messages_per_day(guild_id, plot::MAX_DAYS as i64).await?;
        let figures = GuildFigures {
            title: match name {
                Some(name) => format!("mynah in {name}: how it learns"),
                None => format!("mynah in guild {guild_id}: how it learns"),
            },
            runs: runs.iter().filter_map(run_figure).collect(),
            curve,
            days: days.iter().map(|d| plot::DayCount { day: d.day, messages: d.messages }).collect(),
        };
        draw(move || plot::guild_png(&figures)).await
    }

    /// Run `run_id`'s loss curve as stored so far (empty for an unknown run).
    pub async fn run_curve(&self, run_id: i64) -> Result<Vec<CurvePoint>, ServiceError> {
        Ok(self.store.run_curve(run_id).await?)
    }

    /// Run `run_id`'s loss curve as PNG; `None` if there is no such run.
    pub async fn run_loss_picture(&self, run_id: i64) -> Result<Option<Vec<u8>>, ServiceError> {
        let Some(run) = self.store.run(run_id).await? else { return Ok(None) };
        let mut curve = curve(&run, self.store.run_curve(run_id).await?);
        curve.title = format!("{}, guild {}", curve.title, run.guild_id);
        draw(move || plot::run_png(&curve)).await.map(Some)
    }
}

/// Drawing is CPU work: it runs on the blocking pool.
async fn draw(
    f: impl FnOnce() -> Result<Vec<u8>, PlotError> + Send + 'static,
) -> Result<Vec<u8>, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::Plot(PlotError::Draw(format!("the drawing task failed: {e}"))))?
        .map_err(ServiceError::Plot)
}

/// A run's stored curve, titled with its ID and how it stands.
fn curve(run: &RunRow, points: Vec<CurvePoint>) -> Curve {
    Curve {
        title: format!("Run {} ({})", run.id, run.outcome),
        points: points
            .into_iter()
            .map(|p| plot::CurvePoint {
                step: p.step.max(0) as u64,
                train_loss: p.train_loss,
                val_bpb: p.val_bpb,
            })
            .collect(),
    }
}

/// A successful run's validation figure, for the runs chart.
fn run_figure(run: &RunRow) -> Option<RunFigure> {
    if run.outcome != RunOutcome::Succeeded {
        return None;
    }
    Some(RunFigure { id: run.id, finished_ms: run.finished_ms?, val_bpb: run.val_bpb? })
}
