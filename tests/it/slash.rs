//! Slash commands end to end: INTERACTION_CREATE from the devserver, answers through the
//! interaction callback and follow-up routes. Permissions come from the interaction's member.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{Harness, WAIT};

async fn answer(h: &Harness, user: u64, name: &str, options: Value) -> mynah::devserver::Posted {
    // Registration happens right after READY; an interaction before it would find no command.
    h.server.wait_for(WAIT, || (!h.server.registered_commands().is_empty()).then_some(())).await.unwrap();
    let id = h.server.slash(h.general, user, name, options);
    match h.server.wait_for_answer(id, WAIT).await {
        Some(a) => a,
        None => panic!("no answer to /{name}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slash_commands_answer_with_the_same_checks_and_no_pings() {
    let h = Harness::start().await;
    h.server.say(h.general, h.member, "hello from bob, mail bob@example.com");
    h.wait_stored(1).await;

    let stats = answer(&h, h.member, "llmstats", json!([])).await;
    assert!(stats.content.contains("**Messages collected:** 1"), "{}", stats.content);
    assert_eq!(stats.request["allowed_mentions"]["parse"], json!([]), "{}", stats.request);
    assert!(!stats.ephemeral);

    // Choices are integers: the index of the choice (force is the first).
    let option = json!([{ "type": 4, "name": "option", "value": 0 }]);
    let refused = answer(&h, h.member, "llmtrain", option.clone()).await;
    assert!(refused.content.contains("Only server admins"), "{}", refused.content);
    let admin = answer(&h, h.admin, "llmtrain", option).await;
    assert!(admin.content.contains("not enough data to train"), "{}", admin.content);

    let add = json!([{ "type": 1, "name": "add", "options": [{ "type": 7, "name": "channel", "value": h.offtopic.to_string() }] }]);
    let refused = answer(&h, h.member, "llmchannel", add.clone()).await;
    assert!(refused.content.contains("Only server admins"), "{}", refused.content);
    let added = answer(&h, h.admin, "llmchannel", add).await;
    assert!(added.content.starts_with(&format!("Collecting <#{}>", h.offtopic)), "{}", added.content);
    assert!(h.core.collects(&h.guild.to_string(), &h.offtopic.to_string(), None));

    // Personal data is answered ephemerally, file included.
    let mine = answer(&h, h.member, "llmmydata", json!([])).await;
    assert!(mine.ephemeral, "{}", mine.request);
    assert_eq!(mine.files.len(), 1);
    assert!(mine.files[0].1.contains("[email]"), "stored scrubbed: {}", mine.files[0].1);
    assert!(h.server.direct_messages(h.member).is_empty());

    let ask = answer(&h, h.member, "llmforgetme", json!([])).await;
    assert!(ask.ephemeral && ask.content.contains("This deletes the 1 message of yours"), "{}", ask.content);
    let done =
        answer(&h, h.member, "llmforgetme", json!([{ "type": 4, "name": "confirm", "value": 0 }])).await;
    assert!(done.content.starts_with("Done: I deleted the 1 message of yours"), "{}", done.content);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.stored().await, 0);
    h.stop().await;
}
