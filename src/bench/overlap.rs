//! `mynah bench overlap`: how much of a corpus another corpus (a base's pretraining data)
//! already holds: the share of its messages with [`COPY_RUN`] consecutive words of one message
//! of the other, the same test as the copy guard's. A base that saw the evaluation's messages
//! would flatter its figures.

use std::path::Path;

use crate::engine::words::{copies_run, CopyIndex, COPY_RUN};

pub fn run(corpus: &Path, against: &Path) -> anyhow::Result<()> {
    let mut index = CopyIndex::new();
    let mut id = 0u64;
    for f in super::jsonl_files(against)? {
        for line in super::read_corpus(&f)? {
            id += 1;
            index.add(id, &line.content);
        }
    }
    let lines = super::read_corpus(corpus)?;
    let long: Vec<_> =
        lines.iter().filter(|l| crate::engine::words::words(&l.content).len() >= COPY_RUN).collect();
    let hits = long.iter().filter(|l| copies_run(&l.content, &index)).count();
    let share = |n: usize, of: usize| 100.0 * n as f64 / of.max(1) as f64;
    println!(
        "{} of {} messages ({:.2} %; {:.2} % of the {} with at least {COPY_RUN} words) hold {COPY_RUN} consecutive \
         words of one of the {} messages of {}",
        hits,
        lines.len(),
        share(hits, lines.len()),
        share(hits, long.len()),
        long.len(),
        index.messages(),
        against.display()
    );
    Ok(())
}
