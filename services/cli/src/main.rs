//! `loupe`: the command line of the loupe feature database.

mod commands;
mod output;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "loupe", version, about = "Feature database and query service for mechanistic interpretability")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text with the model (chat mode for instruct models).
    Generate(commands::generate::Args),
    /// Show how the tokenizer splits a text.
    Tokenize(commands::tokenize::Args),
    /// Run the model and print the activations at hook points (shapes and norms).
    Activations(commands::activations::Args),
    /// Measure performance against this machine's peak.
    #[command(subcommand)]
    Bench(commands::bench::Bench),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LOUPE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => commands::generate::run(args),
        Command::Tokenize(args) => commands::tokenize::run(args),
        Command::Activations(args) => commands::activations::run(args),
        Command::Bench(bench) => commands::bench::run(bench),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
