//! End to end: where mynah speaks (`llmchannel reply`), the help a member gets, admin commands
//! hidden from members, and the hint on a mention a cool-down dropped.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{Harness, WAIT};

/// Bot messages in `channel` posted after message `after`.
fn bot_posts_after(h: &Harness, channel: u64, after: u64) -> Vec<mynah::devserver::Posted> {
    h.server.bot_messages(channel).into_iter().filter(|m| m.id > after).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_lets_mynah_join_in_and_it_never_answers_twice_in_a_row() {
    let h = Harness::start().await;
    let guild = h.guild.to_string();
    h.core.import_jsonl(crate::support::sample(), Some(&guild), true).await.unwrap();

    // Members can't change it; bad chances are refused with the rule.
    let reply = h.ask(h.general, h.member, "!llmchannel reply sometimes 50").await;
    assert!(reply.content.contains("Only server admins"), "{}", reply.content);
    let reply = h.ask(h.general, h.admin, "!llmchannel reply sometimes 0").await;
    assert!(reply.content.contains("from 1 to 100"), "{}", reply.content);
    let reply = h.ask(h.general, h.admin, "!llmchannel reply off 5").await;
    assert!(reply.content.contains("only goes with `sometimes`"), "{}", reply.content);

    let reply = h.ask(h.general, h.admin, "!llmchannel reply sometimes 100").await;
    assert!(reply.content.contains("join in on about 100% of other messages"), "{}", reply.content);
    assert!(reply.content.contains("once this server has a trained model"), "{}", reply.content);
    // Without a model, nobody gets an unprompted "still learning".
    let before = h.server.say(h.general, h.member, "nobody asked the bot");
    h.wait_stored(1501).await;
    h.ask(h.general, h.member, "!llmstats").await;
    assert!(bot_posts_after(&h, h.general, before)
        .iter()
        .all(|m| m.content.contains("**Messages collected:**")));

    h.ask(h.general, h.admin, "!llmtrain force").await;
    let last = h.wait_training_done().await;
    assert_eq!(last.outcome, mynah::store::RunOutcome::Succeeded, "{last:?}");

    // At 100 %: the first message is answered, the next one sits out, the third is answered.
    let before = h.stored().await;
    let first = h.server.say(h.general, h.member, "what is everyone doing tonight");
    let joined = h.server.wait_for_bot_message(h.general, first, WAIT).await.expect("mynah joins in");
    assert_eq!(joined.reference, None, "joining in is a plain message, not a reply");
    assert!(!joined.content.is_empty() && !joined.content.contains("still learning"), "{}", joined.content);
    assert_eq!(joined.request["allowed_mentions"]["parse"], json!([]));
    let second = h.server.say(h.general, h.admin, "I am going to the meetup");
    // Both stored means both were drawn for (the draw comes before the store's answer).
    h.wait_stored(before + 2).await;
    let third = h.server.say(h.general, h.member, "which meetup is that");
    h.server.wait_for_bot_message(h.general, third, WAIT).await.expect("mynah joins in again");
    let between: Vec<_> =
        bot_posts_after(&h, h.general, second).into_iter().filter(|m| m.id < third).collect();
    assert!(between.is_empty(), "never twice in a row: {between:?}");

    // The list shows it; `off` silences even mentions, but commands still work and messages are
    // still collected.
    let list = h.ask(h.general, h.admin, "!llmchannel list").await;
    assert!(
        list.content.contains(&format!("<#{}>: answer mentions and join in", h.general)),
        "{}",
        list.content
    );
    let reply = h.ask(h.general, h.admin, "!llmchannel reply off").await;
    assert!(reply.content.contains("never answer"), "{}", reply.content);
    assert!(reply.content.contains("still collected"), "{}", reply.content);
    let stored = h.stored().await;
    let bot = h.server.bot_id();
    let mention = h.server.say(h.general, h.member, &format!("<@{bot}> are you there?"));
    h.wait_stored(stored + 1).await;
    h.ask(h.general, h.member, "!llmstats").await;
    let after = bot_posts_after(&h, h.general, mention);
    assert!(
        after.iter().all(|m| m.reference.is_none() && m.content.contains("**Messages collected:**")),
        "{after:#?}"
    );
    // Back to mentions: answered again, and no choice is left over.
    h.ask(h.general, h.admin, "!llmchannel reply mention").await;
    let answer = h.ask(h.general, h.member, &format!("<@{bot}> and now?")).await;
    assert!(answer.reference.is_some());
    assert!(h.core.reply_modes(&guild).is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_lists_what_the_member_may_use_and_admin_commands_are_hidden_from_members() {
    let h = Harness::start().await;
    let help = h.ask(h.general, h.member, "!help").await;
    assert!(help.content.contains("`!llmstats`"), "{}", help.content);
    assert!(help.content.contains("`!llmoptout`"), "{}", help.content);
    assert!(!help.content.contains("llmtrain"), "members don't see admin commands: {}", help.content);
    let help = h.ask(h.general, h.admin, "!help").await;
    assert!(help.content.contains("For admins (you are one):"), "{}", help.content);
    assert!(
        help.content.contains("`!llmtrain`") && help.content.contains("llmchannel reply"),
        "{}",
        help.content
    );
    assert_eq!(help.request["allowed_mentions"]["parse"], json!([]));

    // Discord hides admin slash commands from members who lack Manage Server.
    let commands = h.server.registered_commands();
    let permissions = |name: &str| -> Value {
        commands.iter().find(|c| c["name"] == name).map(|c| c["default_member_permissions"].clone()).unwrap()
    };
    assert_eq!(permissions("llmtrain"), json!("32"));
    assert_eq!(permissions("llmchannel"), json!("32"));
    assert_eq!(permissions("llmstats"), Value::Null);
    assert_eq!(permissions("help"), Value::Null);

    let id = h.server.slash(h.general, h.member, "help", json!([]));
    let answer = h.server.wait_for_answer(id, WAIT).await.expect("/help answers");
    assert!(answer.ephemeral, "the help is for the asker only");
    assert!(answer.content.contains("`!llmmydata`"), "{}", answer.content);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mention_dropped_by_a_cool_down_gets_a_reaction_instead_of_silence() {
    let h = Harness::start_with(|c| {
        c.limits = mynah::ratelimit::Limits {
            user_cooldown: Duration::from_secs(60),
            channel_cooldown: Duration::ZERO,
            channel_per_minute: 0,
        }
    })
    .await;
    let bot = h.server.bot_id();
    let first = h.ask(h.general, h.member, &format!("<@{bot}> hi")).await;
    assert!(first.reference.is_some());
    let again = h.server.say(h.general, h.member, &format!("<@{bot}> hello??"));
    let reacted = h.server.wait_for(WAIT, || h.server.bot_reactions(again).into_iter().next()).await;
    assert_eq!(reacted.as_deref(), Some("\u{23f3}"));
    assert!(bot_posts_after(&h, h.general, again).is_empty(), "no second reply");

    // Where the bot may not react, it stays silent rather than making a request Discord refuses.
    h.server.set_overwrite(h.offtopic, h.guild, 0, mynah::devserver::ADD_REACTIONS);
    h.ask(h.offtopic, h.admin, &format!("<@{bot}> hi")).await;
    let quiet = h.server.say(h.offtopic, h.admin, &format!("<@{bot}> hi again"));
    h.ask(h.general, h.admin, "!llmstats").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.server.bot_reactions(quiet).is_empty());
    h.stop().await;
}
