//! `mynah db`: moving a store from SQLite to PostgreSQL.

use anyhow::Context as _;
use clap::Subcommand;

use crate::store::{Backend, Store};

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Copy a SQLite store into a PostgreSQL database, every table. Rows already there are
    /// skipped, so an interrupted copy is resumed by running it again. Stop the bot first.
    MigrateSqliteToPostgres {
        /// The SQLite database to copy.
        #[arg(long, default_value = "sqlite://data/mynah.db")]
        from: String,
        /// The PostgreSQL database to fill (DATABASE_URL when that names one).
        #[arg(long)]
        to: Option<String>,
    },
}

pub async fn run(database_url: &str, cmd: DbCommand) -> anyhow::Result<()> {
    match cmd {
        DbCommand::MigrateSqliteToPostgres { from, to } => {
            let to = match to {
                Some(url) => url,
                None if Backend::of(database_url).ok() == Some(Backend::Postgres) => database_url.to_string(),
                None => {
                    anyhow::bail!("name the PostgreSQL database with --to (or DATABASE_URL=postgres://…)")
                }
            };
            anyhow::ensure!(Backend::of(&from)? == Backend::Sqlite, "--from must be a sqlite: URL");
            anyhow::ensure!(Backend::of(&to)? == Backend::Postgres, "--to must be a postgres:// URL");
            let path = from.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or(path);
            anyhow::ensure!(std::path::Path::new(path).is_file(), "no SQLite database at {path}");
            let source = Store::open(&from).await.with_context(|| format!("Failed to open {from}"))?;
            let target = Store::open(&to).await.context("Failed to open the PostgreSQL database")?;
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{msg:16} {bar:40} {pos}/{len} rows")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let report = source
                .copy_into(&target, |table, done, rows| {
                    bar.set_message(table.to_string());
                    bar.set_length(rows);
                    bar.set_position(done);
                })
                .await;
            bar.finish_and_clear();
            source.close().await;
            target.close().await;
            let report = report.context("the copy stopped (run the same command again to resume)")?;
            println!("{:<18} {:>10} {:>10} {:>10}", "table", "rows", "copied", "skipped");
            for t in &report {
                println!("{:<18} {:>10} {:>10} {:>10}", t.table, t.rows, t.copied, t.skipped);
            }
            println!("done: point DATABASE_URL at the PostgreSQL database and start mynah");
            Ok(())
        }
    }
}
