//! `sslab`: headless training and benchmarks over the library's `Run` API. This crate only
//! parses arguments and prints; the work happens in `sslab` (kernel-lib).

mod bench;
mod train;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sslab",
    version,
    about = "Self-supervised learning lab: train and inspect SSL methods"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a method headless, print kNN accuracy at init and at the end, write DIR/summary.json.
    Train(train::TrainArgs),
    /// Time fixed training-step workloads (images/s, peak memory).
    Bench(bench::BenchArgs),
    /// List methods and presets.
    Presets,
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Train(a) => train::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Presets => {
            println!("methods: {}", sslab::train::RunConfig::METHODS.join(", "));
            println!("presets: {}", sslab::train::PRESETS.join(", "));
            Ok(())
        }
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
