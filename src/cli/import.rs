//! `mynah corpus import`: a file, standard input, or a directory searched recursively for
//! `.json` and `.jsonl` files, each told apart by content (JSONL or a DiscordChatExporter
//! export) and imported on its own, with a progress bar and one report of what was stored and of
//! what was left out and why. A file that cannot be imported is named and costs only itself.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::Config;
use crate::corpus::input::{Format, Skipped};
use crate::service::{Core, ImportSummary};

/// What the whole import did, over every file.
#[derive(Debug, Default)]
struct Totals {
    exports: usize,
    jsonl: usize,
    imported: u64,
    malformed: u64,
    already_present: u64,
    opted_out: u64,
    left_out: Skipped,
    /// The files that could not be imported, by name.
    failed: Vec<String>,
}

impl Totals {
    fn add(&mut self, s: &ImportSummary) {
        match s.format {
            Format::Jsonl => self.jsonl += 1,
            Format::DiscordChatExporter => self.exports += 1,
        }
        self.imported += s.imported;
        self.malformed += s.skipped;
        self.already_present += s.already_present;
        self.opted_out += s.opted_out;
        self.left_out.add(&s.left_out);
    }
}

pub async fn run(config: &Config, path: &Path, guild: Option<&str>, strict: bool) -> anyhow::Result<()> {
    if path.as_os_str() == "-" {
        let text = std::io::read_to_string(std::io::stdin()).context("Failed to read standard input")?;
        let s =
            super::with_core(config.clone(), async |core| Ok(core.import_text(&text, guild, strict).await?))
                .await?;
        print_malformed(None, &s);
        let mut totals = Totals::default();
        totals.add(&s);
        report(&totals, false);
        return Ok(());
    }
    let in_dir = path.is_dir();
    let files = input_files(path)?;
    if strict && files.len() > 1 {
        check_all(&files, path, guild)?;
    }
    let totals = super::with_core(config.clone(), async |core| {
        let bar = progress_bar(in_dir, files.len());
        let mut totals = Totals::default();
        for file in &files {
            let name = shown(file, path);
            bar.set_message(name.clone());
            match import_file(core, file, guild, strict).await {
                Ok(s) => {
                    bar.suspend(|| print_malformed(in_dir.then_some(name.as_str()), &s));
                    totals.add(&s);
                }
                Err(e) if !in_dir || strict => return Err(e),
                Err(e) => {
                    bar.suspend(|| eprintln!("{name}: {e:#}"));
                    totals.failed.push(name);
                }
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(totals)
    })
    .await?;
    report(&totals, in_dir);
    if !totals.failed.is_empty() {
        anyhow::bail!(
            "{} of {} files could not be imported (the others were): {}",
            totals.failed.len(),
            files.len(),
            totals.failed.join(", ")
        );
    }
    Ok(())
}

async fn import_file(
    core: &Core,
    file: &Path,
    guild: Option<&str>,
    strict: bool,
) -> anyhow::Result<ImportSummary> {
    let text = std::fs::read_to_string(file).with_context(|| format!("Failed to read {}", file.display()))?;
    let summary = core
        .import_text(&text, guild, strict)
        .await
        .with_context(|| format!("Failed to import {}", file.display()))?;
    Ok(summary)
}

/// The inputs `path` names: the file itself, or the `.json` and `.jsonl` files under a
/// directory (recursively, hidden entries left out), in path order.
fn input_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).with_context(|| format!("Failed to read {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("Failed to read {}", dir.display()))?;
            let p = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if p.is_dir() {
                dirs.push(p);
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| x.eq_ignore_ascii_case("json") || x.eq_ignore_ascii_case("jsonl"))
            {
                files.push(p);
            }
        }
    }
    if files.is_empty() {
        anyhow::bail!("{} holds no .json or .jsonl files", path.display());
    }
    files.sort();
    Ok(files)
}

/// With `--strict` and several files: reads every file first, and imports nothing unless all
/// of them are whole.
fn check_all(files: &[PathBuf], root: &Path, guild: Option<&str>) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for file in files {
        let name = shown(file, root);
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                continue;
            }
        };
        match crate::corpus::input::parse(&text, guild) {
            Err(e) => problems.push(format!("{name}: {e}")),
            Ok(p) => {
                problems.extend(p.malformed.iter().take(5).map(|m| format!("{name}: {}: {}", m.at, m.error)))
            }
        }
    }
    if !problems.is_empty() {
        anyhow::bail!("strict: nothing was imported\n{}", problems.join("\n"));
    }
    Ok(())
}

/// A file's name as reports show it: relative to the directory imported.
fn shown(file: &Path, root: &Path) -> String {
    file.strip_prefix(root).ok().filter(|p| !p.as_os_str().is_empty()).unwrap_or(file).display().to_string()
}

fn progress_bar(in_dir: bool, files: usize) -> indicatif::ProgressBar {
    if !in_dir {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(files as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} files  {wide_msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// The malformed lines or messages of one input, on standard error.
fn print_malformed(file: Option<&str>, s: &ImportSummary) {
    let prefix = file.map(|f| format!("{f}: ")).unwrap_or_default();
    for m in &s.malformed {
        eprintln!("{prefix}{}: {}", m.at, m.error);
    }
    let more = s.skipped.saturating_sub(s.malformed.len() as u64);
    if more > 0 {
        eprintln!("{prefix}... and {more} more malformed");
    }
}

fn report(t: &Totals, in_dir: bool) {
    let opted_out = match t.opted_out {
        0 => String::new(),
        n => format!(", {n} left out (their authors opted out)"),
    };
    println!(
        "imported {}, skipped {} malformed, {} already present{opted_out}",
        t.imported, t.malformed, t.already_present
    );
    let l = &t.left_out;
    if l.total() > 0 {
        println!(
            "skipped {} from bots, {} system messages, {} empty or attachment-only",
            l.bots, l.system, l.empty
        );
    }
    if in_dir {
        let failed = match t.failed.len() {
            0 => String::new(),
            n => format!(", {n} failed"),
        };
        println!(
            "read {} files: {} DiscordChatExporter JSON, {} JSONL{failed}",
            t.exports + t.jsonl + t.failed.len(),
            t.exports,
            t.jsonl
        );
    }
}
