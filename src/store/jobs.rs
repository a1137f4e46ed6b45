//! The training job queue of `MYNAH_TRAINING=workers`: requests as rows, claimed by `mynah
//! worker` processes with `FOR UPDATE SKIP LOCKED` for a lease they renew while they train (a
//! worker that dies leaves its job to be claimed again once the lease runs out); and the
//! `NOTIFY` channels through which processes on one PostgreSQL tell each other of changes.

use serde::Serialize;
use sqlx::Row;

use super::{now_ms, Backend, BindReal, Result, Store, StoreError};

/// The channel on which a new model in `model_bundles` is announced: `GUILD RUN` as payload.
pub const MODELS_CHANNEL: &str = "mynah_models";
/// The channel on which a change of consent or reply modes is announced, the guild as payload:
/// every process reloads what it caches of them.
pub const SETTINGS_CHANNEL: &str = "mynah_settings";
/// The channel on which a new job is announced (workers wake up at once instead of polling).
pub const JOBS_CHANNEL: &str = "mynah_jobs";

/// Where a job stands: stored as text in `training_jobs.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    fn parse(text: &str) -> Result<JobState> {
        [JobState::Queued, JobState::Running, JobState::Done, JobState::Failed, JobState::Cancelled]
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| StoreError::Unexpected(format!("job state {text:?}")))
    }
}

/// What is asked of a worker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRequest {
    pub guild_id: String,
    pub trigger: String,
    pub requested_by: Option<String>,
    pub epochs: Option<i64>,
    pub max_minutes: Option<f64>,
}

/// A job as a worker claimed it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: i64,
    pub request: JobRequest,
    /// The run of an earlier attempt (its worker stopped), if there was one.
    pub previous_run: Option<i64>,
    /// How many times the job was claimed, this claim included.
    pub attempts: i64,
}

/// What asking for a job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Enqueued {
    /// Queued, with this many open jobs (of any guild) before it.
    New { job: i64, ahead: u64 },
    /// The guild has an open job already (queued or running): no second one.
    AlreadyOpen { job: i64, state: JobState },
}

/// What renewing a lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    Held,
    /// Held, and someone asked the job to stop.
    CancelAsked,
    /// The lease ran out and another worker claimed the job (or it ended).
    Lost,
}

impl Store {
    /// Jobs asked to stop whose worker is gone are over: their guild may ask again.
    async fn end_abandoned_cancelled_jobs(&self, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE training_jobs SET state = 'cancelled', finished_ms = $1
             WHERE state = 'running' AND cancel = 1 AND lease_until_ms < $1",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Queues a training for the workers, unless the guild has an open job already.
    pub async fn enqueue_job(&self, r: &JobRequest) -> Result<Enqueued> {
        let now = now_ms();
        self.end_abandoned_cancelled_jobs(now).await?;
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO training_jobs (guild_id, trigger, requested_by, epochs, max_minutes, requested_ms)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(&r.guild_id)
        .bind(&r.trigger)
        .bind(r.requested_by.as_deref())
        .bind(r.epochs)
        .bind_real(r.max_minutes)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        match id {
            Some(job) => {
                let ahead: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM training_jobs WHERE state IN ('queued', 'running') AND id < $1",
                )
                .bind(job)
                .fetch_one(&self.pool)
                .await?;
                self.notify(JOBS_CHANNEL, &job.to_string()).await?;
                Ok(Enqueued::New { job, ahead: ahead.max(0) as u64 })
            }
            None => {
                let (job, state) = self
                    .open_job(&r.guild_id)
                    .await?
                    .ok_or_else(|| StoreError::Unexpected("job refused without an open one".into()))?;
                Ok(Enqueued::AlreadyOpen { job, state })
            }
        }
    }

    /// The guild's open job (queued or running), if any.
    pub async fn open_job(&self, guild: &str) -> Result<Option<(i64, JobState)>> {
        let row = sqlx::query(
            "SELECT id, state FROM training_jobs WHERE guild_id = $1 AND state IN ('queued', 'running')",
        )
        .bind(guild)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get(0)?, JobState::parse(&r.try_get::<String, _>(1)?)?))).transpose()
    }

    /// Jobs queued or running, of all guilds.
    pub async fn open_jobs(&self) -> Result<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM training_jobs WHERE state IN ('queued', 'running')")
                .fetch_one(&self.read)
                .await?;
        Ok(n.max(0) as u64)
    }

    /// Claims the oldest job nobody holds (queued, or running on a lease that ran out) for
    /// `lease_ms`; `None` if there is none.
    pub async fn claim_job(&self, worker: &str, lease_ms: i64) -> Result<Option<Job>> {
        let now = now_ms();
        self.end_abandoned_cancelled_jobs(now).await?;
        // Workers claiming together each get another job, none waiting on another's lock.
        let lock = if self.backend == Backend::Postgres { "FOR UPDATE SKIP LOCKED" } else { "" };
        let row = sqlx::query(&format!(
            "UPDATE training_jobs SET state = 'running', worker = $1, lease_until_ms = $2, attempts = attempts + 1
             WHERE id = (SELECT id FROM training_jobs
                         WHERE cancel = 0 AND (state = 'queued' OR (state = 'running' AND lease_until_ms < $3))
                         ORDER BY id LIMIT 1 {lock})
             RETURNING id, guild_id, trigger, requested_by, epochs, max_minutes, run_id, attempts"
        ))
        .bind(worker)
        .bind(now + lease_ms)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Job {
                id: r.try_get(0)?,
                request: JobRequest {
                    guild_id: r.try_get(1)?,
                    trigger: r.try_get(2)?,
                    requested_by: r.try_get(3)?,
                    epochs: r.try_get(4)?,
                    max_minutes: r.try_get(5)?,
                },
                previous_run: r.try_get(6)?,
                attempts: r.try_get(7)?,
            })
        })
        .transpose()
    }

    /// Extends the lease of a job `worker` holds.
    pub async fn renew_lease(&self, job: i64, worker: &str, lease_ms: i64) -> Result<Lease> {
        let cancel: Option<i64> = sqlx::query_scalar(
            "UPDATE training_jobs SET lease_until_ms = $1
             WHERE id = $2 AND worker = $3 AND state = 'running' RETURNING cancel",
        )
        .bind(now_ms() + lease_ms)
        .bind(job)
        .bind(worker)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match cancel {
            None => Lease::Lost,
            Some(0) => Lease::Held,
            Some(_) => Lease::CancelAsked,
        })
    }

    /// Records the run a job's attempt trains.
    pub async fn set_job_run(&self, job: i64, run_id: i64) -> Result<()> {
        sqlx::query("UPDATE training_jobs SET run_id = $1 WHERE id = $2")
            .bind(run_id)
            .bind(job)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends a job `worker` holds; `false` if it no longer held it.
    pub async fn finish_job(
        &self,
        job: i64,
        worker: &str,
        state: JobState,
        error: Option<&str>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE training_jobs SET state = $1, finished_ms = $2, error = $3
             WHERE id = $4 AND worker = $5 AND state = 'running'",
        )
        .bind(state.as_str())
        .bind(now_ms())
        .bind(error)
        .bind(job)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives a claimed job back to the queue (a worker stopping, or the guild busy elsewhere).
    pub async fn release_job(&self, job: i64, worker: &str) -> Result<()> {
        sqlx::query(
            "UPDATE training_jobs SET state = 'queued', worker = NULL, lease_until_ms = NULL
             WHERE id = $1 AND worker = $2 AND state = 'running'",
        )
        .bind(job)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Asks the guild's open job to stop: a queued one is cancelled at once, a running one by
    /// its worker at its next lease renewal. Returns the state it was in, if there was one.
    pub async fn cancel_job(&self, guild: &str) -> Result<Option<JobState>> {
        let Some((job, state)) = self.open_job(guild).await? else { return Ok(None) };
        sqlx::query(
            "UPDATE training_jobs SET cancel = 1,
                    state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
                    finished_ms = CASE WHEN state = 'queued' THEN $1 ELSE finished_ms END
             WHERE id = $2",
        )
        .bind(now_ms())
        .bind(job)
        .execute(&self.pool)
        .await?;
        Ok(Some(state))
    }

    /// Announces a change of the guild's consent or reply modes (PostgreSQL only).
    pub(super) async fn notify_settings(&self, guild: &str) -> Result<()> {
        self.notify(SETTINGS_CHANNEL, guild).await
    }

    pub(super) async fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Listens on `channels` (PostgreSQL only: `None` on SQLite).
    pub async fn listen(&self, channels: &[&str]) -> Result<Option<sqlx::postgres::PgListener>> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(self.url.expose()).await?;
        listener.listen_all(channels.iter().copied()).await?;
        Ok(Some(listener))
    }
}

/// The guild and run of a [`MODELS_CHANNEL`] payload.
pub fn parse_model_payload(payload: &str) -> Option<(String, i64)> {
    let (guild, run) = payload.split_once(' ')?;
    Some((guild.to_string(), run.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(guild: &str) -> JobRequest {
        JobRequest {
            guild_id: guild.into(),
            trigger: "command".into(),
            requested_by: Some("admin".into()),
            epochs: Some(2),
            max_minutes: None,
        }
    }

    #[tokio::test]
    async fn one_open_job_per_guild_claimed_once_and_reclaimed_after_its_lease() {
        let store = Store::open_for_test().await.unwrap();
        let first = store.enqueue_job(&request("a")).await.unwrap();
        let Enqueued::New { job: a, ahead: 0 } = first else { panic!("{first:?}") };
        assert_eq!(
            store.enqueue_job(&request("a")).await.unwrap(),
            Enqueued::AlreadyOpen { job: a, state: JobState::Queued }
        );
        let Enqueued::New { job: b, ahead: 1 } = store.enqueue_job(&request("b")).await.unwrap() else {
            panic!()
        };

        let claimed = store.claim_job("w1", 60_000).await.unwrap().unwrap();
        assert_eq!((claimed.id, claimed.attempts, claimed.request.clone()), (a, 1, request("a")));
        assert_eq!(store.claim_job("w2", 60_000).await.unwrap().unwrap().id, b);
        assert_eq!(store.claim_job("w3", 60_000).await.unwrap(), None, "both are held");
        assert_eq!(store.open_jobs().await.unwrap(), 2);
        assert_eq!(store.renew_lease(a, "w1", 60_000).await.unwrap(), Lease::Held);
        assert_eq!(store.renew_lease(a, "w2", 60_000).await.unwrap(), Lease::Lost, "not w2's");

        // w1 dies: once its lease is over, another worker takes the job, with its run.
        let run = store.start_run("a", "command", None, 2, 10, None).await.unwrap();
        store.set_job_run(a, run).await.unwrap();
        store.renew_lease(a, "w1", -1).await.unwrap();
        let again = store.claim_job("w3", 60_000).await.unwrap().unwrap();
        assert_eq!((again.id, again.attempts, again.previous_run), (a, 2, Some(run)));
        assert_eq!(store.renew_lease(a, "w1", 60_000).await.unwrap(), Lease::Lost);
        assert!(!store.finish_job(a, "w1", JobState::Done, None).await.unwrap(), "w1 lost it");
        assert!(store.finish_job(a, "w3", JobState::Done, None).await.unwrap());
        assert_eq!(store.open_job("a").await.unwrap(), None);
        assert!(matches!(store.enqueue_job(&request("a")).await.unwrap(), Enqueued::New { .. }));
    }

    #[tokio::test]
    async fn cancelling_a_queued_job_ends_it_and_a_running_one_is_told_at_renewal() {
        let store = Store::open_for_test().await.unwrap();
        store.enqueue_job(&request("a")).await.unwrap();
        assert_eq!(store.cancel_job("a").await.unwrap(), Some(JobState::Queued));
        assert_eq!(store.open_job("a").await.unwrap(), None);
        assert_eq!(store.claim_job("w", 60_000).await.unwrap(), None);

        let Enqueued::New { job, .. } = store.enqueue_job(&request("a")).await.unwrap() else { panic!() };
        store.claim_job("w", 60_000).await.unwrap().unwrap();
        assert_eq!(store.cancel_job("a").await.unwrap(), Some(JobState::Running));
        assert_eq!(store.renew_lease(job, "w", 60_000).await.unwrap(), Lease::CancelAsked);
        // Its worker died: once the lease is over the job is ended, not claimed again.
        store.renew_lease(job, "w", -1).await.unwrap();
        assert_eq!(store.claim_job("w2", 60_000).await.unwrap(), None);
        assert_eq!(store.open_job("a").await.unwrap(), None);
        assert_eq!(store.cancel_job("a").await.unwrap(), None);
    }
}
