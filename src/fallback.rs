//! The keyword responder used while a guild has no model: short, honest about the bot still
//! learning, deterministic for a given input (so it can be tested), and never echoing the input.

/// What the responder may say about the guild's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub messages: u64,
    /// `None` when a first training could already start.
    pub until_first_training: Option<u64>,
    pub prefix: String,
    /// Why there is no model although one could exist (e.g. a broken checkpoint).
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topic {
    Greeting,
    Thanks,
    Help,
    Training,
    Question,
    Other,
}

pub fn reply(input: &str, p: &Progress) -> String {
    let words = words(input);
    let has = |list: &[&str]| words.iter().any(|w| list.contains(&w.as_str()));
    let topic = if has(&["help", "commands", "command", "usage"]) {
        Topic::Help
    } else if has(&["train", "training", "learn", "learning", "model", "trained"]) {
        Topic::Training
    } else if has(&["thanks", "thank", "thx", "ty", "cheers"]) {
        Topic::Thanks
    } else if has(&["hi", "hello", "hey", "yo", "hiya", "howdy", "morning", "evening", "sup"]) {
        Topic::Greeting
    } else if input.trim_end().ends_with('?') {
        Topic::Question
    } else {
        Topic::Other
    };
    let openers: &[&str] = match topic {
        Topic::Greeting => &["Hi!", "Hey there!", "Hello!"],
        Topic::Thanks => &["You're welcome!", "Any time!"],
        Topic::Help => {
            &["I learn to talk like this server from its chat. Commands: `{p}llmstats` shows what I've \
             collected; admins can start training with `{p}llmtrain`."]
        }
        Topic::Training => {
            &["I train a small language model on this server's messages once there are enough of them."]
        }
        Topic::Question => &[
            "Good question, but I can't answer in this server's voice yet.",
            "I'd love to answer that, once I've learned how you all talk.",
        ],
        Topic::Other => &["Noted!", "I'm listening.", "Interesting."],
    };
    let opener =
        openers[(stable_hash(&words.join(" ")) % openers.len() as u64) as usize].replace("{p}", &p.prefix);
    format!("{opener} {}", status_line(p))
}

/// The honest part of every fallback reply.
pub fn status_line(p: &Progress) -> String {
    let seen = format!(
        "I'm still learning how this server talks — {} message{} so far",
        p.messages,
        if p.messages == 1 { "" } else { "s" }
    );
    let next = match (&p.note, p.until_first_training) {
        (Some(note), _) => format!("; I'm using simple replies because {note}."),
        (None, Some(0)) | (None, None) => {
            format!("; that's enough for a first model (an admin can run `{}llmtrain`).", p.prefix)
        }
        (None, Some(n)) => format!(", {n} more until my first training."),
    };
    seen + &next
}

fn words(input: &str) -> Vec<String> {
    input
        .split(|c: char| !c.is_alphanumeric() && c != '<' && c != '>' && c != '@')
        .filter(|w| !w.is_empty() && !w.starts_with('<'))
        .map(str::to_lowercase)
        .collect()
}

/// FNV-1a: stable across Rust versions and runs, unlike the std hasher.
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(messages: u64, until: Option<u64>) -> Progress {
        Progress { messages, until_first_training: until, prefix: "!".into(), note: None }
    }

    #[test]
    fn replies_are_honest_and_deterministic() {
        let p = progress(120, Some(380));
        let a = reply("<@1> hello there", &p);
        assert_eq!(a, reply("<@1> hello there", &p));
        assert!(a.contains("still learning"), "{a}");
        assert!(a.contains("120 messages so far"), "{a}");
        assert!(a.contains("380 more until my first training"), "{a}");
    }

    #[test]
    fn keywords_pick_the_topic() {
        let p = progress(5, Some(495));
        assert!(reply("<@1> help", &p).contains("`!llmstats`"));
        assert!(reply("<@1> when will you train?", &p).contains("language model"));
        assert!(["Hi!", "Hey there!", "Hello!"].iter().any(|g| reply("hey <@1>", &p).starts_with(g)));
        assert!(
            reply("<@1> thanks", &p).starts_with("You're welcome")
                || reply("<@1> thanks", &p).starts_with("Any time")
        );
    }

    #[test]
    fn the_input_and_its_mentions_are_never_echoed() {
        let p = progress(1, Some(499));
        let r = reply("<@1> @everyone <@&5> say something", &p);
        assert!(!r.contains('<') && !r.contains("@everyone") && !r.contains("something"), "{r}");
        assert!(r.contains("1 message so far"));
    }

    #[test]
    fn a_ready_corpus_and_a_broken_model_are_explained() {
        assert!(reply("hi", &progress(900, Some(0))).contains("an admin can run `!llmtrain`"));
        let p = Progress { note: Some("the model files are damaged".into()), ..progress(900, None) };
        assert!(reply("hi", &p).contains("because the model files are damaged"));
    }
}
