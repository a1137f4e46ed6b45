//! Training for another mynah instance, the way to a GPU for a server without one: pull the
//! guild's corpus over the API, train here (on CUDA when built with it), and push the model
//! bundle back, where it is validated before it serves.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

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

/// The largest corpus accepted from a serving instance.
const MAX_CORPUS_BYTES: usize = 512 << 20;
/// Reaching the instance, and then each of its answers (the corpus, the model's validation).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// Checks the serving instance's URL: `https://`, or `http://` to this machine only, since the
/// token and the whole corpus travel over it; `insecure` allows plain http anywhere.
pub fn check_url(base: &str, insecure: bool) -> anyhow::Result<String> {
    let url =
        reqwest::Url::parse(base).with_context(|| format!("{base:?} is not a URL like https://host:3000"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback || insecure => {}
        "http" => anyhow::bail!(
            "refusing plain http:// to {}: the token and the corpus would cross the network unencrypted \
             (use https://, or --insecure on a network you trust)",
            url.host_str().unwrap_or("")
        ),
        other => anyhow::bail!("{base}: the scheme must be https (or http), not {other}"),
    }
    Ok(base.trim_end_matches('/').to_string())
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).timeout(ANSWER_TIMEOUT).build()?)
}

/// The only guild with messages on the instance at `base`, for `--remote` without `--guild`.
pub async fn only_guild(base: &str, token: &str) -> anyhow::Result<String> {
    let status: serde_json::Value = client()?
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
    let client = client()?;
    let mut response = client
        .get(format!("{base}/api/training/corpus"))
        .query(&[("guild_id", guild)])
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("Failed to reach {base}"))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        anyhow::bail!("{base} refused the corpus request ({status}): {}", text.trim());
    }
    // Read with a cap: a broken or hostile instance cannot fill this machine's memory.
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.context("Failed to read the corpus")? {
        if body.len() + chunk.len() > MAX_CORPUS_BYTES {
            anyhow::bail!("the corpus from {base} is larger than {} MB", MAX_CORPUS_BYTES >> 20);
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body).context("the corpus is not UTF-8")?;
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
    opts.lora = config.engine.lora;
    // The remote instance needs the same base installed (it is found by its hash there).
    let chosen = super::bases::resolve(&config.models_dir, &config.engine.base)?;
    if let Some(b) = &chosen {
        eprintln!("fine-tuning base {} (the remote instance must have it installed too)", b.manifest.name);
    }
    let device_name = config.engine.device.clone();
    let dir = tempfile::tempdir()?;
    let parent = dir.path().to_path_buf();
    let run = tokio::task::spawn_blocking(move || -> anyhow::Result<PathBuf> {
        let device = crate::engine::device(&device_name)?;
        let cancel = AtomicBool::new(false);
        let spec = RunSpec {
            lines: &lines,
            opts: &opts,
            base: chosen.as_ref().map(super::bases::Base::run),
            parent: &parent,
            name: "bundle",
            preset_label: match &chosen {
                Some(b) => format!("fine-tuned from base {} (remote, {device_name})", b.manifest.name),
                None => format!("{} (remote, {device_name})", opts.preset.name),
            },
            corpus_span: (None, None),
        };
        let (_, _, run) = run::train_and_save(&spec, &device, &cancel, progress)?;
        Ok(run)
    })
    .await??;
    match push_dir(base, token, guild, &run).await {
        Ok(pushed) => Ok(pushed),
        Err(e) => {
            // Hours of training are not thrown away with a network error: the run stays here.
            let kept = keep(config, guild, &run)?;
            Err(e.context(format!(
                "the trained model is kept in {}; retry with `mynah model push {} --remote {base} --guild {guild}`",
                kept.display(),
                kept.display()
            )))
        }
    }
}

/// Copies a trained run that could not be pushed to `<models>/.unpushed/<guild>-<ms>/`.
fn keep(config: &Config, guild: &str, run: &Path) -> anyhow::Result<PathBuf> {
    let kept = config
        .models_dir
        .join(".unpushed")
        .join(format!("{guild}-{}", chrono::Utc::now().timestamp_millis()));
    std::fs::create_dir_all(&kept)?;
    for name in super::CHECKPOINT_FILES {
        std::fs::copy(run.join(name), kept.join(name)).with_context(|| format!("Failed to keep {name}"))?;
    }
    Ok(kept)
}

/// Packs the checkpoint directory `dir` and pushes it to the instance at `base` for `guild`.
pub async fn push_dir(base: &str, token: &str, guild: &str, dir: &Path) -> anyhow::Result<Pushed> {
    let bundle =
        super::bundle::pack(dir).with_context(|| format!("{} is not a trained run", dir.display()))?;
    let response = client()?
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_goes_to_this_machine_only() {
        assert!(check_url("https://bot.example.org:3000/", false).is_ok());
        assert_eq!(check_url("http://127.0.0.1:3000/", false).unwrap(), "http://127.0.0.1:3000");
        assert!(check_url("http://localhost:3000", false).is_ok());
        assert!(check_url("http://[::1]:3000", false).is_ok());
        let e = check_url("http://bot.example.org:3000", false).unwrap_err().to_string();
        assert!(e.contains("--insecure"), "{e}");
        assert!(check_url("http://10.0.0.5:3000", true).is_ok());
        assert!(check_url("ftp://host", true).is_err());
        assert!(check_url("bot-host:3000", false).is_err());
    }
}
