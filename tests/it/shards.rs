//! End to end: two bots running different gateway shards (`MYNAH_SHARDS`) of one application,
//! as two processes would: each gets only its shard's guilds, so every mention is answered once,
//! and stopping one leaves the other serving.

use std::time::Duration;

use crate::support::WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shard_processes_split_the_guilds_and_each_mention_is_answered_once() {
    let world = crate::support::TwoShards::start().await;
    let (server, even, odd, c_even, c_odd, member) =
        (&world.server, world.even, world.odd, world.c_even, world.c_odd, world.member);
    // One store for both, as processes on one machine would share it.
    let first = mynah::app::start(world.config("0-0/2")).await.unwrap();
    let second = mynah::app::start(world.config("1-1/2")).await.unwrap();
    world.wait_for_both_sessions().await;

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
