//! `mynah base pretrain`: pretraining mynah's own chat base on a directory of JSONL chat, in
//! sittings that resume one another, then installing the result as a base (the engine work is
//! [`crate::engine::pretrain`]'s).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use candle_core::Device;
use clap::Args;

use crate::engine::pretrain::{self, Corpus, Options};
use crate::engine::tokenizer::ChatLine;
use crate::engine::Preset;
use crate::models::bases;

#[derive(Debug, Args)]
pub struct PretrainArgs {
    /// A directory of JSONL chat files (mynah's corpus format); each file is one source.
    #[arg(long)]
    corpus: PathBuf,
    /// The model's size.
    #[arg(long, default_value = "base-s")]
    preset: String,
    /// Stop this sitting after this many hours (resume later with --resume).
    #[arg(long)]
    hours: Option<f64>,
    /// The whole run's budget in hours, which the first sitting fits the schedule to
    /// (default: --hours).
    #[arg(long)]
    budget_hours: Option<f64>,
    /// Passes over the corpus at most.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Continue the run in --work.
    #[arg(long)]
    resume: bool,
    /// Where the run keeps its tokenizer, checkpoints and state (default: data/pretrain/NAME).
    #[arg(long)]
    work: Option<PathBuf>,
    /// The installed base's name.
    #[arg(long, default_value = "mynah-base-s")]
    name: String,
    /// The licence the installed base is given.
    #[arg(long, default_value = "CC-BY-4.0 AND MIT")]
    licence: String,
    /// Minutes between checkpoints.
    #[arg(long, default_value_t = 5.0)]
    checkpoint_minutes: f64,
}

/// The corpus's files as sources, each oldest first.
fn read_sources(dir: &Path) -> anyhow::Result<Vec<Vec<ChatLine>>> {
    anyhow::ensure!(dir.is_dir(), "{} is not a directory of JSONL chat files", dir.display());
    let files = crate::bench::jsonl_files(dir)?;
    anyhow::ensure!(!files.is_empty(), "{} holds no .jsonl files", dir.display());
    files
        .iter()
        .map(|f| {
            let lines = crate::bench::read_corpus(f)?;
            eprintln!("  {}: {} messages", f.display(), lines.len());
            Ok(lines)
        })
        .collect()
}

pub fn run(models_dir: &Path, args: PretrainArgs) -> anyhow::Result<()> {
    let preset =
        Preset::by_name(&args.preset).with_context(|| format!("unknown preset {:?}", args.preset))?;
    let work = args.work.clone().unwrap_or_else(|| PathBuf::from("data/pretrain").join(&args.name));
    let existing = pretrain::saved_tokenizer(&work)?;
    anyhow::ensure!(
        existing.is_none() || args.resume,
        "{} holds a pretraining run already: pass --resume to continue it, or --work for a new one",
        work.display()
    );
    anyhow::ensure!(existing.is_some() || !args.resume, "--resume: no run in {}", work.display());
    const VAL_FRACTION: f64 = 0.01;
    eprintln!("reading {}", args.corpus.display());
    let sources = read_sources(&args.corpus)?;
    let started = Instant::now();
    let tok = match existing {
        Some(tok) => tok,
        None => {
            eprintln!("training a {}-token tokenizer …", preset.vocab_size);
            let tok = pretrain::train_tokenizer(&sources, preset.vocab_size, VAL_FRACTION)?;
            pretrain::start(&work, &tok)?;
            tok
        }
    };
    let corpus = Corpus::build(&sources, &tok, VAL_FRACTION)?;
    drop(sources);
    eprintln!(
        "{} training tokens ({} messages), {} held out ({} messages); ready in {:.0} s",
        corpus.train.len(),
        corpus.train_messages,
        corpus.val.len(),
        corpus.val_messages,
        started.elapsed().as_secs_f64()
    );
    let opts = Options {
        preset,
        epochs: args.epochs,
        max_seconds: args.hours.map(|h| h * 3600.0),
        budget_seconds: args.budget_hours.or(args.hours).map(|h| h * 3600.0),
        checkpoint_seconds: args.checkpoint_minutes * 60.0,
        val_windows: 256,
        weight_decay: 0.1,
        clip_norm: 1.0,
        seed: 42,
    };
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        // Ctrl-C ends the sitting at the next step with a checkpoint.
        let _ = ctrlc_flag(cancel);
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut last_print = Instant::now();
    let state = pretrain::run(&work, &tok, &corpus, &opts, &Device::Cpu, &cancel, &mut |p| {
        bar.set_length(p.total_steps as u64);
        bar.set_position(p.step as u64);
        let val = p.last_eval.as_ref().map(|e| format!(", held out {:.3} bits/byte", e.val_bits_per_byte));
        bar.set_message(format!(
            "loss {:.3}, {:.0} tokens/s, about {} left{}",
            p.loss,
            p.tokens_per_second,
            duration(p.eta_seconds),
            val.unwrap_or_default()
        ));
        if bar.is_hidden() && last_print.elapsed() > Duration::from_secs(60) {
            last_print = Instant::now();
            eprintln!("step {}/{}: {}", p.step, p.total_steps, bar.message());
        }
    })?;
    bar.finish();
    let last = state.history.last();
    if last.is_none() {
        println!("no step was taken and there is no checkpoint yet");
        return Ok(());
    }
    println!(
        "sitting {} ended at step {}/{} ({:.1} M tokens, {:.1} h in all){}",
        state.sittings,
        state.step,
        state.total_steps,
        state.tokens as f64 / 1e6,
        state.seconds / 3600.0,
        last.map(|e| format!(": held out {:.3} bits/byte", e.val_bits_per_byte)).unwrap_or_default()
    );
    let export = work.join("export");
    let _ = std::fs::remove_dir_all(&export);
    pretrain::export(&work, &export)?;
    // The installed base is replaced; files kept beside it (its model card, licences) stay.
    let installed = models_dir.join(bases::DIR).join(&args.name);
    let mut kept = Vec::new();
    if bases::open(&installed).is_ok() {
        for e in std::fs::read_dir(&installed)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_file() && !bases::FILES.contains(&name.as_str()) && name != bases::MANIFEST {
                kept.push((name, std::fs::read(e.path())?));
            }
        }
        bases::remove(models_dir, &args.name)?;
    }
    let mut base = bases::import(models_dir, &export, Some(&args.name), Some(&args.licence))?;
    // Say how it was made rather than where the export lay.
    base.manifest.source = format!(
        "mynah base pretrain --corpus {} --preset {}: step {} of {}, {:.1} M tokens",
        args.corpus.display(),
        args.preset,
        state.step,
        state.total_steps,
        state.tokens as f64 / 1e6
    );
    let json = serde_json::to_vec_pretty(&base.manifest)?;
    crate::engine::checkpoint::write_synced(&base.path.join(bases::MANIFEST), &json)?;
    for (name, bytes) in kept {
        std::fs::write(base.path.join(name), bytes)?;
    }
    println!(
        "installed base {} ({:.1} M parameters) in {}{}",
        base.manifest.name,
        base.manifest.parameters as f64 / 1e6,
        base.path.display(),
        if state.done() { "" } else { " (the run is not finished: --resume continues it)" }
    );
    Ok(())
}

/// `1h 05m`, `4m 10s`.
fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m {:02}s", s / 60, s % 60)
    }
}

/// Sets `flag` on Ctrl-C (best effort: without a handler Ctrl-C just ends the process, and the
/// run resumes from its last checkpoint).
fn ctrlc_flag(flag: Arc<AtomicBool>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Handle::try_current()?;
    rt.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    Ok(())
}
