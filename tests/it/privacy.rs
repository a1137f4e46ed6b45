//! Consent, privacy and safety end to end: the real bot against the devserver.

use std::time::Duration;

use serde_json::json;

use crate::support::{until, Harness};

async fn contents(h: &Harness) -> Vec<String> {
    h.core.export(Some(&h.guild.to_string())).await.unwrap().into_iter().map(|r| r.content).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_choose_the_collected_channels() {
    let h = Harness::start().await;
    let reply = h.ask(h.offtopic, h.member, "!llmchannel add").await;
    assert!(reply.content.contains("Only server admins"), "{}", reply.content);

    h.server.say(h.offtopic, h.member, "said before anyone opted this channel in");
    let reply = h.ask(h.offtopic, h.admin, "!llmchannel add").await;
    assert!(
        reply.content.starts_with(&format!("Collecting <#{}> from now on", h.offtopic)),
        "{}",
        reply.content
    );
    assert!(reply.content.contains("I read back 1 earlier messages"), "{}", reply.content);
    assert_eq!(contents(&h).await, vec!["said before anyone opted this channel in"]);
    h.server.say(h.offtopic, h.member, "and now it is collected");
    h.wait_stored(2).await;

    let reply = h.ask(h.general, h.listed_admin, "!llmchannel list").await;
    assert!(
        reply.content.contains(&format!("<#{}> (MYNAH_COLLECT_CHANNELS)", h.general)),
        "{}",
        reply.content
    );
    assert!(
        reply.content.contains(&format!("<#{}> (opted in by an admin)", h.offtopic)),
        "{}",
        reply.content
    );

    let reply = h.ask(h.general, h.admin, &format!("!llmchannel remove <#{}>", h.offtopic)).await;
    assert!(reply.content.contains("deleted the 2 messages"), "{}", reply.content);
    assert_eq!(h.stored().await, 0);
    h.server.say(h.offtopic, h.member, "not collected any more");
    let reply = h.ask(h.general, h.admin, "!llmchannel remove 123").await;
    assert_eq!(reply.content, "That channel is not in this server.");
    let reply = h.ask(h.general, h.admin, "!llmchannel").await;
    assert!(reply.content.contains("add") && reply.content.contains("remove"), "{}", reply.content);
    assert_eq!(h.stored().await, 0);

    let settings = h.core.channel_settings().await.unwrap();
    assert_eq!(settings.len(), 1, "persisted: {settings:?}");
    assert_eq!((settings[0].collect, settings[0].changed_by.clone()), (false, Some(h.admin.to_string())));
    for m in h.server.bot_messages(h.general) {
        assert_eq!(m.request["allowed_mentions"]["parse"], json!([]), "{}", m.request);
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_get_their_data_forget_themselves_and_opt_out() {
    let h = Harness::start().await;
    for text in ["one", "two", "three"] {
        h.server.say(h.general, h.member, text);
    }
    h.server.say(h.general, h.admin, "an admin's message");
    h.wait_stored(4).await;

    let reply = h.ask(h.general, h.member, "!llmmydata").await;
    assert_eq!(reply.content, "I sent you your 3 stored messages in a direct message.");
    let dms = h.server.direct_messages(h.member);
    assert_eq!(dms.len(), 1);
    let (name, body) = &dms[0].files[0];
    assert_eq!(name, &format!("mynah-{}-{}.jsonl", h.guild, h.member));
    let lines: Vec<serde_json::Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["author_id"] == json!(h.member.to_string())));
    assert_eq!(lines[0]["content"], "one");
    assert!(h.server.bot_messages(h.general).iter().all(|m| m.files.is_empty()), "nothing posted publicly");

    let reply = h.ask(h.general, h.member, "!llmforgetme confirm").await;
    assert!(reply.content.contains("There is no pending request"), "{}", reply.content);
    let reply = h.ask(h.general, h.member, "!llmforgetme").await;
    assert!(reply.content.contains("This deletes all 3 messages"), "{}", reply.content);
    assert_eq!(h.stored().await, 4, "nothing is deleted before the confirmation");
    let reply = h.ask(h.general, h.member, "!llmforgetme confirm").await;
    assert!(reply.content.starts_with("Done: I deleted the 3 messages"), "{}", reply.content);
    assert_eq!(contents(&h).await, vec!["an admin's message"]);

    h.server.say(h.general, h.member, "still collected after forgetting");
    h.wait_stored(2).await;
    let reply = h.ask(h.general, h.member, "!llmoptout").await;
    assert!(reply.content.starts_with("You're opted out"), "{}", reply.content);
    assert!(reply.content.contains("I deleted the 1 I had"), "{}", reply.content);
    h.server.say(h.general, h.member, "this must not be stored");
    h.ask(h.general, h.member, "!llmstats").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(contents(&h).await, vec!["an admin's message"]);
    let reply = h.ask(h.general, h.member, "!llmmydata").await;
    assert_eq!(
        reply.content,
        "I have no messages of yours stored in this server. You are opted out of collection."
    );

    let reply = h.ask(h.general, h.member, "!llmoptin").await;
    assert!(reply.content.starts_with("You're opted back in"), "{}", reply.content);
    h.server.say(h.general, h.member, "stored again");
    h.wait_stored(2).await;
    h.stop().await;
}

/// Discord's clock is not the bot host's: a forget request reaches back to the confirmation's
/// own time on Discord's clock, so what a member writes after it is collected and what they wrote
/// before stays forgotten, even when read back from the channel's history, whichever clock is
/// ahead (a mark from the host's clock dropped the next message when Discord's clock was behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_goes_by_discords_clock_not_the_hosts() {
    for offset_ms in [-600_000, 600_000] {
        let h = Harness::start().await;
        h.server.set_clock_offset(offset_ms);
        h.server.say(h.general, h.member, "written before forgetting");
        h.wait_stored(1).await;
        let reply = h.ask(h.general, h.member, "!llmforgetme").await;
        assert!(reply.content.contains("This deletes the 1 message of yours"), "{}", reply.content);
        let reply = h.ask(h.general, h.member, "!llmforgetme confirm").await;
        assert!(
            reply.content.starts_with("Done: I deleted the 1 message of yours"),
            "{offset_ms}: {}",
            reply.content
        );
        h.server.say(h.general, h.member, "written after forgetting");
        until("the message after the request is stored", async || {
            contents(&h).await == vec!["written after forgetting"]
        })
        .await;
        // Reconnecting reads the channel's history back: the forgotten message stays out.
        h.server.disconnect_all();
        h.server.say(h.general, h.member, "written while the bot was away");
        assert!(h.server.wait_until_ready(Duration::from_secs(60)).await, "the bot reconnected");
        until("the history is read back", async || contents(&h).await.len() == 2).await;
        assert_eq!(
            contents(&h).await,
            vec!["written after forgetting", "written while the bot was away"],
            "clock {offset_ms} ms from the host's"
        );
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_edits_and_departures_on_discord_are_mirrored() {
    let h = Harness::start().await;
    let ids: Vec<u64> =
        ["a", "b", "c", "d", "e"].iter().map(|t| h.server.say(h.general, h.member, t)).collect();
    h.wait_stored(5).await;
    h.server.delete(ids[0]);
    h.wait_stored(4).await;
    h.server.delete_bulk(h.general, &[ids[1], ids[2]]);
    h.wait_stored(2).await;
    h.server.edit(ids[3], "d, now with my address bob@example.com");
    until("the edit is stored", async || {
        contents(&h).await.contains(&"d, now with my address [email]".to_string())
    })
    .await;

    // Threads of a collected channel are collected, and go with it.
    let thread = h.server.create_thread(h.general, "a-thread").unwrap();
    h.server.say(thread, h.member, "in the thread");
    h.wait_stored(3).await;
    let stored = h.core.export(Some(&h.guild.to_string())).await.unwrap();
    let in_thread = stored.iter().find(|r| r.content == "in the thread").unwrap();
    assert_eq!(in_thread.parent_channel_id, Some(h.general.to_string()));
    assert_eq!(in_thread.channel, "a-thread");
    h.server.delete_thread(thread, h.general);
    h.wait_stored(2).await;
    let other = h.server.create_thread(h.general, "b-thread").unwrap();
    h.server.say(other, h.member, "in another thread");
    h.wait_stored(3).await;
    h.server.delete_channel(h.general);
    h.wait_stored(0).await;

    h.server.say(h.offtopic, h.member, "before leaving");
    h.ask(h.offtopic, h.admin, "!llmchannel add").await;
    h.wait_stored(1).await;
    h.server.remove_bot_from_guild(h.guild);
    h.wait_stored(0).await;
    until("the guild's settings are gone", async || h.core.channel_settings().await.unwrap().is_empty())
        .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_emails_and_phone_numbers_are_scrubbed_at_ingest() {
    let h = Harness::start().await;
    h.server.say(
        h.general,
        h.member,
        "oops MTA4NjYxNzE4ODkyNjkzNTE0MA.GxYzAb.abcdefghijklmnopqrstuvwxyz0123456789AB is my bot token",
    );
    h.server.say(h.general, h.member, "write to jane@example.org or call +1 555 123 4567");
    h.wait_stored(2).await;
    let mut stored = contents(&h).await;
    stored.sort();
    assert_eq!(stored, vec!["oops [token] is my bot token", "write to [email] or call [phone]"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_over_the_cool_downs_get_no_reply() {
    let h = Harness::start_with(|c| {
        c.limits = mynah::ratelimit::Limits {
            user_cooldown: Duration::from_secs(60),
            channel_cooldown: Duration::ZERO,
            channel_per_minute: 2,
        }
    })
    .await;
    let bot = h.server.bot_id();
    let mention = format!("<@{bot}> hi");
    h.ask(h.general, h.member, &mention).await;
    let dropped = [h.server.say(h.general, h.member, &mention)];
    h.ask(h.general, h.admin, &mention).await;
    let dropped = [dropped[0], h.server.say(h.general, h.listed_admin, &mention)];
    // Commands are not rate limited; their answer also shows the mentions were handled.
    h.ask(h.general, h.member, "!llmstats").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let replies = h.server.bot_messages(h.general).iter().filter(|m| m.reference.is_some()).count();
    assert_eq!(replies, 2, "two mention replies; the other mentions were not answered");
    for id in dropped {
        assert_eq!(h.server.bot_reactions(id), vec!["\u{23f3}".to_string()], "a dropped mention gets a hint");
    }
    h.ask(h.offtopic, h.listed_admin, &mention).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_reconnects_after_a_dropped_gateway_and_catches_up() {
    let h = Harness::start().await;
    h.server.say(h.general, h.member, "before the drop");
    h.wait_stored(1).await;
    h.server.disconnect_all();
    h.server.say(h.general, h.member, "said while the bot was away");
    assert!(h.server.wait_until_ready(Duration::from_secs(60)).await, "the bot reconnected");
    h.wait_stored(2).await;
    let bot = h.server.bot_id();
    let reply = h.ask(h.general, h.member, &format!("<@{bot}> are you back?")).await;
    assert!(!reply.content.is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_learned_from_removed_messages_is_stale_until_retrained() {
    let h = Harness::start_with(|c| {
        c.stale_fallback = true;
        c.thresholds.stale_retrain_hours = 0;
    })
    .await;
    let guild = h.guild.to_string();
    h.core.import_jsonl(crate::support::sample(), Some(&guild), true).await.unwrap();
    let first = h.server.say(h.general, h.member, "this one will be deleted later");
    h.server.say(h.general, h.member, "this one stays");
    h.wait_stored(1502).await;
    let reply = h.ask(h.general, h.admin, "!llmtrain force").await;
    assert!(reply.content.starts_with("Training started"), "{}", reply.content);
    assert_eq!(h.wait_training_done().await.outcome, mynah::store::RunOutcome::Succeeded);
    assert!(h.core.status().await.unwrap().models[0].stale.is_none());

    h.server.delete(first);
    h.wait_stored(1501).await;
    until("the model is stale", async || h.core.status().await.unwrap().models[0].stale.is_some()).await;
    let status = serde_json::to_value(h.core.status().await.unwrap()).unwrap();
    assert_eq!(status["models"][0]["stale"]["removed"], 1, "{status}");
    assert_eq!(status["models"][0]["stale"]["reason"], "messages were deleted on Discord", "{status}");
    let decision = h.core.should_train(&guild).await.unwrap();
    assert_eq!(
        (decision.should_train, decision.code),
        (true, mynah::policy::Reason::ModelStale),
        "{decision:?}"
    );

    let stats = h.ask(h.general, h.member, "!llmstats").await;
    assert!(stats.content.contains("**Stale:** since"), "{}", stats.content);
    assert!(stats.content.contains("**Mode:** fallback"), "{}", stats.content);
    let bot = h.server.bot_id();
    let reply = h.ask(h.general, h.member, &format!("<@{bot}> hello?")).await;
    assert!(reply.content.contains("removed"), "a fallback reply that says why: {}", reply.content);

    // Deleting a message the model never saw changes nothing more (the mention is stored too).
    let later = h.server.say(h.general, h.member, "after training");
    h.wait_stored(1503).await;
    h.server.delete(later);
    h.wait_stored(1502).await;
    assert_eq!(h.core.status().await.unwrap().models[0].stale.as_ref().unwrap().removed, 1);

    h.ask(h.general, h.admin, "!llmtrain").await;
    assert_eq!(h.wait_training_done().await.outcome, mynah::store::RunOutcome::Succeeded);
    let status = h.core.status().await.unwrap();
    assert!(status.models[0].stale.is_none() && status.mode == mynah::service::Mode::Model, "{status:?}");
    h.stop().await;
}

#[tokio::test]
async fn messages_past_the_retention_period_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::support::config(dir.path());
    cfg.retention_days = Some(30);
    let store = mynah::store::Store::open(&cfg.database_url).await.unwrap();
    let core = mynah::service::Core::open(cfg, store).await.unwrap();
    // The sample is from 2015-2016; one fresh message stays.
    core.import_jsonl(crate::support::sample(), Some("7"), true).await.unwrap();
    let fresh = format!(
        r#"{{"id":"1","guild_id":"7","channel_id":"c","channel":"c","author_id":"a","author":"a","content":"recent","timestamp":"{}"}}"#,
        chrono::Utc::now().to_rfc3339()
    );
    core.import_jsonl(&fresh, None, true).await.unwrap();
    assert_eq!(core.apply_retention().await.unwrap(), 1500);
    let left: Vec<String> = core.export(None).await.unwrap().into_iter().map(|r| r.content).collect();
    assert_eq!(left, vec!["recent"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_voice_learns_a_new_message_at_once_and_forgets_a_deleted_one_at_once() {
    let h = Harness::start().await;
    let guild = h.guild.to_string();
    h.core.import_jsonl(crate::support::sample(), Some(&guild), true).await.unwrap();
    let reply = h.ask(h.general, h.admin, "!llmtrain force").await;
    assert!(reply.content.starts_with("Training started"), "{}", reply.content);
    assert_eq!(h.wait_training_done().await.outcome, mynah::store::RunOutcome::Succeeded);
    until("the new model's voice is built", async || h.core.voice_holds(&guild, "x").is_some()).await;

    let secret = "zebra quartz mango violin falcon pebble lantern orchid tunnel";
    assert_eq!(h.core.voice_holds(&guild, secret), Some(false));
    let said = h.server.say(h.general, h.member, secret);
    h.wait_stored(1501).await;
    // Taught right after the insert that the count above sees: a moment later at most, and
    // without a retrain.
    until("the voice learnt it", async || h.core.voice_holds(&guild, secret) == Some(true)).await;
    assert_eq!(h.core.runs(Some(&guild), 5).await.unwrap().len(), 1, "no retrain taught it");

    h.server.delete(said);
    h.wait_stored(1500).await;
    until("the deletion reached the voice", async || h.core.voice_holds(&guild, secret) == Some(false)).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_outs_and_forget_requests_outlive_leaving_the_guild() {
    let h = Harness::start().await;
    h.server.say(h.general, h.member, "bob's old message");
    h.server.say(h.general, h.listed_admin, "olga's old message");
    h.server.say(h.general, h.admin, "alice's message");
    h.wait_stored(3).await;
    h.ask(h.general, h.member, "!llmoptout").await;
    h.ask(h.general, h.listed_admin, "!llmforgetme").await;
    h.ask(h.general, h.listed_admin, "!llmforgetme confirm").await;
    h.wait_stored(1).await;

    // Kicked, then invited back to the same server, whose history is still there: the read-back
    // must not bring back what bob and olga took out.
    h.server.remove_bot_from_guild(h.guild);
    h.wait_stored(0).await;
    h.server.return_bot_to_guild(h.guild);
    h.wait_stored(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(contents(&h).await, vec!["alice's message"]);
    // Bob is still opted out for what he says from now on.
    h.server.say(h.general, h.member, "bob, after the return");
    h.server.say(h.general, h.admin, "alice, after the return");
    h.wait_stored(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!contents(&h).await.iter().any(|c| c.starts_with("bob")));
    h.stop().await;
}

/// The run directories of a guild on disk, sorted.
fn runs_on_disk(h: &Harness) -> Vec<String> {
    let dir = h.core.config().models_dir.join(h.guild.to_string());
    let mut runs: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("run-"))
        .collect();
    runs.sort();
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_models_are_pruned_and_those_that_learned_removed_messages_go() {
    let h = Harness::start_with(|c| {
        c.keep_runs = 1;
        // An announcement could arrive in place of the next command's answer.
        c.announce_channels.clear();
    })
    .await;
    h.core.import_jsonl(crate::support::sample(), Some(&h.guild.to_string()), true).await.unwrap();
    let doomed = h.server.say(h.general, h.member, "a message that will be deleted");
    h.wait_stored(1501).await;
    for _ in 0..3 {
        let started = h.ask(h.general, h.admin, "!llmtrain force").await;
        assert!(started.content.starts_with("Training started"), "{}", started.content);
        assert_eq!(h.wait_training_done().await.outcome, mynah::store::RunOutcome::Succeeded);
    }
    // The current model and one replaced one.
    assert_eq!(runs_on_disk(&h), vec!["run-2", "run-3"]);

    // A deletion makes the serving model stale; the older one learned the message too and goes.
    h.server.delete(doomed);
    until("the older model is deleted", async || runs_on_disk(&h) == vec!["run-3"]).await;
    // Once retrained, the stale model goes as well, though one replaced model may stay.
    let started = h.ask(h.general, h.admin, "!llmtrain force").await;
    assert!(started.content.starts_with("Training started"), "{}", started.content);
    assert_eq!(h.wait_training_done().await.outcome, mynah::store::RunOutcome::Succeeded);
    assert_eq!(runs_on_disk(&h), vec!["run-4"]);
    h.stop().await;
}

/// Makes the bot's database refuse to delete or change messages, as a full disk or a damaged
/// page would, until [`allow_removals`].
async fn refuse_removals(h: &Harness) -> sqlx::SqliteConnection {
    use sqlx::Connection as _;
    let mut db = sqlx::SqliteConnection::connect(&h.database_url()).await.unwrap();
    for sql in [
        "CREATE TRIGGER no_deletes BEFORE DELETE ON messages BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
        "CREATE TRIGGER no_edits BEFORE UPDATE ON messages BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    ] {
        sqlx::query(sql).execute(&mut db).await.unwrap();
    }
    db
}

async fn allow_removals(db: &mut sqlx::SqliteConnection) {
    for sql in ["DROP TRIGGER no_deletes", "DROP TRIGGER no_edits"] {
        sqlx::query(sql).execute(&mut *db).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_the_database_refuses_is_kept_out_of_the_corpus_and_applied_later() {
    let h = Harness::start_with(|c| {
        c.removal_retry = Duration::from_millis(200);
        crate::support::on_sqlite(c);
    })
    .await;
    h.server.say(h.general, h.member, "this stays");
    let gone = h.server.say(h.general, h.member, "this is deleted");
    let edited = h.server.say(h.general, h.member, "the old text");
    h.wait_stored(3).await;

    let mut db = refuse_removals(&h).await;
    h.server.delete(gone);
    h.server.edit(edited, "the new text");
    // The store still holds both, but nothing reads them from the corpus: not training, not the
    // voice, not an export.
    until("the removals are held back", async || contents(&h).await == vec!["this stays"]).await;
    assert_eq!(h.stored().await, 3);

    // Once the database takes the writes again, the queued removals are applied.
    allow_removals(&mut db).await;
    until("the removals are applied", async || {
        let mut now = contents(&h).await;
        now.sort();
        now == vec!["the new text", "this stays"]
    })
    .await;
    h.wait_stored(2).await;
    h.stop().await;
}

#[tokio::test]
async fn removals_queued_before_a_stop_are_applied_at_the_next_start() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::support::config(dir.path());
    crate::support::on_sqlite(&mut cfg);
    let lines = crate::support::sample().lines().take(3).collect::<Vec<_>>().join("\n");
    let open = || async {
        let store = mynah::store::Store::open(&cfg.database_url).await.unwrap();
        mynah::service::Core::open(cfg.clone(), store).await.unwrap()
    };
    let core = open().await;
    core.import_jsonl(&lines, Some("42"), true).await.unwrap();
    let first = core.export(Some("42")).await.unwrap()[0].id.clone();
    let mut db = sqlx::SqliteConnection::connect(&cfg.database_url).await.unwrap();
    sqlx::query("CREATE TRIGGER no_deletes BEFORE DELETE ON messages BEGIN SELECT RAISE(ABORT, 'x'); END")
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(core.messages_deleted("42", std::slice::from_ref(&first)).await.unwrap().messages, 0);
    assert_eq!(core.export(Some("42")).await.unwrap().len(), 2, "held back at once");
    core.close().await;
    drop(core);

    sqlx::query("DROP TRIGGER no_deletes").execute(&mut db).await.unwrap();
    let core = open().await;
    let left = core.export(Some("42")).await.unwrap();
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|r| r.id != first));
    assert_eq!(core.counts("42", None).await.unwrap().messages, 2, "applied in the store, not only hidden");
}
