//! The `sslab` shell: a small grammar over the library's `Run` (no training logic here).
//!
//! One table ([`COMMANDS`]) parses, dispatches, completes and documents every command, so
//! `help` and tab completion cannot drift from what is accepted.

use anyhow::{anyhow, bail, Context, Result};
use sslab::train::{FeatureSource, Run, RunConfig, PRESETS};
use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the loop does after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

type Handler = fn(&mut Session, &[&str]) -> Result<Flow>;

/// One command: name, argument synopsis, one-line help, handler.
pub struct Command {
    pub name: &'static str,
    pub usage: &'static str,
    pub help: &'static str,
    run: Handler,
}

/// What `show` can draw.
pub const SHOW: &[&str] = &[
    "loss",
    "lr",
    "spikes",
    "corr",
    "sim",
    "collapse",
    "views",
    "correspondence",
    "attention",
    "embedding",
];

/// Every command, in the order `help` lists them.
pub const COMMANDS: &[Command] = &[
    Command {
        name: "new",
        usage: "new <method> [preset] [key=value ...]",
        help: "build a run (`help new` lists the methods and presets; tab completes them)",
        run: cmd_new,
    },
    Command {
        name: "config",
        usage: "config",
        help: "print the run's configuration (TOML)",
        run: cmd_config,
    },
    Command {
        name: "set",
        usage: "set key=value [...]",
        help: "change lr, lambda, tau, batch or a reporting key mid-run",
        run: cmd_set,
    },
    Command {
        name: "step",
        usage: "step [n]",
        help: "take n optimisation steps (default 1), one report line each",
        run: cmd_step,
    },
    Command {
        name: "train",
        usage: "train <n>",
        help: "train n steps with progress; Ctrl-C stops after the current step",
        run: cmd_train,
    },
    Command {
        name: "knn",
        usage: "knn",
        help: "weighted kNN accuracy on the test split",
        run: cmd_knn,
    },
    Command {
        name: "probe",
        usage: "probe dense|linear",
        help: "dense probe (mIoU against the masks) or linear probe (top-1 on frozen features)",
        run: cmd_probe,
    },
    Command {
        name: "show",
        usage:
            "show loss|lr|spikes|corr|sim X,Y|collapse|views|correspondence|attention N|embedding",
        help: "draw a diagnostic to a PNG and summarise it",
        run: cmd_show,
    },
    Command {
        name: "history",
        usage: "history [n]",
        help: "the last n step reports (default 10)",
        run: cmd_history,
    },
    Command {
        name: "save",
        usage: "save <dir>",
        help: "checkpoint the run (weights, optimizer, queues, history)",
        run: cmd_save,
    },
    Command {
        name: "load",
        usage: "load <dir>",
        help: "load a checkpoint (replaces the current run)",
        run: cmd_load,
    },
    Command {
        name: "device",
        usage: "device",
        help: "where tensors live",
        run: cmd_device,
    },
    Command {
        name: "help",
        usage: "help [command]",
        help: "list commands, or explain one",
        run: cmd_help,
    },
    Command {
        name: "quit",
        usage: "quit",
        help: "leave (Ctrl-D too)",
        run: cmd_quit,
    },
];

/// The shell's state: at most one run, where figures go, and the Ctrl-C flag.
pub struct Session {
    pub run: Option<Run>,
    pub figures: PathBuf,
    pub stop: Arc<AtomicBool>,
    /// Draw image previews and `\r` progress (a terminal), or plain lines.
    pub terminal: bool,
}

impl Session {
    /// A session writing figures into `figures`.
    pub fn new(figures: PathBuf, stop: Arc<AtomicBool>) -> Self {
        Session {
            run: None,
            figures,
            stop,
            terminal: std::io::stdout().is_terminal(),
        }
    }

    /// Parses and runs one line. Empty lines and `#` comments do nothing.
    pub fn execute(&mut self, line: &str) -> Result<Flow> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(Flow::Continue);
        }
        if line.len() > 4096 {
            bail!("line too long ({} bytes)", line.len());
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let name = words[0];
        let cmd = COMMANDS
            .iter()
            .find(|c| c.name == name || (name == "exit" && c.name == "quit"))
            .ok_or_else(|| anyhow!("unknown command '{}'; type help", clip(name)))?;
        (cmd.run)(self, &words[1..])
    }

    fn run(&mut self) -> Result<&mut Run> {
        self.run
            .as_mut()
            .ok_or_else(|| anyhow!("no run yet: start one with `new <method> [preset]`"))
    }
}

/// At most 40 characters of user text in a message.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if s.chars().count() > 40 {
        out.push('…');
    }
    out
}

fn count(arg: Option<&&str>, default: usize, max: usize) -> Result<usize> {
    let Some(a) = arg else { return Ok(default) };
    let n: usize = a
        .parse()
        .map_err(|_| anyhow!("'{}' is not a count (a whole number ≥ 1)", clip(a)))?;
    if n == 0 || n > max {
        bail!("{n} is outside 1..={max}");
    }
    Ok(n)
}

fn no_more(args: &[&str], allowed: usize) -> Result<()> {
    if args.len() > allowed {
        bail!("unexpected argument '{}'", clip(args[allowed]));
    }
    Ok(())
}

fn key_value(kv: &str) -> Result<(&str, &str)> {
    let (k, v) = kv
        .split_once('=')
        .ok_or_else(|| anyhow!("'{}' is not key=value", clip(kv)))?;
    if k.is_empty() || v.is_empty() {
        bail!("'{}' is not key=value", clip(kv));
    }
    Ok((k, v))
}

fn cmd_new(s: &mut Session, args: &[&str]) -> Result<Flow> {
    let method = args
        .first()
        .ok_or_else(|| anyhow!("usage: new <method> [preset] [key=value ...]"))?;
    let (preset, sets) = match args.get(1) {
        Some(p) if !p.contains('=') => (Some(*p), &args[2..]),
        _ => (None, &args[1..]),
    };
    let mut cfg = RunConfig::method_preset(method, preset)?;
    for kv in sets {
        let (k, v) = key_value(kv)?;
        cfg.set(k, v)?;
    }
    let run = Run::new(cfg)?;
    println!(
        "new {} run ({}) on {}: {} training images, {} steps of batch {}",
        run.config().method,
        run.config().preset,
        run.device_name(),
        run.train_data().len(),
        run.total_steps(),
        run.config().train.batch_size
    );
    s.run = Some(run);
    Ok(Flow::Continue)
}

fn cmd_config(s: &mut Session, args: &[&str]) -> Result<Flow> {
    no_more(args, 0)?;
    print!("{}", s.run()?.config().to_toml()?);
    Ok(Flow::Continue)
}

fn cmd_set(s: &mut Session, args: &[&str]) -> Result<Flow> {
    if args.is_empty() {
        bail!(
            "usage: set key=value [...] (lr, lambda, tau, batch, train.log_every, eval.knn_k, ...)"
        );
    }
    let run = s.run()?;
    for kv in args {
        let (k, v) = key_value(kv)?;
        run.set(k, v)?;
        println!("{k} = {v}");
    }
    Ok(Flow::Continue)
}

fn cmd_step(s: &mut Session, args: &[&str]) -> Result<Flow> {
    no_more(args, 1)?;
    let n = count(args.first(), 1, 1_000_000)?;
    let run = s.run()?;
    for _ in 0..n {
        println!("{}", run.step()?);
    }
    Ok(Flow::Continue)
}

fn cmd_train(s: &mut Session, args: &[&str]) -> Result<Flow> {
    no_more(args, 1)?;
    let n = count(
        Some(args.first().ok_or_else(|| anyhow!("usage: train <n>"))?),
        1,
        1_000_000,
    )?;
    s.stop.store(false, Ordering::SeqCst);
    let (stop, terminal) = (s.stop.clone(), s.terminal);
    let run = s.run()?;
    let every = run.config().train.log_every;
    let mut out = std::io::stdout();
    let mut taken = 0;
    let summary = run.train_with(n, |r| {
        let i = taken;
        taken += 1;
        if terminal {
            let width = 30;
            let filled = (i + 1) * width / n;
            let _ = write!(
                out,
                "\r[{}{}] {}/{n}  step {}  loss {:.4}  {:.2}s/step ",
                "#".repeat(filled),
                ".".repeat(width - filled),
                i + 1,
                r.step,
                r.loss,
                r.seconds
            );
            let _ = out.flush();
        } else if (i + 1) % every == 0 || i + 1 == n {
            let _ = writeln!(out, "{r}");
        }
        if stop.swap(false, Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    if terminal {
        let _ = writeln!(out);
    }
    let interrupted = summary.steps < n;
    println!(
        "{} {} steps in {:.1}s (step {} of {}){}",
        if interrupted {
            "stopped after"
        } else {
            "trained"
        },
        summary.steps,
        summary.seconds,
        run.steps_done(),
        run.total_steps(),
        if interrupted {
            "; the run is intact"
        } else {
            ""
        }
    );
    Ok(Flow::Continue)
}

fn cmd_knn(s: &mut Session, args: &[&str]) -> Result<Flow> {
    no_more(args, 0)?;
    println!("kNN top-1 {}", s.run()?.knn()?);
    Ok(Flow::Continue)
}

fn cmd_probe(s: &mut Session, args: &[&str]) -> Result<Flow> {
    no_more(args, 1)?;
    match args.first() {
        Some(&"dense") => {
            println!("dense probe: {}", s.run()?.dense_probe()?);
            Ok(Flow::Continue)
        }
        Some(&"linear") => {
            println!("linear probe: {}", s.run()?.linear_probe()?);
            Ok(Flow::Continue)
        }
        _ => bail!("usage: probe dense|linear"),
    }
}

fn parse_point(arg: Option<&&str>) -> Result<(usize, usize)> {
    let a = arg.ok_or_else(|| anyhow!("usage: show sim X,Y (pixels of view A)"))?;
    let (x, y) = a
        .split_once(',')
        .ok_or_else(|| anyhow!("'{}' is not X,Y", clip(a)))?;
    let p = |v: &str| -> Result<usize> {
        v.trim()
            .parse()
            .map_err(|_| anyhow!("'{}' is not a pixel coordinate", clip(v)))
    };
    Ok((p(x)?, p(y)?))
}

fn cmd_show(s: &mut Session, args: &[&str]) -> Result<Flow> {
    let what = *args
        .first()
        .ok_or_else(|| anyhow!("usage: show {}", SHOW.join("|")))?;
    if !SHOW.contains(&what) {
        bail!("cannot show '{}'; one of {}", clip(what), SHOW.join(", "));
    }
    no_more(
        args,
        if matches!(what, "sim" | "attention") {
            2
        } else {
            1
        },
    )?;
    let figures = s.figures.clone();
    let terminal = s.terminal;
    let run = s.run()?;
    let step = run.steps_done();
    let (figure, summary) = match what {
        "loss" | "lr" => {
            let last = run
                .history()
                .last()
                .ok_or_else(|| anyhow!("no steps yet"))?;
            let summary = last.to_string();
            (run.curves()?, summary)
        }
        "spikes" => {
            let g = run.grad_spikes()?;
            (g.figure, g.data.to_string())
        }
        "corr" => {
            let c = run.correlation()?;
            (c.figure, c.data.to_string())
        }
        "sim" => {
            let point = parse_point(args.get(1))?;
            let source = if run.method().has_dense_head() {
                FeatureSource::DenseHead
            } else {
                FeatureSource::Backbone
            };
            let m = run.similarity_map(0, point, source)?;
            (m.figure, m.data.to_string())
        }
        "attention" => {
            let a = args
                .get(1)
                .ok_or_else(|| anyhow!("usage: show attention N (a test image)"))?;
            let index = a
                .trim()
                .parse()
                .map_err(|_| anyhow!("'{}' is not a test image number", clip(a)))?;
            let m = run.attention_maps(index)?;
            (m.figure, m.data.to_string())
        }
        "embedding" => {
            let m = run.embedding_map()?;
            (m.figure, m.data.to_string())
        }
        "collapse" => {
            let c = run.collapse()?;
            let last = c.data.last().ok_or_else(|| anyhow!("no measurement"))?;
            let summary = last.to_string();
            (c.figure, summary)
        }
        "correspondence" => {
            let c = run.correspondence()?;
            let (st, a) = c.data.last().ok_or_else(|| anyhow!("no measurement"))?;
            let summary = format!("step {st}: {a}");
            (c.figure, summary)
        }
        _ => (
            run.views(4)?,
            format!("4 images and their two views ({})", run.recipe().name),
        ),
    };
    let path = figures.join(format!("{what}-step{step}.png"));
    figure.save(&path)?;
    println!("wrote {}", path.display());
    println!("{summary}");
    if terminal {
        match inline_protocol() {
            Some(proto) => print!("{}", inline_image(&figure.png()?, proto)),
            None => print!("{}", preview(&figure.image, 64)),
        }
    }
    Ok(Flow::Continue)
}

/// Terminals that draw images sent as escape sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InlineProtocol {
    Kitty,
    Iterm2,
}

/// Which inline-image protocol this terminal speaks, from its environment.
pub fn inline_protocol() -> Option<InlineProtocol> {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("TERM").contains("kitty") || !var("KITTY_WINDOW_ID").is_empty() {
        Some(InlineProtocol::Kitty)
    } else if var("TERM_PROGRAM") == "iTerm.app" || var("TERM_PROGRAM") == "WezTerm" {
        Some(InlineProtocol::Iterm2)
    } else {
        None
    }
}

/// The escape sequence that shows `png` inline (kitty's graphics protocol in 4 KiB chunks, or
/// iTerm2's inline file).
pub fn inline_image(png: &[u8], proto: InlineProtocol) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
    match proto {
        InlineProtocol::Iterm2 => {
            format!("\x1b]1337;File=inline=1;size={}:{b64}\x07\n", png.len())
        }
        InlineProtocol::Kitty => {
            let chunks: Vec<&[u8]> = b64.as_bytes().chunks(4096).collect();
            let mut out = String::new();
            for (i, c) in chunks.iter().enumerate() {
                let more = u8::from(i + 1 < chunks.len());
                let head = if i == 0 { "a=T,f=100," } else { "" };
                out.push_str(&format!(
                    "\x1b_G{head}m={more};{}\x1b\\",
                    String::from_utf8_lossy(c)
                ));
            }
            out.push('\n');
            out
        }
    }
}

/// A small Unicode half-block rendering (two pixel rows per character) in 24-bit colour.
pub fn preview(img: &sslab::plot::RgbImage, cols: usize) -> String {
    let cols = cols.min(img.width).max(1);
    let scale = img.width as f32 / cols as f32;
    let rows = ((img.height as f32 / scale) as usize / 2).max(1);
    let mut out = String::new();
    for r in 0..rows {
        for c in 0..cols {
            let px = |row: usize| {
                let y = ((row as f32 * scale) as usize).min(img.height - 1);
                let x = ((c as f32 * scale) as usize).min(img.width - 1);
                img.rgb(x, y)
            };
            let (t, b) = (px(2 * r), px(2 * r + 1));
            out.push_str(&format!(
                "\x1b[38;2;{};{};{}m\x1b[48;2;{};{};{}m▀",
                t[0], t[1], t[2], b[0], b[1], b[2]
            ));
        }
        out.push_str("\x1b[0m\n");
    }
    out
}

fn cmd_history(s: &mut Session, args: &[&str]) -> Result<Flow> {
    no_more(args, 1)?;
    let n = count(args.first(), 10, usize::MAX)?;
    let h = s.run()?.history();
    if h.is_empty() {
        println!("no steps yet");
    }
    for r in &h[h.len().saturating_sub(n)..] {
        println!("{r}");
    }
    Ok(Flow::Continue)
}

fn one_path<'a>(args: &[&'a str], usage: &str) -> Result<&'a str> {
    no_more(args, 1)?;
    args.first()
        .copied()
        .ok_or_else(|| anyhow!("usage: {usage}"))
}

fn cmd_save(s: &mut Session, args: &[&str]) -> Result<Flow> {
    let dir = one_path(args, "save <dir>")?;
    let path = s.run()?.save(dir)?;
    println!("saved step {} to {}", s.run()?.steps_done(), path.display());
    Ok(Flow::Continue)
}

fn cmd_load(s: &mut Session, args: &[&str]) -> Result<Flow> {
    let dir = one_path(args, "load <dir>")?;
    let run = Run::load(Path::new(dir)).with_context(|| format!("loading {dir}"))?;
    println!(
        "loaded a {} run at step {} of {}",
        run.config().method,
        run.steps_done(),
        run.total_steps()
    );
    s.run = Some(run);
    Ok(Flow::Continue)
}

fn cmd_device(s: &mut Session, args: &[&str]) -> Result<Flow> {
    no_more(args, 0)?;
    let cuda = if cfg!(feature = "cuda") {
        "built with CUDA"
    } else {
        "built without CUDA (cargo build --features cuda)"
    };
    match &s.run {
        Some(r) => println!("{} ({cuda})", r.device_name()),
        None => println!("no run yet; new runs use config device=auto ({cuda})"),
    }
    Ok(Flow::Continue)
}

fn cmd_help(_: &mut Session, args: &[&str]) -> Result<Flow> {
    no_more(args, 1)?;
    match args.first() {
        None => {
            for c in COMMANDS {
                println!("  {:<58} {}", c.usage, c.help);
            }
        }
        Some(name) => {
            let c = COMMANDS
                .iter()
                .find(|c| c.name == *name)
                .ok_or_else(|| anyhow!("no command '{}'", clip(name)))?;
            println!("{}\n  {}", c.usage, c.help);
            if c.name == "new" {
                println!("  methods: {}", sslab::methods::names().join(", "));
                println!("  presets: {}", PRESETS.join(", "));
            }
        }
    }
    Ok(Flow::Continue)
}

fn cmd_quit(_: &mut Session, args: &[&str]) -> Result<Flow> {
    no_more(args, 0)?;
    Ok(Flow::Quit)
}

/// Completion candidates for the word being typed at the end of `line`: commands first, then
/// methods and presets after `new`, `show` targets, config keys after `new`/`set`.
pub fn complete(line: &str) -> (usize, Vec<String>) {
    let start = line.rfind(char::is_whitespace).map_or(0, |i| i + 1);
    let word = &line[start..];
    let before: Vec<&str> = line[..start].split_whitespace().collect();
    let pool: Vec<String> = match before.as_slice() {
        [] => COMMANDS.iter().map(|c| c.name.to_string()).collect(),
        ["new"] => sslab::methods::names()
            .iter()
            .map(|m| m.to_string())
            .collect(),
        ["new", m] => PRESETS
            .iter()
            .filter_map(|p| p.strip_prefix(&format!("{m}/")).map(String::from))
            .chain(config_keys().into_iter().map(|k| format!("{k}=")))
            .collect(),
        ["new", ..] | ["set", ..] => ["lr=", "lambda=", "tau=", "batch="]
            .iter()
            .map(|s| s.to_string())
            .chain(config_keys().into_iter().map(|k| format!("{k}=")))
            .collect(),
        ["show"] => SHOW.iter().map(|s| s.to_string()).collect(),
        ["help"] => COMMANDS.iter().map(|c| c.name.to_string()).collect(),
        ["probe"] => vec!["dense".into(), "linear".into()],
        _ => vec![],
    };
    let mut hits: Vec<String> = pool.into_iter().filter(|c| c.starts_with(word)).collect();
    hits.sort();
    hits.dedup();
    (start, hits)
}

/// Every dotted key of the configuration (from the default config's TOML).
pub fn config_keys() -> Vec<String> {
    fn walk(prefix: &str, v: &toml_like::Value, out: &mut Vec<String>) {
        if let toml_like::Value::Table(t) = v {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if matches!(v, toml_like::Value::Table(_)) {
                    walk(&key, v, out);
                } else {
                    out.push(key);
                }
            }
        }
    }
    let mut out = Vec::new();
    if let Ok(text) = RunConfig::default().to_toml() {
        if let Ok(v) = text.parse::<toml_like::Value>() {
            walk("", &v, &mut out);
        }
    }
    out
}

mod toml_like {
    pub use toml::Value;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session_with_run() -> Session {
        let mut s = Session::new(
            std::env::temp_dir().join("sslab-shell-test"),
            Arc::default(),
        );
        s.terminal = false;
        s.execute(
            "new barlow-twins tiny data.shapes.train=64 data.shapes.test=20 data.shapes.size=16 \
             augment.size=16 model.width=4 train.batch_size=16 train.steps=4",
        )
        .unwrap();
        s
    }

    /// At least 100 malformed lines: each is an error (or, for blank lines, nothing), never a
    /// panic, and the run survives all of them.
    #[test]
    fn malformed_lines_are_one_line_errors_and_the_session_goes_on() {
        let long = "x".repeat(10_000);
        let long_num = format!("step {}", "9".repeat(60));
        let mut lines: Vec<String> = [
            "frobnicate",
            "NEW barlow-twins",
            "new",
            "new swav",
            "new barlow-twins giant",
            "new moco-v2 barlow-twins/tiny",
            "new barlow-twins tiny =",
            "new barlow-twins tiny a=",
            "new barlow-twins tiny =1",
            "new barlow-twins tiny optim.lr=abc",
            "new barlow-twins tiny nonsense=1",
            "new barlow-twins tiny optim.lr=-1",
            "new barlow-twins tiny train.batch_size=0",
            "new barlow-twins tiny model.width=0",
            "new moco-v2 tiny moco.queue_size=7",
            "new barlow-twins tiny data.source=nowhere",
            "config extra",
            "set",
            "set lr",
            "set lr=",
            "set =0.1",
            "set lr=fast",
            "set lr=-1",
            "set lr=nan",
            "set model.width=8",
            "set optim.kind=sgd",
            "set data.source=shapes",
            "set batch=0",
            "set batch=100000",
            "set tau=0.1",
            "set lambda=-1",
            "set λ=-2",
            "set seed=3",
            "set augment.size=64",
            "set nonsense=1",
            "set lr=0.1 bogus",
            "step 0",
            "step -1",
            "step abc",
            "step 1.5",
            "step 1 2",
            "step ∞",
            "step 0x10",
            "train",
            "train 0",
            "train -5",
            "train ten",
            "train 1 2",
            "train 99999999999",
            "knn now",
            "probe",
            "probe linear extra",
            "probe sparse",
            "probe dense extra",
            "show",
            "show everything",
            "show sim",
            "show sim 1",
            "show sim a,b",
            "show sim 1,",
            "show sim ,1",
            "show sim 999,999",
            "show sim -1,4",
            "show loss extra",
            "show corr 1",
            "show 🙂",
            "history x",
            "history 0",
            "history -1",
            "history 1 2",
            "save",
            "save a b",
            "save /proc/definitely/not/writable",
            "load",
            "load a b",
            "load /definitely/missing/run",
            "load /etc",
            "device now",
            "help nothing",
            "help new extra",
            "quit now",
            "exit now",
            "🙂",
            "ß",
            "新しい",
            "\u{0}",
            "\u{7}",
            "step\u{0}",
            "set lr=0.1\u{0}",
            "new barlow-twins \u{200b}",
            "    step x   ",
            "show views extra",
            "show collapse 1",
            "show spikes 3",
            "show lr x",
            "show correspondence x",
            "show attention",
            "show attention x",
            "show attention -1",
            "show attention 999999",
            "show attention 1 2",
            "show attention 0",
            "show embedding extra",
            "set train.steps=1",
            "set eval.knn_k=0",
            "set diagnostics.every=-1",
            "set train.log_every=0",
            "new moco-v3 resnet50 model.patch=3",
            "load .",
            "save /dev/null/x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        lines.push(long);
        lines.push(long_num);
        assert!(lines.len() >= 100, "{} lines", lines.len());
        let mut s = session_with_run();
        for line in &lines {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.execute(line)));
            match r {
                Err(_) => panic!("panicked on {line:?}"),
                Ok(Ok(flow)) => panic!("accepted {line:?} ({flow:?})"),
                Ok(Err(e)) => {
                    let msg = format!("{e:#}");
                    assert!(!msg.is_empty(), "{line:?}: empty message");
                }
            }
        }
        // Blank lines and comments are fine; the run is still there and steps.
        for ok in ["", "   ", "# a comment", "probe linear"] {
            assert_eq!(s.execute(ok).unwrap(), Flow::Continue);
        }
        s.execute("step 1").unwrap();
        assert_eq!(s.run.as_ref().unwrap().steps_done(), 1);
    }

    #[test]
    fn completion_offers_commands_methods_presets_and_keys() {
        assert_eq!(complete("he"), (0, vec!["help".to_string()]));
        assert!(complete("new mo").1.contains(&"moco-v3".to_string()));
        let (start, c) = complete("new moco-v3 vi");
        assert_eq!(start, 12);
        assert!(c.contains(&"vit-tiny".to_string()) && c.contains(&"vit-small".to_string()));
        assert!(complete("set optim.l").1.contains(&"optim.lr=".to_string()));
        assert!(complete("show c").1.contains(&"corr".to_string()));
        assert!(config_keys().contains(&"diagnostics.spike_factor".to_string()));
    }

    #[test]
    fn inline_images_use_each_terminal_protocol() {
        let png = vec![7u8; 10_000];
        let kitty = inline_image(&png, InlineProtocol::Kitty);
        assert!(kitty.starts_with("\x1b_Ga=T,f=100,m=1;"));
        assert_eq!(
            kitty.matches("\x1b_G").count(),
            4,
            "13 336 base64 bytes in 4 KiB chunks"
        );
        assert!(kitty.contains("m=0;"));
        let iterm = inline_image(&png, InlineProtocol::Iterm2);
        assert!(iterm.starts_with("\x1b]1337;File=inline=1;size=10000:"));
    }

    #[test]
    fn help_lists_every_command_of_the_table() {
        let mut s = Session::new(std::env::temp_dir(), Arc::default());
        for c in COMMANDS {
            assert!(c.usage.starts_with(c.name));
            s.execute(&format!("help {}", c.name)).unwrap();
        }
    }

    /// 2 000 random lines of shell commands and odd arguments (seeded): never a panic, every
    /// refusal one non-empty line, and the run still steps afterwards. Commands that write
    /// files or build runs (`save`, `load`, `new`) and numbers that would train are left out.
    #[test]
    fn random_lines_never_panic() {
        let commands = [
            "set",
            "show",
            "history",
            "help",
            "config",
            "device",
            "step",
            "train",
            "knn",
            "probe",
            "frobnicate",
            "",
            "quit-not",
            "🙂",
            "show sim",
            "show loss",
            "show corr",
        ];
        let args = [
            "lr=0.1",
            "lr=",
            "=",
            "lr=-1",
            "lr=nan",
            "batch=0",
            "batch=7",
            "tau=0.1",
            "lambda=1e309",
            "λ=0.005",
            "optim.kind=adamw",
            "model.width=8",
            "eval.knn_k=0",
            "precision=bf16",
            "cuda.tf32=false",
            "diagnostics.every=-3",
            "x",
            "-1",
            "1.5",
            "abc",
            "∞",
            "1,2",
            ",",
            "999,999",
            "🙂",
            "\u{0}",
            "a=b=c",
            "\"",
            "'",
            "[1,2]",
            "sim",
            "loss",
            "corr",
            "linear",
            "dense",
            "sparse",
            "everything",
            "  ",
        ];
        // splitmix64: the same lines on every run.
        let mut state = 0x5eed_u64;
        let mut next = move |n: usize| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % n as u64) as usize
        };
        let mut s = session_with_run();
        for _ in 0..2000 {
            let mut line = commands[next(commands.len())].to_string();
            for _ in 0..next(4) {
                line.push(' ');
                line.push_str(args[next(args.len())]);
            }
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.execute(&line)));
            match r {
                Err(_) => panic!("panicked on {line:?}"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let msg = format!("{e:#}");
                    assert!(!msg.trim().is_empty(), "{line:?}: empty message");
                }
            }
        }
        s.execute("set lr=0.01").unwrap();
        s.execute("step").unwrap();
    }
}
