//! `mynah bench quality`: what a guild's replies are worth, on the newest 10 % of its messages
//! (the split training holds out). Held-out bits per byte of the network, the count model and
//! their mixture (frozen, and online as members get it), next to xz and 7-Zip's PPMd; the
//! readability of replies to prompts drawn from held-out messages, before (the network alone,
//! one draw) and now (the voice, sample and rank), next to the humans' own messages; reply
//! latency and memory; and sample replies to read.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context as _;
use candle_core::Device;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::engine::checkpoint::Loaded;
use crate::engine::counts::{CountModel, Mixer};
use crate::engine::generate::{self, Sampling};
use crate::engine::run::{self, RunSpec};
use crate::engine::tokenizer::ChatLine;
use crate::engine::train::{self, Predicted, TrainOptions};
use crate::engine::voice::{self, Voice};
use crate::engine::words::{CopyIndex, Readability, Vocabulary};

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// A JSONL corpus, e.g. ../shared/corpus/fcc-dev.jsonl
    #[arg(long)]
    pub corpus: PathBuf,
    /// Only this guild's messages.
    #[arg(long)]
    pub guild: Option<String>,
    /// A trained run directory; without it, the preset is trained on the corpus first.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Fine-tune this pretrained base (a directory under models/base/) instead of training
    /// from scratch; with --minutes 0 the base is measured as it is (zero-shot).
    #[arg(long, conflicts_with = "model")]
    pub base: Option<PathBuf>,
    /// Keep the trained run in this directory (as `<dir>/bench`), for `--model` later.
    #[arg(long, conflicts_with = "model")]
    pub keep: Option<PathBuf>,
    #[arg(long, default_value = "default")]
    pub preset: String,
    /// The training budget when training (what a guild gets: MYNAH_TRAIN_MAX_MINUTES).
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Epochs when training (what a guild gets: MYNAH_TRAIN_EPOCHS).
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Prompts drawn from held-out messages.
    #[arg(long, default_value_t = 200)]
    pub prompts: usize,
    /// Write the sample replies here instead of standard output.
    #[arg(long)]
    pub samples: Option<PathBuf>,
    /// Measure only the replies (no held-out bits per byte).
    #[arg(long)]
    pub skip_bits: bool,
}

/// Messages of context before a prompt, as replies get (`MYNAH_REPLY_CONTEXT`'s default).
const CONTEXT: usize = 8;

pub fn run(o: &Options) -> anyhow::Result<()> {
    let mut lines = super::read_corpus_of(&o.corpus, o.guild.as_deref())?;
    lines.retain(|l| !l.content.trim().is_empty());
    let (train_part, held_out) = train::split(&lines, 0.1)?;
    eprintln!("corpus: {} messages, {} held out", lines.len(), held_out.len());
    let model = match &o.model {
        Some(dir) => super::load_run(dir, true)?,
        None => train_model(&lines, o)?,
    };
    let tok = &model.tokenizer;

    if o.skip_bits {
        println!("(held-out bits per byte skipped: --skip-bits)");
    } else {
        println!("## Held-out bits per byte ({} messages)", held_out.len());
        let scores = bits(&model, train_part, held_out)?;
        println!("| model | frozen | online |\n|---|---|---|");
        println!("| network | {:.3} | – |", scores.net);
        println!(
            "| count model (order {}) | {:.3} | {:.3} |",
            scores.order, scores.counts.0, scores.counts.1
        );
        println!(
            "| mixture (fitted on the training part's newest 10 %) | {:.3} | {:.3} |",
            scores.mix.0, scores.mix.1
        );
        for (name, c) in [("xz -9e", Compressor::Xz), ("7-Zip PPMd o8", Compressor::Ppmd)] {
            match conditional_bits(c, train_part, held_out) {
                Some(b) => println!("| {name} (conditional, on `author: content` lines) | – | {b:.3} |"),
                None => println!("| {name} | not installed | – |"),
            }
        }
    }

    let voice = Voice::build(tok, model.meta.mixer.as_deref(), voice::said(train_part))?;
    let vocab = Vocabulary::from_messages(train_part.iter().map(|l| l.content.as_str()));
    let mut copies = CopyIndex::new();
    for (i, l) in train_part.iter().enumerate() {
        copies.add(i as u64, &l.content);
    }
    let prompts = prompts(&lines, train_part.len(), o.prompts);
    let sampling = Sampling::default();
    let mut before = Vec::new();
    let mut now = Vec::new();
    let mut ms = Vec::new();
    let mut warm_ms = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(i as u64);
        let one = Sampling { candidates: 1, ..sampling.clone() };
        before.push(generate::reply(&model.fast, tok, &p.history, &one, &mut rng)?.text);
        let t = Instant::now();
        let mut rng = StdRng::seed_from_u64(i as u64);
        let (ranked, kept) = crate::engine::decode::reply_with(
            &model.fast,
            tok,
            &p.history,
            &sampling,
            Some(&voice),
            &mut rng,
            None,
        )?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        // As a member would read it: the service drops an opening `@name` address.
        let best = ranked.first().map(|c| c.reply.text.as_str()).unwrap_or_default();
        now.push(crate::text::without_leading_address(best).to_string());
        // The next mention in the same channel: the member's next message, replied to with the
        // channel's context kept from this reply.
        let mut next = p.history.clone();
        next.push(("someone".into(), p.human.clone()));
        let t = Instant::now();
        crate::engine::decode::reply_with(
            &model.fast,
            tok,
            &next,
            &sampling,
            Some(&voice),
            &mut rng,
            Some(kept),
        )?;
        warm_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    warm_ms.sort_by(f64::total_cmp);
    let contexts: Vec<String> = prompts.iter().map(Prompt::context_text).collect();
    let humans: Vec<String> = prompts.iter().map(|p| p.human.clone()).collect();
    println!("\n## Readability of {} replies to held-out prompts", prompts.len());
    println!("| replies | real words | 8-word copies | loops | words/reply | distinct bigrams |");
    println!("|---|---|---|---|---|---|");
    for (name, replies) in [
        ("humans (held out)", &humans),
        ("before: network, one draw", &before),
        ("now: voice, sample and rank", &now),
    ] {
        let r = Readability::measure(replies, &vocab, &contexts, &copies);
        println!(
            "| {name} | {:.1} % | {:.1} % | {:.1} % | {:.1} | {} |",
            100.0 * r.real_word_share,
            100.0 * r.copy_share,
            100.0 * r.loop_share,
            r.mean_words,
            r.distinct_bigrams
        );
    }
    ms.sort_by(f64::total_cmp);
    let (peak, rss) = super::rss_mb();
    println!(
        "\nreply latency ({} candidates): p50 {:.1} ms, p99 {:.1} ms; the next reply in the channel (context kept): p50 {:.1} ms, p99 {:.1} ms; voice ≈ {:.0} MB; peak RSS {peak:.0} MB (now {rss:.0} MB)",
        crate::engine::decode::candidates_for(&sampling, model.fast.cfg.params()),
        super::percentile(&ms, 0.5),
        super::percentile(&ms, 0.99),
        super::percentile(&warm_ms, 0.5),
        super::percentile(&warm_ms, 0.99),
        voice.counts.approx_bytes() as f64 / 1e6,
    );
    let mut out: Box<dyn std::io::Write> = match &o.samples {
        Some(path) => Box::new(
            std::fs::File::create(path).with_context(|| format!("Failed to write {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    writeln!(out, "\n## Samples")?;
    for (i, p) in prompts.iter().enumerate().take(20) {
        if let Some((a, c)) = p.history.last() {
            writeln!(out, "\n> {a}: {c}")?;
        }
        writeln!(out, "- human:  {}\n- before: {}\n- now:    {}", p.human, before[i], now[i])?;
    }
    Ok(())
}

fn train_model(lines: &[ChatLine], o: &Options) -> anyhow::Result<Loaded> {
    let mut opts = TrainOptions::new(super::preset(&o.preset)?);
    opts.epochs = o.epochs;
    opts.max_seconds = Some(o.minutes * 60.0);
    let dir = tempfile::tempdir()?;
    let base = o.base.as_deref().map(crate::models::bases::open).transpose()?;
    let spec = RunSpec {
        lines,
        opts: &opts,
        base: base.as_ref().map(crate::models::bases::Base::run),
        parent: o.keep.as_deref().unwrap_or(dir.path()),
        name: "bench",
        preset_label: o.preset.clone(),
        corpus_span: (None, None),
    };
    let cancel = AtomicBool::new(false);
    let mut last = Instant::now();
    let (loaded, report, _) = run::train_and_save(&spec, &Device::Cpu, &cancel, |p| {
        if last.elapsed().as_secs_f64() > 30.0 {
            eprintln!("  {} step {}/{} loss {:.3}", p.phase, p.step, p.total_steps, p.loss);
            last = Instant::now();
        }
    })?;
    let what = match &o.base {
        Some(base) => format!("base {}", base.display()),
        None => o.preset.clone(),
    };
    eprintln!(
        "trained {what} ({} params) in {:.0} s, {} steps, {:.0} tokens/s; validation {:.3} bits/byte",
        loaded.meta.params, report.seconds, report.steps, report.tokens_per_second, report.val_bits_per_byte
    );
    Ok(loaded)
}

/// Held-out bits per byte of each model.
struct Bits {
    order: usize,
    net: f64,
    counts: (f64, f64),
    mix: (f64, f64),
}

fn bits(model: &Loaded, train_part: &[ChatLine], held_out: &[ChatLine]) -> anyhow::Result<Bits> {
    let tok = &model.tokenizer;
    let len = model.model()?.cfg.max_position_embeddings;
    // The mixer the model was saved with (fitted on its training part), or fitted now the same way.
    let mixer = match model.meta.mixer.as_deref() {
        Some(w) => Voice::new(tok, Some(w)).mixer,
        None => voice::fit_mixer(model.model()?, tok, train_part)?,
    };

    let stream = voice::stream(held_out, tok)?;
    let net = train::token_probs(model.model()?, &stream, len)?;
    let frozen = Voice::build(tok, None, voice::said(train_part))?.counts;
    let mut online = frozen.clone();
    let order = frozen.order();
    let mut sums = [0f64; 5];
    let mut bytes = 0u64;
    // The online counts learn each message once it is scored; the frozen ones never do.
    voice::score_then_learn(&stream, tok, &mut online, |i, online| {
        let (Some(pn), t) = (net[i], stream[i]) else { return };
        let ctx = voice::context(&stream, i, order);
        let pf = frozen.log2_prob(ctx, t).exp2();
        let po = online.log2_prob(ctx, t).exp2();
        let mf = mix_one(&mixer, &frozen, ctx, pf, pn);
        let mo = mix_one(&mixer, online, ctx, po, pn);
        for (s, p) in sums.iter_mut().zip([f64::from(pn.p), pf, po, mf, mo]) {
            *s -= p.max(1e-12).log2();
        }
        bytes += u64::from(tok.byte_len(t));
    });
    let b = bytes.max(1) as f64;
    Ok(Bits { order, net: sums[0] / b, counts: (sums[1] / b, sums[2] / b), mix: (sums[3] / b, sums[4] / b) })
}

fn mix_one(mixer: &Mixer, counts: &CountModel, ctx: &[u32], pc: f64, pn: Predicted) -> f64 {
    let w = f64::from(mixer.weight(counts.evidence(ctx), pn.top));
    w * pc + (1.0 - w) * f64::from(pn.p)
}

/// A held-out message as a mention, its channel's context, and what a member said next there.
struct Prompt {
    history: Vec<(String, String)>,
    human: String,
}

impl Prompt {
    fn context_text(&self) -> String {
        self.history.iter().map(|(a, c)| format!("{a} {c}\n")).collect()
    }
}

/// `n` prompts spread evenly over the held-out messages (from index `first`) that have a next
/// message in their channel.
fn prompts(lines: &[ChatLine], first: usize, n: usize) -> Vec<Prompt> {
    let mut by_channel: std::collections::HashMap<&str, Vec<usize>> = Default::default();
    for (i, l) in lines.iter().enumerate() {
        by_channel.entry(&l.channel).or_default().push(i);
    }
    let mut candidates = Vec::new();
    for idx in by_channel.values() {
        for (k, &i) in idx.iter().enumerate() {
            if i >= first && k + 1 < idx.len() {
                let from = k.saturating_sub(CONTEXT);
                let history = idx[from..=k]
                    .iter()
                    .map(|&j| (lines[j].author.clone(), lines[j].content.clone()))
                    .collect();
                candidates.push((i, Prompt { history, human: lines[idx[k + 1]].content.clone() }));
            }
        }
    }
    candidates.sort_by_key(|(i, _)| *i);
    let step = (candidates.len() as f64 / n.max(1) as f64).max(1.0);
    let mut picked = Vec::new();
    let mut taken = vec![false; candidates.len()];
    for k in 0..n.min(candidates.len()) {
        let at = ((k as f64 * step) as usize).min(candidates.len() - 1);
        if !std::mem::replace(&mut taken[at], true) {
            picked.push(at);
        }
    }
    let mut candidates: Vec<Option<Prompt>> = candidates.into_iter().map(|(_, p)| Some(p)).collect();
    picked.into_iter().filter_map(|at| candidates[at].take()).collect()
}

/// The reference compressors, by how they are called.
#[derive(Debug, Clone, Copy)]
enum Compressor {
    Xz,
    Ppmd,
}

impl Compressor {
    /// The compressed size of `input` (a file), or `None` if the tool is missing or failed.
    fn size(self, input: &std::path::Path, dir: &std::path::Path) -> Option<u64> {
        match self {
            Compressor::Xz => {
                let out =
                    Command::new("xz").args(["-9e", "-c"]).arg(input).stderr(Stdio::null()).output().ok()?;
                out.status.success().then_some(out.stdout.len() as u64)
            }
            Compressor::Ppmd => {
                // 7z's own container (PPMd is a 7z method) cannot go to standard output.
                let archive = dir.join(format!("{}.7z", rand::random::<u64>()));
                let ok = Command::new("7z")
                    .args(["a", "-t7z", "-m0=PPMd:o=8", "-bd"])
                    .arg(&archive)
                    .arg(input)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .ok()?
                    .success();
                ok.then(|| std::fs::metadata(&archive).ok().map(|m| m.len())).flatten()
            }
        }
    }
}

/// Conditional compressed size of the held-out text after the training text, in bits per byte:
/// `compress(train + test) − compress(train)`, on `author: content` lines.
fn conditional_bits(c: Compressor, train_part: &[ChatLine], held_out: &[ChatLine]) -> Option<f64> {
    let render =
        |ls: &[ChatLine]| -> String { ls.iter().map(|l| format!("{}: {}\n", l.author, l.content)).collect() };
    let (train_text, test_text) = (render(train_part), render(held_out));
    let dir = tempfile::tempdir().ok()?;
    let (alone, both) = (dir.path().join("train.txt"), dir.path().join("both.txt"));
    std::fs::write(&alone, &train_text).ok()?;
    std::fs::write(&both, train_text + &test_text).ok()?;
    let diff = c.size(&both, dir.path())?.saturating_sub(c.size(&alone, dir.path())?);
    Some(8.0 * diff as f64 / test_text.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(channel: &str, i: usize) -> ChatLine {
        ChatLine {
            channel: channel.into(),
            author: format!("u{i}"),
            content: format!("message {i}"),
            time_ms: i as i64,
        }
    }

    #[test]
    fn prompts_are_held_out_messages_with_their_channels_context_and_next_message() {
        // Channels a and b alternate; messages from index 10 on are held out.
        let lines: Vec<ChatLine> = (0..20).map(|i| line(if i % 2 == 0 { "a" } else { "b" }, i)).collect();
        let ps = prompts(&lines, 10, 100);
        // Held-out messages 10..=17 have a next message in their channel; 18 and 19 do not.
        assert_eq!(ps.len(), 8);
        let first = &ps[0];
        assert_eq!(first.history.last().unwrap().1, "message 10");
        assert_eq!(first.human, "message 12", "the next message of the same channel");
        assert_eq!(first.history.len(), 6, "the five earlier messages of channel a, then the prompt");
        assert!(first
            .history
            .iter()
            .all(|(a, _)| a.trim_start_matches('u').parse::<usize>().unwrap() % 2 == 0));
        assert_eq!(prompts(&lines, 10, 3).len(), 3, "spread over the held-out part");
    }
}
