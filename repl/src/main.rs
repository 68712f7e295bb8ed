//! `sslab`: headless training and benchmarks over the library's `Run` API. This crate only
//! parses arguments and prints; the work happens in `sslab` (kernel-lib).

mod bench;
mod data;
mod interactive;
mod shell;
mod sweep;
mod trace;
mod train;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sslab",
    version,
    about = "Self-supervised learning lab: train and inspect SSL methods"
)]
struct Cli {
    /// Without a command: the interactive shell.
    #[command(subcommand)]
    command: Option<Command>,
    /// Where `show` writes its PNGs (shell and `run`).
    #[arg(long, global = true, default_value = "sslab-figures")]
    figures: std::path::PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Train a method headless, print kNN accuracy at init and at the end, write DIR/summary.json.
    Train(train::TrainArgs),
    /// Run a grid of trainings over config keys and seeds; write results.csv, results.md and
    /// one figure per metric.
    Sweep(sweep::SweepArgs),
    /// Time fixed training-step workloads (images/s, peak memory).
    Bench(bench::BenchArgs),
    /// Take one training step and save every tensor it read and wrote (views, weights before
    /// and after, gradients, queues, loss) for a check against another framework.
    TraceStep(trace::TraceArgs),
    /// Datasets: `sslab data export --out DIR` writes the built-in shapes (or any --data) as
    /// an image folder for other frameworks.
    Data {
        #[command(subcommand)]
        command: data::DataCommand,
    },
    /// List methods and presets.
    Presets,
    /// The interactive shell (also what `sslab` alone starts).
    Shell,
    /// Run shell commands from FILE (one per line, # comments; `-` reads stdin), stopping at
    /// the first error with its line number.
    Run { file: String },
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.command {
        None | Some(Command::Shell) => interactive::repl(cli.figures),
        Some(Command::Run { file }) => interactive::run_file(&file, cli.figures),
        Some(Command::Train(a)) => train::run(a),
        Some(Command::Sweep(a)) => sweep::run(a),
        Some(Command::Bench(a)) => bench::run(a),
        Some(Command::TraceStep(a)) => trace::run(a),
        Some(Command::Data { command }) => data::run(command),
        Some(Command::Presets) => {
            println!("methods: {}", sslab::methods::names().join(", "));
            println!("presets: {}", sslab::train::PRESETS.join(", "));
            Ok(())
        }
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
