//! End to end: two bots running different gateway shards (`MYNAH_SHARDS`) of one application,
//! as two processes would: each gets only its shard's guilds, so every mention is answered once,
//! and stopping one leaves the other serving.

use std::time::Duration;

use mynah::config::{Collect, Secret};
use mynah::devserver::DevServer;
use mynah::shards::ShardRange;

use crate::support::WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shard_processes_split_the_guilds_and_each_mention_is_answered_once() {
    let server = DevServer::start().await.unwrap();
    // Discord's rule: (guild_id >> 22) % 2 picks the shard.
    let even = server.create_guild_with_id("Even", 2 << 22);
    let odd = server.create_guild_with_id("Odd", 3 << 22);
    let (c_even, c_odd) = (server.create_channel(even, "general"), server.create_channel(odd, "general"));
    let member = server.create_user("bob");
    server.add_member(even, member, 0);
    server.add_member(odd, member, 0);

    // One store for both, as processes on one machine would share it.
    let dir = tempfile::tempdir().unwrap();
    let config = |shards: &str| {
        let mut cfg = crate::support::config(dir.path());
        cfg.discord_token = Some(Secret::new(server.token()));
        cfg.discord_api_base = Some(server.base_url());
        cfg.collect = Collect::All;
        cfg.shards = ShardRange::parse(shards).unwrap();
        cfg
    };
    let first = mynah::app::start(config("0-0/2")).await.unwrap();
    let second = mynah::app::start(config("1-1/2")).await.unwrap();
    server.wait_for(WAIT, || (server.sessions() == 2).then_some(())).await.expect("both shards identified");

    let bot = server.bot_id();
    for (guild, channel) in [(even, c_even), (odd, c_odd)] {
        server.say(channel, member, "hello there");
        let mention = server.say(channel, member, &format!("<@{bot}> who answers?"));
        server.wait_for_bot_message(channel, mention, WAIT).await.expect("the shard's process answers");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(server.bot_messages(channel).len(), 1, "answered once, not by both processes");
        let counts = first.core().counts(&guild.to_string(), None).await.unwrap();
        assert_eq!(counts.messages, 2, "stored once in the shared store");
    }

    // A training is for the process that serves the guild: the other one says which that is.
    let request = mynah::service::TrainRequest {
        force: true,
        ..mynah::service::TrainRequest::new(Some(odd.to_string()), mynah::service::Trigger::Api)
    };
    let refused = first.core().request_training(request).await.unwrap_err();
    assert!(refused.to_string().contains("served by gateway shard 1"), "{refused}");

    // The process of shard 1 stops: its guilds go quiet, the other shard's keep being served.
    second.shutdown().await;
    let unanswered = server.say(c_odd, member, &format!("<@{bot}> anyone?"));
    let answered = server.say(c_even, member, &format!("<@{bot}> still there?"));
    server.wait_for_bot_message(c_even, answered, WAIT).await.expect("shard 0 still serves");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(server.bot_messages(c_odd).iter().all(|m| m.id < unanswered));
    first.shutdown().await;
}
