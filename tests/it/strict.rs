//! Discord's behavioural rules, enforced by the devserver: interactions answered once and in
//! time, system messages that are not chat, replies to deleted messages, closed DMs, history
//! windows, command registration limits. The first tests drive the real bot; the rest check
//! the devserver itself over HTTP, since every other test trusts it.

use std::time::Duration;

use mynah::devserver::DevServer;
use serde_json::{json, Value};
use sqlx::Connection as _;

use crate::support::{Harness, WAIT};

async fn registered(h: &Harness) {
    h.server.wait_for(WAIT, || (!h.server.registered_commands().is_empty()).then_some(())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_waiting_on_a_busy_store_are_acknowledged_in_time_and_privately() {
    let h = Harness::start_with(crate::support::on_sqlite).await;
    h.server.say(h.general, h.member, "something of mine");
    h.wait_stored(1).await;
    registered(&h).await;

    // Another writer holds the database longer than Discord waits for an acknowledgement, as
    // an ingest burst or a start-up can.
    let mut other = sqlx::SqliteConnection::connect(&h.database_url()).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut other).await.unwrap();
    let optout = h.server.slash(h.general, h.member, "llmoptout", json!([]));
    let train =
        h.server.slash(h.general, h.admin, "llmtrain", json!([{ "type": 4, "name": "option", "value": 0 }]));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();

    let answer = h.server.wait_for_answer(optout, WAIT).await.expect("the opt-out is answered");
    assert!(answer.content.starts_with("You're opted out"), "{}", answer.content);
    // The answer filling in a private defer stays private, whatever its own flags.
    assert!(answer.ephemeral, "a member's own data is never answered in public");
    let train = h.server.wait_for_answer(train, WAIT).await.expect("the training request is answered");
    assert!(!train.ephemeral);
    h.wait_stored(0).await;
    // No "Unknown interaction": both were acknowledged within Discord's 3 s.
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_messages_are_neither_stored_nor_read_back() {
    let h = Harness::start().await;
    // Thread created (its name), channel renamed, boost, pin, join: Discord's own messages.
    let system = [(18, "planning thread"), (4, "renamed-general"), (8, ""), (6, ""), (7, "")];
    for (kind, content) in system {
        h.server.system_message(h.general, h.member, kind, content);
    }
    h.server.say(h.general, h.member, "real chat");
    h.wait_stored(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored: Vec<String> =
        h.core.export(Some(&h.guild.to_string())).await.unwrap().into_iter().map(|r| r.content).collect();
    assert_eq!(stored, vec!["real chat"]);

    h.server.say(h.offtopic, h.member, "older chat");
    h.server.system_message(h.offtopic, h.member, 18, "an old thread's name");
    let added = h.ask(h.offtopic, h.admin, "!llmchannel add").await;
    assert!(added.content.ends_with("I read back 1 earlier messages."), "{}", added.content);
    h.wait_stored(2).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mention_deleted_while_the_bot_writes_is_still_answered() {
    let h = Harness::start().await;
    let bot = h.server.bot_id();
    h.server.delete_when_typing(h.general);
    let sent = h.server.say(h.general, h.member, &format!("<@{bot}> what do you think?"));
    let reply = h.server.wait_for_bot_message(h.general, sent, WAIT).await.expect("a reply");
    assert!(!reply.content.is_empty());
    assert_eq!(reply.reference, None, "the mention is gone, so the answer is a plain message");
    assert_eq!(h.server.typing_in(h.general), 1);
    // Deleted on Discord, so not kept, even though it arrived while being stored.
    h.wait_stored(0).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_dms_are_closed_is_told_in_the_channel() {
    let h = Harness::start().await;
    h.server.say(h.general, h.member, "mine");
    h.wait_stored(1).await;
    h.server.close_dms(h.member);
    let answer = h.ask(h.general, h.member, "!llmmydata").await;
    assert!(answer.content.starts_with("I couldn't send you a direct message"), "{}", answer.content);
    assert!(!answer.content.contains("mine"), "nothing of the data is posted in public");
    assert!(answer.files.is_empty());
    assert!(h.server.direct_messages(h.member).is_empty());
    let refused: Vec<u64> = h.server.rejections().iter().map(|r| r.code).collect();
    assert_eq!(refused, vec![50007]);
    h.stop_allowing(&[50007]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_the_bot_may_not_read_or_write_get_what_discord_allows() {
    use mynah::devserver::{READ_MESSAGE_HISTORY, SEND_MESSAGES_IN_THREADS, VIEW_CHANNEL};
    let h = Harness::start().await;
    let bot = h.server.bot_id();
    // It may speak in #general but not read its history: the answer comes without the reply.
    h.server.set_overwrite(h.general, bot, 0, READ_MESSAGE_HISTORY);
    let reply = h.ask(h.general, h.member, &format!("<@{bot}> hi")).await;
    assert!(!reply.content.is_empty());
    assert_eq!(reply.reference, None, "a reply reference needs Read Message History");

    // It cannot see #off-topic: opting it in says so, and nothing is read back or answered.
    h.server.set_overwrite(h.offtopic, bot, 0, VIEW_CHANNEL);
    h.server.say(h.offtopic, h.member, "hidden from the bot");
    let added = h.ask(h.general, h.admin, &format!("!llmchannel add <#{}>", h.offtopic)).await;
    assert!(added.content.contains("I can't see that channel"), "{}", added.content);
    h.server.say(h.offtopic, h.member, &format!("<@{bot}> hello?"));

    // Nobody may post in #general's threads: a mention there is not answered.
    let thread = h.server.create_thread(h.general, "a-thread").unwrap();
    h.server.set_overwrite(h.general, h.guild, 0, SEND_MESSAGES_IN_THREADS);
    h.server.say(thread, h.member, &format!("<@{bot}> in a thread"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h.server.bot_messages(h.offtopic).is_empty());
    assert!(h.server.bot_messages(thread).is_empty());
    assert_eq!(h.server.typing_in(h.offtopic) + h.server.typing_in(thread), 0);
    let reads = format!("GET /api/v10/channels/{}/messages", h.offtopic);
    assert!(!h.server.requests().contains(&reads), "no read-back attempt in a channel it cannot see");
    // And no request Discord would refuse (403s included).
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_presences_intent_admin_checks_fetch_the_member() {
    let h = Harness::start().await;
    // GUILD_CREATE listed only the bot itself, as Discord sends it to a bot without presences.
    let refused = h.ask(h.general, h.member, "!llmtrain").await;
    assert!(refused.content.contains("Only server admins"), "{}", refused.content);
    let allowed = h.ask(h.general, h.admin, "!llmtrain").await;
    assert!(allowed.content.starts_with("Not training now"), "{}", allowed.content);
    let fetched = format!("GET /api/v10/guilds/{}/members/{}", h.guild, h.admin);
    assert!(h.server.requests().contains(&fetched), "{:?}", h.server.requests());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_reply_still_arrives_after_the_wait() {
    let h = Harness::start().await;
    let bot = h.server.bot_id();
    let route = format!("POST /api/v10/channels/{}/messages", h.general);
    h.server.rate_limit(&route, 1, Duration::from_millis(300));
    let reply = h.ask(h.general, h.member, &format!("<@{bot}> are you there?")).await;
    assert!(!reply.content.is_empty());
    let limited: Vec<_> = h.server.rejections().into_iter().filter(|r| r.status == 429).collect();
    assert_eq!(limited.len(), 1, "{limited:?}");
    assert_eq!(limited[0].route, route);
    assert_eq!(h.server.bot_messages(h.general).len(), 1, "sent once, after the wait");
    let (_, text) = crate::metrics::scrape(&h, None).await;
    let refused = crate::metrics::value(&text, r#"mynah_discord_rate_limited_total{scope="refused"}"#);
    assert!(refused >= 1.0, "the 429 is counted: {refused}");
    h.stop_allowing(&[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_registration_stops_the_bot_loudly() {
    let server = DevServer::start().await.unwrap();
    world(&server);
    server.refuse_next_registration("0.description: a rule the bot does not know");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::support::config(dir.path());
    cfg.discord_token = Some(mynah::config::Secret::new(server.token()));
    cfg.discord_api_base = Some(server.base_url());
    let mut running = mynah::app::start(cfg).await.unwrap();
    // What `mynah run` waits on: it exits with this error instead of serving without commands.
    let stopped = tokio::time::timeout(WAIT, running.failed()).await.expect("the bot stops by itself");
    let e = stopped.expect_err("stopping is a failure");
    assert!(e.to_string().contains("Discord refused the slash commands"), "{e:#}");
    assert!(e.to_string().contains("a rule the bot does not know"), "{e:#}");
    running.shutdown().await;
}

/// A client for the devserver's REST API, as a bot would call it.
struct Rest {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Rest {
    fn new(server: &DevServer) -> Rest {
        Rest {
            base: format!("{}/api/v10", server.base_url()),
            token: server.token(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        req = req.header("Authorization", format!("Bot {}", self.token));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
}

fn world(server: &DevServer) -> (u64, u64, u64) {
    let guild = server.create_guild("g");
    let channel = server.create_channel(guild, "general");
    let user = server.create_user("ann");
    server.add_member(guild, user, 0);
    (guild, channel, user)
}

#[tokio::test]
async fn interactions_are_answered_once_in_time_and_deferred_answers_keep_their_visibility() {
    let server = DevServer::start().await.unwrap();
    let (_, channel, user) = world(&server);
    let rest = Rest::new(&server);
    let (_, app) = rest.get("/applications/@me").await;
    let app = app["id"].as_str().unwrap().to_string();
    let token = |id: u64| format!("interaction-token-{id}");

    // Deferred privately: the first follow-up fills it in, private whatever its flags say; the
    // next follow-up is a message of its own, public as asked.
    let id = server.slash(channel, user, "llmmydata", json!([]));
    let defer = json!({ "type": 5, "data": { "flags": 64 } });
    assert_eq!(rest.post(&format!("/interactions/{id}/{}/callback", token(id)), defer.clone()).await.0, 204);
    let again = rest.post(&format!("/interactions/{id}/{}/callback", token(id)), defer).await;
    assert_eq!((again.0, again.1["code"].as_u64()), (400, Some(40060)), "one initial response only");
    let first =
        rest.post(&format!("/webhooks/{app}/{}", token(id)), json!({ "content": "yours", "flags": 0 })).await;
    assert_eq!(first.0, 200, "{}", first.1);
    rest.post(&format!("/webhooks/{app}/{}", token(id)), json!({ "content": "and public" })).await;
    let answers = server.interaction_answers(id);
    assert_eq!(answers.iter().map(|a| a.ephemeral).collect::<Vec<_>>(), vec![true, false]);

    // Follow-ups need an acknowledgement first; slash commands take response types 4 and 5 only;
    // answers meet the same content rules as messages.
    let id = server.slash(channel, user, "llmstats", json!([]));
    let early = rest.post(&format!("/webhooks/{app}/{}", token(id)), json!({ "content": "x" })).await;
    assert_eq!((early.0, early.1["code"].as_u64()), (404, Some(10015)));
    let update = rest.post(&format!("/interactions/{id}/{}/callback", token(id)), json!({ "type": 6 })).await;
    assert_eq!(update.0, 400);
    let empty = json!({ "type": 4, "data": { "content": "" } });
    let empty = rest.post(&format!("/interactions/{id}/{}/callback", token(id)), empty).await;
    assert_eq!(empty.1["code"].as_u64(), Some(50006));
    let long = json!({ "type": 4, "data": { "content": "x".repeat(2001) } });
    assert_eq!(rest.post(&format!("/interactions/{id}/{}/callback", token(id)), long).await.0, 400);

    // Three seconds (here 50 ms), then Discord has forgotten the interaction.
    server.set_interaction_deadline(Duration::from_millis(50));
    let id = server.slash(channel, user, "llmstats", json!([]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let late = json!({ "type": 4, "data": { "content": "too late" } });
    let late = rest.post(&format!("/interactions/{id}/{}/callback", token(id)), late).await;
    assert_eq!((late.0, late.1["code"].as_u64()), (404, Some(10062)));
    assert!(server.interaction_answers(id).is_empty());
}

#[tokio::test]
async fn history_windows_limits_and_references_are_discords() {
    let server = DevServer::start().await.unwrap();
    let (_, channel, user) = world(&server);
    let rest = Rest::new(&server);
    let ids: Vec<u64> = (0..6).map(|i| server.say(channel, user, &format!("m{i}"))).collect();
    let listed = |v: &Value| -> Vec<u64> {
        v.as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().parse().unwrap()).collect()
    };
    let path = format!("/channels/{channel}/messages");
    for bad in ["limit=0", "limit=101", &format!("before={}&after={}", ids[3], ids[1])] {
        let (status, body) = rest.get(&format!("{path}?{bad}")).await;
        assert_eq!((status, body["code"].as_u64()), (400, Some(50035)), "{bad}: out of range is refused");
    }
    let (_, after) = rest.get(&format!("{path}?after={}&limit=2", ids[1])).await;
    assert_eq!(listed(&after), vec![ids[3], ids[2]], "the messages right after, newest first");
    let (_, around) = rest.get(&format!("{path}?around={}&limit=3", ids[3])).await;
    assert_eq!(listed(&around), vec![ids[4], ids[3], ids[2]]);
    let (_, before) = rest.get(&format!("{path}?before={}&limit=2", ids[3])).await;
    assert_eq!(listed(&before), vec![ids[2], ids[1]]);

    // An ephemeral answer is on one member's screen, never in the channel's history.
    let id = server.slash(channel, user, "llmmydata", json!([]));
    let private = json!({ "type": 4, "data": { "content": "only yours", "flags": 64 } });
    assert_eq!(
        rest.post(&format!("/interactions/{id}/interaction-token-{id}/callback"), private).await.0,
        204
    );
    let (_, latest) = rest.get(&path).await;
    assert_eq!(listed(&latest).len(), 6);

    // A reply to a deleted message fails unless the reference may be dropped.
    server.delete(ids[5]);
    let reply = |fail: Option<bool>| {
        let mut reference = json!({ "message_id": ids[5].to_string() });
        if let Some(f) = fail {
            reference["fail_if_not_exists"] = json!(f);
        }
        json!({ "content": "an answer", "message_reference": reference })
    };
    let refused = rest.post(&path, reply(None)).await;
    assert_eq!((refused.0, refused.1["code"].as_u64()), (400, Some(50035)));
    let (status, posted) = rest.post(&path, reply(Some(false))).await;
    assert_eq!(status, 200);
    assert_eq!(posted["type"], 0, "sent as a plain message");
}

#[tokio::test]
async fn registrations_discord_would_refuse_are_refused_and_gaps_are_recorded() {
    let server = DevServer::start().await.unwrap();
    let rest = Rest::new(&server);
    let (_, app) = rest.get("/applications/@me").await;
    let app = app["id"].as_str().unwrap().to_string();
    let commands = |description: &str| json!([{ "name": "llmstats", "description": description, "type": 1 }]);
    let path = format!("/applications/{app}/commands");
    let (status, _) = rest.call(reqwest::Method::PUT, &path, Some(commands("Show the stats"))).await;
    assert_eq!(status, 200);
    let (status, body) = rest.call(reqwest::Method::PUT, &path, Some(commands(&"d".repeat(101)))).await;
    assert_eq!((status, body["code"].as_u64()), (400, Some(50035)), "{body}");
    assert_eq!(server.registered_commands()[0]["description"], "Show the stats", "refused whole");

    // A known path with a method the devserver does not serve is a gap like an unknown route.
    let (status, body) = rest.call(reqwest::Method::DELETE, "/users/@me", None).await;
    assert_eq!((status, body["code"].as_u64()), (404, Some(0)));
    assert_eq!(server.unknown_routes(), vec!["DELETE /api/v10/users/@me".to_string()]);
}
