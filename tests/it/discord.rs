//! End to end: the real bot (poise on serenity) against the local Discord-compatible server.

use std::time::Duration;

use serde_json::json;

use crate::support::{Harness, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llmstats_answers_with_real_counts() {
    let h = Harness::start().await;
    h.server.say(h.general, h.member, "first message");
    h.server.say(h.general, h.admin, "second message");
    h.server.say(h.general, h.member, "third message");
    h.wait_stored(3).await;

    let reply = h.ask(h.general, h.member, "!llmstats").await;
    assert!(
        reply.content.contains("**Messages collected:** 3 (3 in this channel) from 2 authors in 1 channel"),
        "{}",
        reply.content
    );
    assert!(reply.content.contains("fallback"), "{}", reply.content);
    assert!(reply.content.contains("**Model:** none yet"), "{}", reply.content);
    assert!(reply.content.contains("**Training:** idle"), "{}", reply.content);
    assert!(reply.content.contains("**Collection:** this channel is collected"), "{}", reply.content);
    assert!(reply.content.contains("497 more messages until the first training"), "{}", reply.content);
    assert_eq!(reply.request["allowed_mentions"]["parse"], json!([]), "{}", reply.request);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_member_cannot_start_training() {
    let h = Harness::start().await;
    let reply = h.ask(h.general, h.member, "!llmtrain force").await;
    assert!(reply.content.contains("Only server admins"), "{}", reply.content);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_are_told_why_training_cannot_start_and_nothing_false_is_recorded() {
    let h = Harness::start().await;
    let reply = h.ask(h.general, h.admin, "!llmtrain").await;
    assert!(reply.content.contains("Not training now: 500 more messages needed"), "{}", reply.content);
    assert!(reply.content.contains("`!llmtrain force`"), "{}", reply.content);
    let reply = h.ask(h.general, h.listed_admin, "!llmtrain force").await;
    assert!(reply.content.contains("not enough data to train"), "{}", reply.content);
    let reply = h.ask(h.general, h.admin, "!llmtrain sideways").await;
    assert!(reply.content.contains("I didn't understand"), "{}", reply.content);
    assert!(reply.content.contains("`!llmtrain force`"), "{}", reply.content);
    let reply = h.ask(h.general, h.admin, "!llmtrain cancel").await;
    assert_eq!(reply.content, "No training is running for this server.");
    let reply = h.ask(h.general, h.member, "!llmtrain cancel").await;
    assert!(reply.content.contains("Only server admins"), "{}", reply.content);
    assert_eq!(h.core.runs(None, 10).await.unwrap(), vec![], "no run was recorded");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_trains_and_mentions_then_get_generated_replies() {
    let h = Harness::start().await;
    h.core.import_jsonl(crate::support::sample(), Some(&h.guild.to_string()), true).await.unwrap();
    let bot = h.server.bot_id();

    let reply = h.ask(h.general, h.admin, "!llmtrain force").await;
    assert!(reply.content.starts_with("Training started"), "{}", reply.content);
    // Replies keep coming while the model trains.
    let during = h.ask(h.general, h.member, &format!("<@{bot}> are you there?")).await;
    assert!(!during.content.is_empty());

    let last = h.wait_training_done().await;
    assert_eq!(last.outcome, mynah::store::RunOutcome::Succeeded, "{last:?}");
    let announced = h
        .server
        .wait_for(WAIT, || {
            h.server.bot_messages(h.general).into_iter().find(|m| m.content.starts_with("I've learned"))
        })
        .await
        .expect("the new model is announced");
    assert!(
        announced.content.contains("model run-1") && announced.content.contains("bits per byte"),
        "{}",
        announced.content
    );
    assert_eq!(announced.request["allowed_mentions"]["parse"], json!([]));
    let stats = h.ask(h.general, h.member, "!llmstats").await;
    assert!(stats.content.contains("**Mode:** model"), "{}", stats.content);
    assert!(stats.content.contains("tiny preset"), "{}", stats.content);
    assert!(stats.content.contains("**Last runs:** #1 succeeded (command"), "{}", stats.content);

    let reply = h.ask(h.general, h.member, &format!("<@{bot}> anyone going to the meetup?")).await;
    assert!(
        !reply.content.contains("still learning"),
        "a generated reply, not the fallback: {}",
        reply.content
    );
    assert!(!reply.content.is_empty() && reply.content.chars().count() <= 2000);
    assert_eq!(reply.request["allowed_mentions"]["parse"], json!([]));
    let runs = h.core.runs(None, 10).await.unwrap();
    assert_eq!((runs.len(), runs[0].trigger.as_str(), runs[0].outcome.as_str()), (1, "command", "succeeded"));
    assert_eq!(runs[0].requested_by.as_deref(), Some(h.admin.to_string().as_str()));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mention_gets_a_fallback_reply_that_pings_nobody() {
    let h = Harness::start().await;
    let bot = h.server.bot_id();
    let text = format!("<@{bot}> hello @everyone, ping <@{}> please", h.member);
    let sent = h.server.say(h.general, h.member, &text);
    let reply = h.server.wait_for_bot_message(h.general, sent, WAIT).await.expect("a reply");
    assert!(reply.content.contains("still learning"), "{}", reply.content);
    assert!(!reply.content.contains("@everyone") && !reply.content.contains("<@"), "{}", reply.content);
    assert_eq!(reply.reference, Some(sent), "the reply references the mention");
    let allowed = &reply.request["allowed_mentions"];
    assert_eq!(allowed["parse"], json!([]), "{allowed}");
    assert_eq!(allowed["replied_user"], json!(false), "{allowed}");
    for key in ["users", "roles"] {
        assert!(allowed[key].as_array().is_none_or(Vec::is_empty), "{allowed}");
    }
    assert!(h.server.typing_in(h.general) >= 1, "the typing indicator was shown");
    assert!(reply.content.chars().count() <= 2000);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_human_chat_in_collected_channels_is_stored() {
    let h = Harness::start().await;
    // A command is not chat (its answer is awaited so it cannot overtake the check below).
    h.ask(h.general, h.member, "!llmstats").await;
    h.server.say(h.offtopic, h.member, "off-topic chatter");
    h.server.say(h.general, h.other_bot, "beep boop, I am a bot");
    let bot = h.server.bot_id();
    h.server.say_as_webhook(h.general, h.member, &format!("<@{bot}> a bridged message from a webhook"));
    h.server.say(h.general, h.other_bot, &format!("<@{bot}> bots mentioning the bot get no reply"));
    h.server.say(h.general, h.member, "a real message");
    h.wait_stored(1).await;
    // Give the ignored messages time to be (wrongly) stored before checking they were not.
    let reply = h.ask(h.general, h.member, "!llmstats").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.stored().await, 1, "only the human message in #general is stored");
    let exported = h.core.export(Some(&h.guild.to_string())).await.unwrap();
    assert_eq!(exported[0].content, "a real message");
    assert_eq!(exported[0].channel, "general");
    assert_eq!(exported[0].author, "bob");
    // The bot's own replies came back over the gateway too, and were not stored either.
    assert!(!h.server.bot_messages(h.general).is_empty());
    assert!(
        h.server.bot_messages(h.general).iter().all(|m| m.reference.is_none()),
        "mentions by a bot or a webhook got no reply"
    );
    assert!(reply.content.contains("**Messages collected:** 1"), "{}", reply.content);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_message_create_is_stored_once() {
    let h = Harness::start().await;
    let id = h.server.say(h.general, h.member, "say it once");
    h.wait_stored(1).await;
    h.server.replay(id);
    h.server.replay(id);
    h.server.say(h.general, h.member, "marker");
    h.wait_stored(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.stored().await, 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slash_commands_are_registered() {
    let h = Harness::start().await;
    let names = h
        .server
        .wait_for(WAIT, || {
            let names: Vec<String> = h
                .server
                .registered_commands()
                .iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect();
            (!names.is_empty()).then_some(names)
        })
        .await
        .expect("commands registered");
    assert!(names.contains(&"llmstats".to_string()) && names.contains(&"llmtrain".to_string()), "{names:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_guild_neither_sees_nor_cancels_anothers_training() {
    let h = Harness::start_with(|c| c.engine.epochs = 200).await;
    let a = h.guild.to_string();
    h.core.import_jsonl(crate::support::sample(), Some(&a), true).await.unwrap();
    // A second server with its own admin.
    let other = h.server.create_guild("Other Guild");
    let lobby = h.server.create_channel(other, "lobby");
    let boss = h.server.create_user("boss");
    h.server.add_member(other, boss, mynah::devserver::MANAGE_GUILD);
    h.server.wait_for(WAIT, || h.server.channel_name(lobby)).await.unwrap();

    let started = h.ask(h.general, h.admin, "!llmtrain force").await;
    assert!(started.content.starts_with("Training started"), "{}", started.content);
    assert!(h.core.is_training());

    let stats = h.ask(lobby, boss, "!llmstats").await;
    assert!(stats.content.contains("**Training:** idle"), "{}", stats.content);
    assert!(!stats.content.contains(&a), "no trace of the other guild: {}", stats.content);
    let cancel = h.ask(lobby, boss, "!llmtrain cancel").await;
    assert_eq!(cancel.content, "No training is running for this server.");
    assert!(h.core.is_training(), "the other guild's run goes on");
    // A request while another guild trains waits its turn, and starts by itself after it.
    h.core.import_jsonl(crate::support::sample(), Some(&other.to_string()), true).await.unwrap();
    let queued = h.ask(lobby, boss, "!llmtrain force").await;
    assert!(queued.content.contains("queued (position 1)"), "{}", queued.content);
    assert!(!queued.content.contains(&a), "{}", queued.content);
    let again = h.ask(h.general, h.admin, "!llmtrain force").await;
    assert!(again.content.contains("already in progress for this guild"), "{}", again.content);

    let mine = h.ask(h.general, h.admin, "!llmstats").await;
    assert!(mine.content.contains("**Training:** running"), "{}", mine.content);
    let cancel = h.ask(h.general, h.admin, "!llmtrain cancel").await;
    assert!(cancel.content.starts_with("Cancelling"), "{}", cancel.content);
    let mut watch = h.core.watch_training();
    let other_id = other.to_string();
    tokio::time::timeout(
        WAIT,
        watch.wait_for(|v| {
            v.guild_id.as_deref() == Some(other_id.as_str())
                && v.state == mynah::models::trainer::TrainingState::Running
        }),
    )
    .await
    .expect("the queued guild's training starts when the slot frees")
    .unwrap();
    drop(watch);
    let cancel = h.ask(lobby, boss, "!llmtrain cancel").await;
    assert!(cancel.content.starts_with("Cancelling"), "{}", cancel.content);
    h.wait_training_done().await;
    h.stop().await;
}
