//! `loupe`: the command line of the loupe feature database.

mod commands;
mod output;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

// The forward pass allocates tens of MB per op; glibc maps and unmaps such blocks on every
// call (page faults and zeroing were ~15% of the time), mimalloc keeps and reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (not exported by libmimalloc-sys).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keep freed pages instead of returning them to the OS after 10 ms: between two forward ops
/// the same large buffers are needed again, and re-faulting them in costs ~8% of a forward.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; mimalloc allows this at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// Back large allocations with 2 MiB pages where the kernel allows them (transparent huge
/// pages on request, `madvise`, the usual default): each forward pass streams the model's
/// weights (~230 MB to the middle layer, f32) from memory, and with 4 KiB pages that is
/// ~56,000 TLB misses. A 1 x 128-token pass ran ~15% faster (1,020-1,108 -> 1,161-1,285
/// tokens/s in alternating runs); 8 and 32 x 128 the same. Before the first large
/// allocation; `MIMALLOC_ALLOW_LARGE_OS_PAGES=0` turns it off.
fn large_pages_for_large_allocations() {
    if std::env::var_os("MIMALLOC_ALLOW_LARGE_OS_PAGES").is_none() && std::env::var_os("MIMALLOC_LARGE_OS_PAGES").is_none() {
        // SAFETY: sets a plain integer option before the allocations it concerns.
        unsafe { libmimalloc_sys::mi_option_set(libmimalloc_sys::mi_option_large_os_pages, 1) };
    }
}

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
    /// Inspect and evaluate dictionaries (SAEs, transcoders).
    #[command(subcommand)]
    Dict(commands::dict::Dict),
    /// Evaluations: `loupe eval steer` (does steering with the store's features work?).
    #[command(subcommand)]
    Eval(commands::eval_steer::Eval),
    /// Detectors of labelled text (monitor probes): every method side by side on one split.
    #[command(subcommand)]
    Probe(commands::probe::Probe),
    /// Run monitors on a text: on a server (--server: its live monitors, alerts recorded),
    /// or here (the committed defaults in monitors/, or --monitor FILE).
    Score(commands::score::Args),
    /// Monitors on a server: create, update, list, show, delete, eval.
    #[command(subcommand)]
    Monitor(commands::monitor::MonitorCommand),
    /// Alerts raised by a server's monitors (--follow for new ones as they come).
    Alerts(commands::monitor::AlertsArgs),
    /// Train a TopK/BatchTopK SAE on a hook of the model (resumable).
    Train(commands::train::Args),
    /// Index a corpus: max-activating examples and statistics of every feature, into a store.
    Index(commands::index::Args),
    /// A dictionary's features or examples as JSON lines (for other tools and stores).
    Export(commands::export::Args),
    /// Serve a store over gRPC (feature search, dashboards, features of a text).
    Serve(commands::serve::Args),
    /// List the dictionaries a server holds.
    Dictionaries(commands::client::ServerArgs),
    /// Search features by what they respond to (words in their examples, logit tokens, labels).
    Search(commands::client::SearchArgs),
    /// A feature's dashboard: examples coloured by activation, logit effects, histogram.
    Show(commands::client::ShowArgs),
    /// The features that fire on each token of a text (runs the model on the server).
    Text(commands::client::TextArgs),
    /// Label a feature (searchable at once).
    Label(commands::client::LabelArgs),
    /// Generate with features added, clamped or ablated, beside the unsteered output (runs
    /// on the server), e.g. `loupe steer "Tell me a story" --feature D/123 --add 8x`.
    Steer(commands::steer::Args),
    /// Named steering vectors in the store (DiffMean contrast vectors).
    #[command(subcommand)]
    Vector(commands::steer::Vector),
    /// Bearer tokens for a server: create (scopes, quotas), list, revoke.
    #[command(subcommand)]
    Token(commands::access::Token),
    /// TLS certificates: `loupe tls create DIR` makes a CA, a server and a client certificate.
    #[command(subcommand)]
    Tls(commands::access::Tls),
    /// Measure performance against this machine's peak.
    #[command(subcommand)]
    Bench(commands::bench::Bench),
}

/// A closed stdout (`loupe show D/F | head`) ends the program quietly, as it does other Unix
/// tools, instead of a panic in `println!` (Rust ignores SIGPIPE by default).
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// candle runs its element-wise ops on a thread pool of its own (a spinning "barrier pool" as
/// large as rayon's), beside rayon's pool that the matmuls and loupe's fused kernels use: two
/// pools each sized to every core, whose workers spin for ~25,000 iterations after each op
/// and take the cores from the other pool's next op. With one candle thread (its element-wise
/// ops on the calling thread, a few microseconds each) a 1 x 128-token forward pass ran 33%
/// faster on 2 cores and 8 x 128 the same (`loupe bench forward`). `CANDLE_NUM_THREADS` set by
/// the user still wins.
fn one_compute_thread_pool() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Before any thread starts, so nothing reads the environment concurrently.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Errors are messages for people: libraries that capture a backtrace into their errors
/// (candle does when RUST_BACKTRACE is set) would print its frames after the message.
/// Backtraces stay available with LOUPE_LOG=debug (or trace); panics follow RUST_BACKTRACE.
fn errors_without_backtraces() {
    let debugging = std::env::var("LOUPE_LOG").is_ok_and(|v| v.contains("debug") || v.contains("trace"));
    if !debugging {
        // Before any thread starts, so nothing reads the environment concurrently.
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

/// An error and its causes as one message: each cause that the message so far does not
/// already say (many errors include their source's text in their own) is added after ": ",
/// without repeating the path the message ends with ("loading X" + "X: not valid").
fn one_message(err: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in err.chain() {
        let full = cause.to_string();
        if message.contains(full.trim()) {
            continue;
        }
        let last_word = message.rsplit(' ').next().unwrap_or_default();
        let text = match full.strip_prefix(last_word).and_then(|rest| rest.strip_prefix(": ")) {
            Some(rest) if !last_word.is_empty() => rest,
            _ => full.as_str(),
        };
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(text.trim());
    }
    message
}

fn main() -> std::process::ExitCode {
    errors_without_backtraces();
    one_compute_thread_pool();
    keep_freed_memory();
    large_pages_for_large_allocations();
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LOUPE_LOG").unwrap_or_else(|_| "warn,lance=error".into())).with_writer(std::io::stderr).init();
    // The matches too: `steer` pairs each operation with the target before it by position.
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Not for servers (bench starts servers too): their sockets are written with writev,
    // which raises SIGPIPE when a client has gone, and the default action would kill them.
    if !matches!(cli.command, Command::Serve(_) | Command::Bench(_)) {
        quiet_on_closed_pipe();
    }
    let result = match cli.command {
        Command::Generate(args) => commands::generate::run(args),
        Command::Tokenize(args) => commands::tokenize::run(args),
        Command::Activations(args) => commands::activations::run(args),
        Command::Dict(command) => commands::dict::run(command),
        Command::Eval(command) => commands::eval_steer::run(command),
        Command::Probe(command) => commands::probe::run(command),
        Command::Score(args) => commands::score::run(args),
        Command::Monitor(command) => commands::monitor::run(command),
        Command::Alerts(args) => commands::monitor::alerts(args),
        Command::Train(args) => commands::train::run(args),
        Command::Index(args) => commands::index::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Dictionaries(args) => commands::client::dictionaries(args),
        Command::Search(args) => commands::client::search(args),
        Command::Show(args) => commands::client::show(args),
        Command::Text(args) => commands::client::text(args),
        Command::Label(args) => commands::client::label(args),
        Command::Steer(args) => commands::steer::steer(args, matches.subcommand_matches("steer").expect("the steer subcommand's matches")),
        Command::Vector(command) => commands::steer::vector(command),
        Command::Token(command) => commands::access::token(command),
        Command::Tls(command) => commands::access::tls(command),
        Command::Bench(bench) => commands::bench::run(bench),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", one_message(&err));
            std::process::ExitCode::FAILURE
        }
    }
}
