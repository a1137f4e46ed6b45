//! `mynah base …`: installing, listing and removing pretrained bases (the on-disk work is
//! [`crate::models::bases`]'s).

use std::path::PathBuf;

use clap::Subcommand;

use crate::config::Config;
use crate::models::bases::{self, fetch};

#[derive(Debug, Subcommand)]
pub enum BaseCommand {
    /// Install a pretrained llama-family model: a GGUF file (dequantised) or a Hugging Face
    /// directory with config.json, model.safetensors and tokenizer.json.
    Import {
        path: PathBuf,
        /// The base's name (default: from the file name).
        #[arg(long)]
        name: Option<String>,
        /// The licence, when the source does not declare it.
        #[arg(long)]
        licence: Option<String>,
    },
    /// Download a base from the Hugging Face hub (resumable, into its cache: HF_HOME,
    /// HF_ENDPOINT and HF_TOKEN apply) and install it: a repository with config.json,
    /// model.safetensors and tokenizer.json, or one of its GGUF files.
    Fetch {
        /// ORG/NAME, e.g. HuggingFaceTB/SmolLM2-135M-Instruct.
        repo: String,
        /// A branch, tag or commit (default: main).
        #[arg(long)]
        revision: Option<String>,
        /// The GGUF file to fetch, when the repository has several.
        #[arg(long)]
        file: Option<String>,
        /// The base's name (default: the repository's, lower-cased).
        #[arg(long)]
        name: Option<String>,
        /// The licence, when the model card does not declare it.
        #[arg(long)]
        licence: Option<String>,
    },
    /// List the installed bases, the one new trainings start from first.
    List,
    /// Remove an installed base.
    Remove { name: String },
    /// Pretrain mynah's own chat base on a directory of JSONL chat, in resumable sittings,
    /// and install it.
    Pretrain(super::pretrain::PretrainArgs),
}

pub async fn run(config: &Config, cmd: BaseCommand) -> anyhow::Result<()> {
    let models = config.models_dir.clone();
    match cmd {
        BaseCommand::Import { path, name, licence } => {
            eprintln!("importing {} …", path.display());
            let base = tokio::task::spawn_blocking(move || {
                bases::import(&models, &path, name.as_deref(), licence.as_deref())
            })
            .await??;
            print_installed(&base);
            Ok(())
        }
        BaseCommand::Fetch { repo, revision, file, name, licence } => {
            let request = fetch::Request { repo, revision, file };
            // Refuse a bad or taken name before downloading hundreds of megabytes.
            if let Some(n) = &name {
                bases::check_new_name(&models, n)?;
            }
            let fetched = fetch::fetch(&fetch::Hub::from_env(), &request).await?;
            eprintln!("downloaded {} into {}; importing …", fetched.source, fetched.path.display());
            let name = name.unwrap_or(fetched.name.clone());
            let base = tokio::task::spawn_blocking(move || {
                bases::import_labelled(
                    &models,
                    &fetched.path,
                    &fetched.source,
                    Some(&name),
                    licence.as_deref(),
                )
            })
            .await??;
            print_installed(&base);
            Ok(())
        }
        BaseCommand::List => {
            let chosen = bases::resolve(&models, &config.engine.base).ok().flatten().map(|b| b.manifest.name);
            let all = bases::list(&models);
            if all.is_empty() {
                println!("no base installed: new trainings start from scratch (see `mynah base import`)");
            }
            for b in all {
                let m = b.manifest;
                let mark = if chosen.as_deref() == Some(m.name.as_str()) { "*" } else { " " };
                println!(
                    "{mark} {:<24} {:>7.1} M  {:<12} {:<4} {}  {}",
                    m.name,
                    m.parameters as f64 / 1e6,
                    m.licence,
                    format!("{:?}", m.format).to_lowercase(),
                    &m.sha256[..12],
                    m.source
                );
            }
            if chosen.is_none() && config.engine.base == bases::Choice::None {
                println!("MYNAH_BASE=none: new trainings start from scratch");
            }
            Ok(())
        }
        BaseCommand::Pretrain(args) => {
            tokio::task::spawn_blocking(move || super::pretrain::run(&models, args)).await?
        }
        BaseCommand::Remove { name } => {
            bases::remove(&models, &name)?;
            println!("removed base {name}");
            Ok(())
        }
    }
}

fn print_installed(base: &bases::Base) {
    let m = &base.manifest;
    println!(
        "installed base {} ({:.1} M parameters, licence {}, sha256 {}) in {}",
        m.name,
        m.parameters as f64 / 1e6,
        m.licence,
        &m.sha256[..12],
        base.path.display()
    );
}
