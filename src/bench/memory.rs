//! `mynah bench memory`: resident memory while serving replies, for one guild or for several
//! served from one run (a pretrained base is then loaded once and shared, each guild keeping its
//! adapters), each guild with its voice when a corpus is given.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;

use crate::engine::decode;
use crate::engine::generate::Sampling;
use crate::engine::tokenizer::ChatLine;
use crate::engine::voice::Voice;

#[derive(Debug, Clone, Args)]
pub struct Options {
    /// A trained run directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Replies per guild.
    #[arg(long, default_value_t = 50)]
    pub replies: usize,
    /// Guilds served at once, each loading the run as the bot loads a guild's model.
    #[arg(long, default_value_t = 1)]
    pub guilds: usize,
    /// A JSONL corpus each guild's voice (count model, vocabulary, copy index) is built from;
    /// without it the guilds serve without voices.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Split the corpus into one consecutive share per guild instead of giving each the whole.
    #[arg(long)]
    pub split: bool,
}

/// The messages each guild's voice learns.
fn shares(lines: &[ChatLine], guilds: usize, split: bool) -> Vec<&[ChatLine]> {
    if split {
        let size = lines.len().div_ceil(guilds).max(1);
        let mut parts: Vec<&[ChatLine]> = lines.chunks(size).collect();
        parts.resize(guilds, &[]);
        parts
    } else {
        vec![lines; guilds]
    }
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    let guilds = o.guilds.max(1);
    let lines = match &o.corpus {
        Some(path) => super::read_corpus_of(path, None)?,
        None => Vec::new(),
    };
    let history: Vec<(String, String)> = crate::playground::SAMPLE
        .lines()
        .take(8)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (v["author"].as_str().unwrap_or("").to_string(), v["content"].as_str().unwrap_or("").to_string())
        })
        .collect();
    let shares = shares(&lines, guilds, o.split);
    let mut served = Vec::with_capacity(guilds);
    let (mut voice_bytes, mut adapter_bytes) = (0usize, 0usize);
    for &share in &shares {
        // Loaded as the bot serves it: no candle copy of the weights.
        let loaded = super::load_run(&o.model, false)?;
        adapter_bytes += loaded.fast.adapter_bytes();
        let voice = match o.corpus {
            Some(_) => {
                let voice = Voice::from_lines(&loaded.tokenizer, loaded.meta.mixer.as_deref(), share)
                    .context("building a guild's voice")?;
                voice_bytes += voice.counts.approx_bytes();
                Some(voice)
            }
            None => None,
        };
        served.push((loaded, voice));
    }
    // What the bot holds once the purge delay has passed, not a base's freed `f32` copy.
    crate::engine::allocator::release_freed();
    let (loaded_peak, loaded_now) = super::rss_mb();
    let sampling = Sampling::default();
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..o.replies {
        for (loaded, voice) in &served {
            decode::reply(&loaded.fast, &loaded.tokenizer, &history, &sampling, voice.as_ref(), &mut rng)?;
        }
    }
    crate::engine::allocator::release_freed();
    let (peak, now) = super::rss_mb();
    let report = json!({
        "guilds": guilds,
        "replies_per_guild": o.replies,
        "voice_messages_per_guild": shares[0].len(),
        "voices_approx_mb": voice_bytes as f64 / 1e6,
        "adapters_mb": adapter_bytes as f64 / 1e6,
        "rss_after_loading_mb": loaded_now,
        "peak_rss_while_loading_mb": loaded_peak,
        "rss_mb": now,
        "peak_rss_mb": peak,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize) -> Vec<ChatLine> {
        (0..n)
            .map(|i| ChatLine {
                channel: "c".into(),
                author: "a".into(),
                content: format!("message {i}"),
                time_ms: i as i64,
            })
            .collect()
    }

    #[test]
    fn a_split_corpus_gives_each_guild_its_own_consecutive_share() {
        let all = lines(10);
        let parts = shares(&all, 3, true);
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert_eq!(parts[1][0].content, "message 4");
        let parts = shares(&all[..2], 3, true);
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![1, 1, 0]);
    }

    #[test]
    fn unsplit_every_guild_gets_the_whole_corpus() {
        let all = lines(5);
        assert!(shares(&all, 2, false).iter().all(|p| p.len() == 5));
    }
}
