//! Scheduled retraining: the policy decides, one guild trains at a time, due guilds take turns.

use mynah::scheduler::Scheduler;
use mynah::service::Core;
use mynah::store::Store;

use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_trains_one_due_guild_at_a_time_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&support::config(dir.path()).database_url).await.unwrap();
    let core = Core::open(support::config(dir.path()), store).await.unwrap();
    let small: String = support::sample().lines().take(300).map(|l| format!("{l}\n")).collect();
    for guild in ["1001", "1002"] {
        core.import_jsonl(support::sample(), Some(guild), true).await.unwrap();
    }
    // Below the first-training threshold: never scheduled.
    core.import_jsonl(&small, Some("1003"), true).await.unwrap();

    let mut scheduler = Scheduler::default();
    assert_eq!(scheduler.tick(&core).await.unwrap().as_deref(), Some("1001"));
    assert_eq!(scheduler.tick(&core).await.unwrap(), None, "never two trainings at once");
    assert_eq!(support::wait_training_done(&core).await.outcome, mynah::store::RunOutcome::Succeeded);
    assert_eq!(scheduler.tick(&core).await.unwrap().as_deref(), Some("1002"), "the waiting guild goes next");
    assert_eq!(support::wait_training_done(&core).await.outcome, mynah::store::RunOutcome::Succeeded);
    assert_eq!(scheduler.tick(&core).await.unwrap(), None, "nothing is due any more");

    let runs = core.runs(None, 10).await.unwrap();
    let summary: Vec<(&str, &str, &str)> =
        runs.iter().map(|r| (r.guild_id.as_str(), r.trigger.as_str(), r.outcome.as_str())).collect();
    assert_eq!(summary, [("1002", "schedule", "succeeded"), ("1001", "schedule", "succeeded")]);
}
