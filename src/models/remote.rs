//! Training for another mynah instance, the way to a GPU for a server without one: pull the
//! guild's corpus over the API, train here (on CUDA when built with it), and push the model
//! bundle back, where it is validated before it serves.

use std::sync::atomic::AtomicBool;

use anyhow::Context as _;

use crate::config::Config;
use crate::engine::run::{self, RunSpec};
use crate::engine::tokenizer::ChatLine;
use crate::engine::train::{Progress, TrainOptions};

/// What the serving instance answered.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Pushed {
    pub guild_id: String,
    pub run_id: i64,
}

/// The only guild with messages on the instance at `base`, for `--remote` without `--guild`.
pub async fn only_guild(base: &str, token: &str) -> anyhow::Result<String> {
    let status: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/ml/status", base.trim_end_matches('/')))
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("Failed to reach {base}"))?
        .error_for_status()
        .with_context(|| format!("{base} refused the status request (is the token right?)"))?
        .json()
        .await
        .context("unexpected answer from /api/ml/status")?;
    let guilds: Vec<String> = status["guilds"]
        .as_array()
        .map(|a| a.iter().filter_map(|g| g["guild_id"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    match guilds.as_slice() {
        [only] => Ok(only.clone()),
        [] => anyhow::bail!("{base} has no guild with messages"),
        many => anyhow::bail!("{base} has several guilds ({}): pass --guild", many.join(", ")),
    }
}

/// Pulls `guild`'s corpus from `base` (e.g. `http://host:3000`), trains with `config.engine`,
/// and pushes the model back.
pub async fn train_remote(
    config: &Config,
    base: &str,
    token: &str,
    guild: &str,
    progress: impl FnMut(&Progress) + Send + 'static,
) -> anyhow::Result<Pushed> {
    let base = base.trim_end_matches('/');
    let client = reqwest::Client::new();
    let response = client
        .get(format!("{base}/api/training/corpus"))
        .query(&[("guild_id", guild)])
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("Failed to reach {base}"))?;
    let status = response.status();
    let text = response.text().await.context("Failed to read the corpus")?;
    if !status.is_success() {
        anyhow::bail!("{base} refused the corpus request ({status}): {}", text.trim());
    }
    let (records, bad) = crate::corpus::parse_all(&text, None);
    if !bad.is_empty() {
        anyhow::bail!(
            "the corpus from {base} has {} malformed lines (first: line {})",
            bad.len(),
            bad[0].line
        );
    }
    let mut lines: Vec<ChatLine> = records.iter().map(crate::corpus::Record::chat_line).collect();
    lines.sort_by_key(|l| l.time_ms);
    eprintln!("pulled {} messages of guild {guild} from {base}", lines.len());

    let mut opts = TrainOptions::new(config.engine.preset.clone());
    opts.epochs = config.engine.epochs;
    opts.max_seconds = Some(config.engine.max_minutes * 60.0);
    let device_name = config.engine.device.clone();
    let bundle = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
        let device = crate::engine::device(&device_name)?;
        let cancel = AtomicBool::new(false);
        let dir = tempfile::tempdir()?;
        let spec = RunSpec {
            lines: &lines,
            opts: &opts,
            base: None,
            parent: dir.path(),
            name: "bundle",
            preset_label: format!("{} (remote, {device_name})", opts.preset.name),
            corpus_span: (None, None),
        };
        let (_, _, run) = run::train_and_save(&spec, &device, &cancel, progress)?;
        Ok(super::bundle::pack(&run)?)
    })
    .await??;

    let response = client
        .post(format!("{base}/api/training/model"))
        .query(&[("guild_id", guild)])
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
        .body(bundle)
        .send()
        .await
        .with_context(|| format!("Failed to push the model to {base}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("{base} refused the model ({status}): {}", text.trim());
    }
    serde_json::from_str(&text).with_context(|| format!("unexpected answer from {base}: {text}"))
}
