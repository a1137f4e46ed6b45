//! End to end on PostgreSQL (CI's second pass): two bot processes on gateway shards `0-0/2` and
//! `1-1/2` with `MYNAH_TRAINING=workers`, and one training worker, all on one database. A
//! training asked in shard 1's guild is run by the worker, and shard 1's process serves the
//! model it made; messages of both shards are stored once; a deletion seen by either process
//! purges the one store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mynah::config::TrainingMode;
use mynah::reply_modes::ReplyMode;
use mynah::service::{ServiceError, TrainRequest, Trigger};

use crate::support::WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_trains_shard_1s_guild_and_shard_1s_process_serves_the_model() {
    if !crate::postgres::postgres() {
        return;
    }
    let world = crate::support::TwoShards::start().await;
    let (server, even, odd, c_even, c_odd, member) =
        (&world.server, world.even, world.odd, world.c_even, world.c_odd, world.member);
    // One database for all three; each process its own models directory.
    let config = |shards: &str, models: &str| {
        let mut cfg = world.config(shards);
        cfg.models_dir = world.dir.path().join(models);
        cfg.training = TrainingMode::Workers;
        cfg
    };
    let first = mynah::app::start(config("0-0/2", "models-0")).await.unwrap();
    let second = mynah::app::start(config("1-1/2", "models-1")).await.unwrap();
    world.wait_for_both_sessions().await;

    // Each message is stored once, whichever process reads it.
    let doomed = server.say(c_even, member, "this one goes");
    server.say(c_odd, member, "hello from the odd guild");
    let stored = |guild: u64, n: u64| {
        let core = first.core().clone();
        async move { core.counts(&guild.to_string(), None).await.unwrap().messages == n }
    };
    crate::support::until("both messages are stored once", async || {
        stored(even, 1).await && stored(odd, 1).await
    })
    .await;
    // A deletion seen by shard 0's process purges the store both read.
    server.delete(doomed);
    crate::support::until("the deletion reaches the store", async || {
        second.core().counts(&even.to_string(), None).await.unwrap().messages == 0
    })
    .await;

    // Shard 1's guild has a corpus; its training goes to the workers.
    let odd_id = odd.to_string();
    second.core().import_jsonl(crate::support::sample(), Some(&odd_id), true).await.unwrap();
    let request = TrainRequest { force: true, ..TrainRequest::new(Some(odd_id.clone()), Trigger::Api) };
    match second.core().request_training(request.clone()).await {
        Err(ServiceError::Delegated { guild_id, .. }) => assert_eq!(guild_id, odd_id),
        other => panic!("expected the job to be handed to the workers, got {other:?}"),
    }
    match second.core().request_training(request).await {
        Err(ServiceError::AlreadyRunning { .. }) => {}
        other => panic!("one open job per guild, got {other:?}"),
    }
    let stats = second.core().stats(&odd_id, None).await.unwrap();
    assert_eq!(stats.worker_job.map(|j| j.state), Some(mynah::store::JobState::Queued), "as !llmstats shows");
    let stop = Arc::new(AtomicBool::new(false));
    let worker =
        tokio::spawn(mynah::worker::run(config("0-0/1", "models-worker"), stop.clone(), Some("w1".into())));

    let served = server
        .wait_for(Duration::from_secs(120), || second.core().model(&odd_id))
        .await
        .expect("shard 1's process serves the worker's model");
    assert!(served.dir.starts_with(world.dir.path().join("models-1")), "{}", served.dir.display());
    let runs = second.core().runs(Some(&odd_id), 5).await.unwrap();
    assert_eq!(runs[0].outcome, mynah::store::RunOutcome::Succeeded, "{runs:?}");
    assert_eq!(runs[0].trigger, "api");
    assert!(served.dir.ends_with(format!("run-{}", runs[0].id)));
    assert!(first.core().model(&odd_id).is_none(), "shard 0's process does not load shard 1's models");
    let mention = server.say(c_odd, member, &format!("<@{}> how is it going?", server.bot_id()));
    server.wait_for_bot_message(c_odd, mention, WAIT).await.expect("the new model answers in shard 1");

    assert_eq!(second.core().stats(&odd_id, None).await.unwrap().worker_job, None, "the job is over");

    // Settings changed by another process reach the process serving the guild at once.
    let (channel, who) = (c_odd.to_string(), member.to_string());
    first.core().set_reply_mode(&odd_id, &channel, ReplyMode::Off, Some("admin")).await.unwrap();
    first.core().opt_out(&odd_id, &who).await.unwrap();
    crate::support::until("shard 1's process hears of both changes", async || {
        second.core().reply_mode(&odd_id, &channel, None) == ReplyMode::Off
            && second.core().my_data(&odd_id, &who).await.unwrap().opted_out
    })
    .await;
    let ignored = server.say(c_odd, member, &format!("<@{}> still there?", server.bot_id()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.bot_messages(c_odd).iter().all(|m| m.id < ignored), "replies are off in that channel now");
    stop.store(true, Ordering::SeqCst);
    worker.await.unwrap().unwrap();
    second.shutdown().await;
    first.shutdown().await;
}

/// A worker killed in the middle of a training: once its lease is over, another worker claims
/// the job again, its half-done run is recorded as interrupted, and the job ends with a model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_dies_is_trained_by_another_after_its_lease() {
    if !crate::postgres::postgres() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::support::config(dir.path());
    cfg.models_dir = dir.path().join("models-second");
    cfg.worker_lease = Duration::from_secs(3);
    let store = mynah::store::Store::open(&cfg.database_url).await.unwrap();
    mynah::service::import_jsonl(&store, crate::support::sample(), Some("77"), false, true).await.unwrap();
    let job = mynah::store::JobRequest {
        guild_id: "77".into(),
        trigger: "api".into(),
        requested_by: None,
        epochs: Some(2),
        max_minutes: Some(1.0),
    };
    store.enqueue_job(&job).await.unwrap();

    // The first worker is the real binary, killed (SIGKILL) as soon as its run has started.
    let mut doomed = crate::support::mynah(dir.path())
        .env("DATABASE_URL", &cfg.database_url)
        .env("MYNAH_PRESET", "tiny")
        .env("MYNAH_WORKER_LEASE_SECONDS", "3")
        .args(["worker", "--name", "doomed"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::support::until("the first worker's run starts", async || {
        store
            .runs(Some("77"), 5)
            .await
            .unwrap()
            .iter()
            .any(|r| r.outcome == mynah::store::RunOutcome::Running)
    })
    .await;
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let first_run = store.runs(Some("77"), 5).await.unwrap()[0].id;

    let stop = Arc::new(AtomicBool::new(false));
    let worker = tokio::spawn(mynah::worker::run(cfg, stop.clone(), Some("second".into())));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while store.open_jobs().await.unwrap() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the job was not finished by the second worker");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let runs = store.runs(Some("77"), 5).await.unwrap();
    let outcome = |id: i64| runs.iter().find(|r| r.id == id).map(|r| r.outcome);
    assert_eq!(outcome(first_run), Some(mynah::store::RunOutcome::Interrupted), "{runs:?}");
    assert_eq!(runs[0].outcome, mynah::store::RunOutcome::Succeeded, "{runs:?}");
    assert!(runs[0].id > first_run);
    assert!(store.bundle("77", runs[0].id).await.unwrap().is_some(), "the model waits in the database");
    stop.store(true, Ordering::SeqCst);
    worker.await.unwrap().unwrap();
    store.close().await;
}
