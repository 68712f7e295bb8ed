//! The two ways into the shell: a rustyline prompt, and `sslab run FILE` for scripts.

use crate::shell::{complete, Flow, Session};
use anyhow::{bail, Context, Result};
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Editor, Helper};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

struct ShellHelper;

impl Completer for ShellHelper {
    type Candidate = String;
    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(complete(&line[..pos]))
    }
}
impl Hinter for ShellHelper {
    type Hint = String;
}
impl Highlighter for ShellHelper {}
impl Validator for ShellHelper {}
impl Helper for ShellHelper {}

/// Ctrl-C while a command runs sets the flag (`train` stops after its current step); at the
/// prompt rustyline reads it as a key instead.
fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || s.store(true, Ordering::SeqCst)) {
        eprintln!("warning: Ctrl-C cannot be caught ({e}); it will end the process");
    }
    stop
}

fn history_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SSLAB_HISTORY") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".sslab_history"))
}

/// The interactive prompt.
pub fn repl(figures: PathBuf) -> Result<()> {
    let mut session = Session::new(figures, stop_flag());
    let mut rl: Editor<ShellHelper, DefaultHistory> = Editor::new()?;
    rl.set_helper(Some(ShellHelper));
    let hist = history_file();
    if let Some(h) = &hist {
        let _ = rl.load_history(h);
    }
    println!("sslab shell: `help` lists commands, Tab completes, Ctrl-D leaves.");
    loop {
        match rl.readline("sslab> ") {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = rl.add_history_entry(line.as_str());
                    if let Some(h) = &hist {
                        let _ = rl.save_history(h);
                    }
                }
                match session.execute(&line) {
                    Ok(Flow::Quit) => break,
                    Ok(Flow::Continue) => {}
                    Err(e) => println!("error: {}", one_line(&e)),
                }
            }
            Err(ReadlineError::Interrupted) => {
                println!("(Ctrl-C: type quit or press Ctrl-D to leave)")
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => bail!("reading the terminal failed: {e}"),
        }
    }
    Ok(())
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

/// Runs the commands of `file` (`-`: standard input), stopping at the first error.
pub fn run_file(file: &str, figures: PathBuf) -> Result<()> {
    let mut session = Session::new(figures, stop_flag());
    let reader: Box<dyn BufRead> = if file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("cannot open {file}"))?,
        ))
    };
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{file}:{}: unreadable line", i + 1))?;
        if !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            println!("> {}", line.trim());
        }
        match session.execute(&line) {
            Ok(Flow::Quit) => break,
            Ok(Flow::Continue) => {}
            Err(e) => bail!("{file}:{}: {}", i + 1, one_line(&e)),
        }
    }
    Ok(())
}
