//! `mynah bench`: the figures the project holds itself to, measured on this machine: reply
//! latency, training throughput and wall time with held-out bits per byte against a Kneser–Ney
//! baseline, resident memory while serving, and the ingest rate of a gateway burst
//! (`ingest`). Never run as timed tests.

pub mod ingest;
pub mod load;
pub mod memory;
pub mod overlap;
pub mod quality;
pub mod scale;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context as _;
use candle_core::Device;
use clap::Subcommand;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;

use crate::engine::checkpoint;
use crate::engine::fast::FastModel;
use crate::engine::generate::{self, Sampling};
use crate::engine::model::Model;
use crate::engine::ngram::KneserNey;
use crate::engine::run::{self, RunSpec};
use crate::engine::tokenizer::{ChatLine, ChatTokenizer};
use crate::engine::train::{self, Phase, TrainOptions};
use crate::engine::Preset;

#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Train the default model on a corpus; report wall time, tokens/s and held-out bits per
    /// byte next to an interpolated Kneser–Ney trigram baseline; save the model.
    Train {
        /// A JSONL corpus, e.g. ../shared/corpus/fcc-dev.jsonl
        #[arg(long)]
        corpus: PathBuf,
        #[arg(long, default_value = "default")]
        preset: String,
        #[arg(long, default_value_t = 3)]
        epochs: usize,
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Where to save the trained model (a run directory is created inside).
        #[arg(long, default_value = "models/bench")]
        out: PathBuf,
        /// Also write the token streams and config for the PyTorch reference (bench/torch_reference.py).
        #[arg(long)]
        export: Option<PathBuf>,
        /// Fine-tune this pretrained base (a directory under models/base/) with adapters instead
        /// of training the preset from scratch (the PyTorch side: bench/compare_lora.sh).
        #[arg(long)]
        base: Option<PathBuf>,
        /// Train through candle's graph, as before the hand-written training step (which
        /// trains every weight on the CPU otherwise): the two side by side.
        #[arg(long)]
        graph: bool,
    },
    /// Reply latency: a 40-token reply after a 64-token context, p50 and p99.
    Reply {
        /// A run directory (models/<guild>/<run>); without it, an untrained model of the preset.
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, default_value = "default")]
        preset: String,
        #[arg(long, default_value_t = 100)]
        runs: usize,
    },
    /// A burst of messages over the local gateway into the real bot: the ingest rate, and mention
    /// reply latency during the burst next to an idle bot.
    Ingest {
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
    },
    /// Messages per second stored by 1, 2 and 4 processes into one SQLite file, and into one
    /// PostgreSQL database with --postgres.
    Scale {
        /// A PostgreSQL server to measure too (the bench creates its databases there).
        #[arg(long)]
        postgres: Option<String>,
        /// How long each measurement writes.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// The numbers of writer processes to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        processes: Vec<usize>,
    },
    /// One writer of `bench scale` (started by it).
    #[command(hide = true)]
    ScaleWriter {
        #[arg(long)]
        database: String,
        #[arg(long)]
        guild: String,
        #[arg(long)]
        seconds: u64,
    },
    /// Mention reply latency while concurrent clients hammer the HTTP API, next to an idle API.
    Load {
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// How long the API load lasts at most.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// What replies are worth on the newest 10 % of a corpus: held-out bits per byte of the
    /// network, the count model and their mixture (frozen and online) next to xz and PPMd;
    /// readability of replies before and now next to the humans'; latency; sample replies.
    Quality(quality::Options),
    /// The share of a corpus's messages that repeat 8 consecutive words of one message of
    /// another corpus (a base's pretraining data): its overlap with an evaluation corpus.
    Overlap {
        /// The evaluation corpus, e.g. ../shared/corpus/fcc-dev.jsonl
        #[arg(long)]
        corpus: PathBuf,
        /// The other corpus: a JSONL file or a directory of them, e.g. ../shared/corpus/base
        #[arg(long)]
        against: PathBuf,
    },
    /// Resident memory while serving replies with a model, for one guild or several on one run
    /// (one shared base), with their voices when a corpus is given.
    Memory(memory::Options),
}

pub fn run(cmd: Bench) -> anyhow::Result<()> {
    match cmd {
        Bench::Train { corpus, preset, epochs, minutes, out, export, base, graph } => {
            let train = TrainBench { epochs, minutes, graph };
            bench_train(&corpus, &preset, train, &out, export.as_deref(), base.as_deref())
        }
        Bench::Reply { model, preset, runs } => bench_reply(model.as_deref(), &preset, runs),
        Bench::Memory(options) => memory::run(&options),
        Bench::Overlap { corpus, against } => overlap::run(&corpus, &against),
        Bench::Quality(options) => quality::run(&options),
        Bench::Ingest { .. } | Bench::Load { .. } | Bench::Scale { .. } | Bench::ScaleWriter { .. } => {
            anyhow::bail!("bench ingest, load and scale run on the async runtime (see cli::run)")
        }
    }
}

fn preset(name: &str) -> anyhow::Result<Preset> {
    Preset::by_name(name).with_context(|| format!("unknown preset {name:?}"))
}

/// The JSONL files of `path`: the file itself, or a directory's `*.jsonl` in name order.
pub fn jsonl_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("Failed to read {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads a JSONL corpus as chat lines, oldest first.
pub fn read_corpus(path: &Path) -> anyhow::Result<Vec<ChatLine>> {
    read_corpus_of(path, None)
}

/// Reads a JSONL corpus as chat lines, oldest first: every guild's, or only `guild`'s.
pub fn read_corpus_of(path: &Path, guild: Option<&str>) -> anyhow::Result<Vec<ChatLine>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("Failed to read {}", path.display()))?;
    let (records, bad) = crate::corpus::parse_all(&text, None);
    if !bad.is_empty() {
        eprintln!("{} malformed lines skipped", bad.len());
    }
    let mut lines: Vec<ChatLine> = records
        .iter()
        .filter(|r| guild.is_none_or(|g| r.guild_id == g))
        .map(crate::corpus::Record::chat_line)
        .collect();
    lines.sort_by_key(|l| l.time_ms);
    Ok(lines)
}

/// How long `bench train` trains, and how.
struct TrainBench {
    epochs: usize,
    minutes: f64,
    graph: bool,
}

fn bench_train(
    corpus: &Path,
    preset_name: &str,
    TrainBench { epochs, minutes, graph }: TrainBench,
    out: &Path,
    export: Option<&Path>,
    base: Option<&Path>,
) -> anyhow::Result<()> {
    let lines = read_corpus(corpus)?;
    let base = base.map(crate::models::bases::open).transpose()?;
    let bytes: usize = lines.iter().map(|l| l.content.len()).sum();
    eprintln!("corpus: {} messages, {:.1} MB of text", lines.len(), bytes as f64 / 1e6);
    let mut opts = TrainOptions::new(preset(preset_name)?);
    opts.epochs = epochs;
    opts.max_seconds = Some(minutes * 60.0);
    opts.max_val_windows = usize::MAX;
    opts.through_graph = graph;
    let cancel = AtomicBool::new(false);
    let started = Instant::now();
    let mut last_print = Instant::now();
    let run = format!("run-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S"));
    let spec = RunSpec {
        lines: &lines,
        opts: &opts,
        base: base.as_ref().map(crate::models::bases::Base::run),
        parent: out,
        name: &run,
        preset_label: opts.preset.name.clone(),
        corpus_span: (None, None),
    };
    // Training time and tokens at the end of the first step and of the last, from the progress
    // figures (which leave evaluations out): the reference scripts leave out their first,
    // warm-up step, so the comparison does too.
    let (mut first, mut last) = (None, None);
    let (trained, report, dir) = run::train_and_save(&spec, &Device::Cpu, &cancel, |p| {
        if p.phase == Phase::Training && p.tokens_per_second > 0.0 {
            let at = (p.tokens as f64, p.tokens as f64 / p.tokens_per_second);
            first.get_or_insert(at);
            last = Some(at);
        }
        if last_print.elapsed().as_secs_f64() > 15.0 || p.phase != Phase::Training {
            eprintln!(
                "  {:>10} step {}/{} epoch {:.2} loss {:.3} {:.0} tok/s eta {:.0}s",
                p.phase, p.step, p.total_steps, p.epoch, p.loss, p.tokens_per_second, p.eta_seconds
            );
            last_print = Instant::now();
        }
    })?;
    let wall = started.elapsed().as_secs_f64();
    let r = &report;
    let after_first = match (first, last) {
        (Some((t0, s0)), Some((t1, s1))) if s1 > s0 => Some((t1 - t0) / (s1 - s0)),
        _ => None,
    };

    let data = train::prepare(&lines, &trained.tokenizer, opts.val_fraction)?;
    let kn_started = Instant::now();
    let kn = KneserNey::train(&data.train, trained.tokenizer.vocab_size());
    let (nats, _) = kn.nll(&data.val);
    let kn_bytes: u64 = data.val[2..].iter().map(|&t| trained.tokenizer.byte_len(t) as u64).sum();
    let kn_bpb = nats / std::f64::consts::LN_2 / kn_bytes.max(1) as f64;
    let kn_seconds = kn_started.elapsed().as_secs_f64();

    if let Some(export) = export {
        // What the run really trained with: a base is fine-tuned with its own batch and context.
        let opts = match &base {
            Some(_) => crate::engine::finetune::base_options(&opts, &trained.fast.cfg),
            None => opts.clone(),
        };
        let base = base.as_ref().map(|b| (b.path.as_path(), opts.lora));
        export_for_torch(export, &data, &trained.fast.cfg, &opts, base)?;
    }
    let summary = json!({
        "preset": opts.preset.name,
        "params": trained.fast.cfg.params(),
        "wall_seconds": wall,
        "steps": r.steps,
        "epochs": r.epochs,
        "stopped_by_budget": r.stopped_by_budget,
        "train_tokens_per_second": r.tokens_per_second,
        "train_tokens_per_second_after_first_step": after_first,
        "train_loss": r.train_loss,
        "val_bits_per_byte": r.val_bits_per_byte,
        "kneser_ney_trigram_val_bits_per_byte": kn_bpb,
        "kneser_ney_seconds": kn_seconds,
        "train_messages": r.train_messages,
        "val_messages": r.val_messages,
        "train_tokens": data.train.len(),
        "val_tokens": data.val.len(),
        "model_dir": dir,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

/// Token streams as little-endian u32 files plus the shapes, for bench/torch_reference.py.
fn export_for_torch(
    dir: &Path,
    data: &train::Data,
    cfg: &crate::engine::model::ModelConfig,
    opts: &TrainOptions,
    base: Option<(&Path, Option<crate::engine::lora::LoraSpec>)>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = |s: &[u32]| s.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(dir.join("train.u32"), bytes(&data.train))?;
    std::fs::write(dir.join("val.u32"), bytes(&data.val))?;
    let spec = json!({
        "config": cfg,
        "batch": opts.preset.batch,
        "seq_len": opts.preset.seq_len,
        "lr": opts.preset.lr,
        "weight_decay": opts.weight_decay,
        "clip_norm": opts.clip_norm,
        "base_dir": base.map(|(path, _)| std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())),
        "lora": base.and_then(|(_, lora)| lora),
    });
    std::fs::write(dir.join("spec.json"), serde_json::to_string_pretty(&spec)?)?;
    Ok(())
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A 64-token prompt: real chat through the tokenizer when there is one.
fn prompt_tokens(tok: Option<&ChatTokenizer>, vocab: usize) -> anyhow::Result<Vec<u32>> {
    let mut ids = Vec::new();
    if let Some(tok) = tok {
        for l in crate::playground::SAMPLE.lines().take(40) {
            let v: serde_json::Value = serde_json::from_str(l)?;
            ids.extend(
                tok.encode_message(v["author"].as_str().unwrap_or(""), v["content"].as_str().unwrap_or(""))?,
            );
        }
    }
    while ids.len() < 64 {
        ids.push((ids.len() as u32 * 7919) % vocab as u32);
    }
    ids.truncate(64);
    Ok(ids)
}

/// One reply's worth of work: prefill the prompt, then 40 sampled tokens through the cache,
/// on the serving path (`fast`) or candle's reference path.
fn timed_reply(
    model: &Model,
    fast: Option<&FastModel>,
    prompt: &[u32],
    banned: &[u32],
    s: &Sampling,
    rng: &mut StdRng,
) -> anyhow::Result<(f64, f64)> {
    let t = Instant::now();
    let prefilled;
    match fast {
        Some(fast) => {
            let mut cache = fast.new_cache();
            let mut logits = Vec::new();
            fast.forward(prompt, &mut cache, &mut logits)?;
            prefilled = t.elapsed();
            for _ in 0..40 {
                let next = generate::sample(&mut logits, banned, &[], &[], s, rng);
                fast.forward(&[next], &mut cache, &mut logits)?;
            }
        }
        None => {
            let mut cache = model.new_cache();
            let mut logits = model.forward_cached(prompt, &mut cache)?.to_vec1::<f32>()?;
            prefilled = t.elapsed();
            for _ in 0..40 {
                let next = generate::sample(&mut logits, banned, &[], &[], s, rng);
                logits = model.forward_cached(&[next], &mut cache)?.to_vec1::<f32>()?;
            }
        }
    }
    Ok((t.elapsed().as_secs_f64() * 1000.0, prefilled.as_secs_f64() * 1000.0))
}

/// p50, p99 and mean over `runs` replies after a warm-up.
fn latencies(
    model: &Model,
    fast: Option<&FastModel>,
    prompt: &[u32],
    banned: &[u32],
    runs: usize,
) -> anyhow::Result<serde_json::Value> {
    let s = Sampling::default();
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..5 {
        timed_reply(model, fast, prompt, banned, &s, &mut rng)?;
    }
    let (mut times, mut prefills): (Vec<f64>, Vec<f64>) = (0..runs.max(1))
        .map(|_| timed_reply(model, fast, prompt, banned, &s, &mut rng))
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    times.sort_by(f64::total_cmp);
    prefills.sort_by(f64::total_cmp);
    Ok(json!({
        "runs": times.len(),
        "prefill_p50_ms": percentile(&prefills, 0.5),
        "p50_ms": percentile(&times, 0.5),
        "p99_ms": percentile(&times, 0.99),
        "mean_ms": times.iter().sum::<f64>() / times.len() as f64,
    }))
}

fn load_or_init(model: Option<&Path>, preset_name: &str) -> anyhow::Result<(Model, Option<ChatTokenizer>)> {
    match model {
        Some(dir) => {
            let loaded = load_run(dir, true)?;
            Ok((loaded.model.context("the run has no candle model")?, Some(loaded.tokenizer)))
        }
        None => {
            let cfg = preset(preset_name)?.model_config(preset(preset_name)?.vocab_size);
            let (model, _) = train::init_model(&cfg, &Device::Cpu, 0)?;
            Ok((model, None))
        }
    }
}

fn bench_reply(model: Option<&Path>, preset_name: &str, runs: usize) -> anyhow::Result<()> {
    let (model, tok) = load_or_init(model, preset_name)?;
    let prompt = prompt_tokens(tok.as_ref(), model.cfg.vocab_size)?;
    // Message ends are banned so every reply is exactly 40 tokens.
    let banned: Vec<u32> =
        tok.as_ref().map(|t| [t.banned_in_content(), &[t.eom]].concat()).unwrap_or_default();
    let fast = FastModel::from_model(&model)?;
    let summary = json!({
        "params": model.cfg.params(),
        "prompt_tokens": prompt.len(),
        "new_tokens": 40,
        "serving_path": latencies(&model, Some(&fast), &prompt, &banned, runs)?,
        "candle_reference_path": latencies(&model, None, &prompt, &banned, runs.min(30))?,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

/// Peak and current resident set size in MB, from /proc.
pub fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Mentions the bot with `text` on the local Discord-compatible server and returns the
/// milliseconds until its reply arrives (bench ingest and load).
pub(crate) async fn mention_ms(
    server: &crate::devserver::DevServer,
    channel: u64,
    user: u64,
    bot: u64,
    text: &str,
) -> anyhow::Result<f64> {
    let t = std::time::Instant::now();
    let sent = server.say(channel, user, &format!("<@{bot}> {text}"));
    server
        .wait_for_bot_message(channel, sent, std::time::Duration::from_secs(30))
        .await
        .context("a mention got no reply")?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// The median and the 99th percentile of `ms`, which it sorts.
pub(crate) fn p50_p99(ms: &mut [f64]) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    (percentile(ms, 0.5), percentile(ms, 0.99))
}

/// The real bot's configuration for a bench on the local Discord-compatible server: a
/// throwaway database and models under `dir`, `channel` collected, no cool-downs, no schedule,
/// no API socket of its own.
pub(crate) fn bot_config(
    dir: &std::path::Path,
    server: &crate::devserver::DevServer,
    channel: u64,
) -> crate::config::Config {
    use crate::config::{Collect, Config, Secret};
    Config {
        database_url: format!("sqlite://{}/bench.db", dir.display()),
        models_dir: dir.join("models"),
        api_addr: None,
        discord_token: Some(Secret::new(server.token())),
        discord_api_base: Some(server.base_url()),
        collect: Collect::Channels([channel.to_string()].into()),
        limits: crate::ratelimit::Limits::off(),
        schedule_minutes: None,
        ..Config::default()
    }
}

/// Loads a run on the CPU, with its base from those installed under `MYNAH_MODELS_DIR` (or
/// `models`) when it was fine-tuned from one.
fn load_run(dir: &Path, keep_model: bool) -> anyhow::Result<checkpoint::Loaded> {
    let models_dir =
        std::env::var_os("MYNAH_MODELS_DIR").map_or_else(|| PathBuf::from("models"), PathBuf::from);
    Ok(crate::models::bases::load_run(dir, &Device::Cpu, &models_dir, keep_model)?)
}
