//! `loupe export`: a dictionary's features or examples as JSON lines, for analysis in other
//! tools (pandas, DuckDB) and for loading into other stores (`reference/bench_postgres.py`).

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use loupe_store::reader::Batch;
use loupe_store::StoreReader;

#[derive(clap::ValueEnum, Clone, Copy, PartialEq)]
pub enum Table {
    /// One line per feature: statistics, histogram, logit effects, neighbours, top tokens
    /// and contexts, decoder direction, the label the generation was built with.
    Features,
    /// One line per stored example window: kind (top or interval sample), tokens and the
    /// feature's activation on each.
    Examples,
}

#[derive(clap::Args)]
pub struct Args {
    /// The store to read (its current generation).
    #[arg(long, env = "LOUPE_STORE")]
    pub store: PathBuf,
    /// The dictionary (default: the store's only one).
    #[arg(long)]
    pub dictionary: Option<String>,
    #[arg(long, value_enum)]
    pub table: Table,
    /// Leave out the features' decoder directions (d floats each: most of a wide
    /// dictionary's features table).
    #[arg(long)]
    pub no_decoders: bool,
    /// Output file (default: stdout).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let reader = StoreReader::open(&super::store_location(&args.store)?).await?;
        let dictionaries = reader.dictionaries().await?;
        let id = match (&args.dictionary, dictionaries.as_slice()) {
            (Some(id), _) => {
                anyhow::ensure!(
                    dictionaries.iter().any(|d| &d.dictionary_id == id),
                    "--dictionary {id:?} is not in {}; it holds {:?}",
                    args.store.display(),
                    dictionaries.iter().map(|d| &d.dictionary_id).collect::<Vec<_>>()
                );
                id.clone()
            }
            (None, [only]) => only.dictionary_id.clone(),
            (None, all) => anyhow::bail!("{} holds {} dictionaries: give --dictionary, one of {:?}", args.store.display(), all.len(), all.iter().map(|d| &d.dictionary_id).collect::<Vec<_>>()),
        };
        let examples = args.table == Table::Examples;
        let rows = reader.count_rows(&id, examples).await?;
        let mut out: Box<dyn Write> = match &args.out {
            Some(path) => Box::new(BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?)),
            None => Box::new(BufWriter::new(std::io::stdout().lock())),
        };
        let bar = ProgressBar::new(rows as u64);
        bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} rows {elapsed} (eta {eta})").expect("valid template"));
        reader
            .for_each_batch(&id, examples, |batch| {
                let written = match batch {
                    Batch::Features(mut rows) => {
                        if args.no_decoders {
                            rows.iter_mut().for_each(|f| f.decoder.clear());
                        }
                        write_lines(&mut out, &rows)?
                    }
                    Batch::Examples(rows) => write_lines(&mut out, &rows)?,
                };
                bar.inc(written as u64);
                Ok::<_, anyhow::Error>(())
            })
            .await?;
        out.flush()?;
        bar.finish_and_clear();
        if let Some(path) = &args.out {
            eprintln!("wrote {rows} rows of {id} to {}", path.display());
        }
        Ok(())
    })
}

fn write_lines<T: serde::Serialize>(out: &mut dyn Write, rows: &[T]) -> anyhow::Result<usize> {
    for row in rows {
        serde_json::to_writer(&mut *out, row)?;
        out.write_all(b"\n")?;
    }
    Ok(rows.len())
}
