//! Seeded random inputs where users type: config texts (mutations of every preset's TOML) and
//! `--set KEY=VALUE` overrides. Thousands of them, zero panics, and every error says where:
//! a key (`optim.lr`), or a line and column of the text.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sslab::train::{RunConfig, PRESETS};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Odd values a key may be given.
const VALUES: &[&str] = &[
    "0",
    "-1",
    "1e309",
    "-1e309",
    "nan",
    "inf",
    "1.5",
    "3",
    "99999999999999999999",
    "\"\"",
    "\"x\"",
    "true",
    "[]",
    "[1, 2]",
    "[-4]",
    "{}",
    "\"lars\"",
    "\"cosine\"",
    "\"🙂\"",
    "0x10",
    "1_000",
    "=",
    "\"shapes\"",
    "\"cifar10:/nope\"",
    "[1e40]",
    "-0",
    "\"\\u0000\"",
];

/// Keys: every key of a real config, plus near misses.
fn keys() -> Vec<String> {
    let text = RunConfig::preset("barlow-twins/tiny")
        .unwrap()
        .to_toml()
        .unwrap();
    let value: toml::Value = toml::from_str(&text).unwrap();
    let mut out = Vec::new();
    fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&key, v, out);
            }
        } else {
            out.push(prefix.to_string());
        }
    }
    walk("", &value, &mut out);
    out.extend(
        [
            "optim.lrr",
            "optim",
            "optim.lr.x",
            "",
            ".",
            "model..width",
            "x.y.z",
        ]
        .map(String::from),
    );
    out
}

/// An error message says where: a key path (`section.key` or a top-level key) or a text
/// position.
fn says_where(msg: &str, keys: &[String]) -> bool {
    msg.contains("line ")
        || msg.contains("column")
        || msg.contains("(empty key)")
        || keys
            .iter()
            .any(|k| !k.is_empty() && msg.contains(k.as_str()))
        || msg.contains("<toml>")
}

#[test]
fn random_set_overrides_never_panic_and_name_the_key() {
    let keys = keys();
    let mut rng = ChaCha8Rng::seed_from_u64(25);
    let (mut errors, n) = (0, 2500);
    for _ in 0..n {
        let key = &keys[rng.gen_range(0..keys.len())];
        let value = VALUES[rng.gen_range(0..VALUES.len())];
        let mut c = RunConfig::preset(PRESETS[rng.gen_range(0..PRESETS.len())]).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            c.set(key, value).and_then(|_| c.validate())
        }));
        match r {
            Err(_) => panic!("--set {key}={value} panicked"),
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                errors += 1;
                let msg = e.to_string();
                assert!(
                    says_where(&msg, &keys) || (!key.is_empty() && msg.contains(key.as_str())),
                    "--set {key}={value}: {msg}"
                );
            }
        }
    }
    assert!(
        errors > n / 4,
        "only {errors} of {n} overrides were refused"
    );
}

#[test]
fn random_config_texts_never_panic_and_say_where() {
    let keys = keys();
    let mut rng = ChaCha8Rng::seed_from_u64(2025);
    let texts: Vec<String> = PRESETS
        .iter()
        .map(|p| {
            let mut t = format!("preset = \"{p}\"\n");
            t.push_str(&RunConfig::preset(p).unwrap().to_toml().unwrap());
            t
        })
        .collect();
    let junk = [
        "=", "[", "]", "\"", "\n", "#", "🙂", "\0", "[[x]]", "= =", "0.", "{", "'", "\\",
    ];
    let (mut errors, n) = (0, 2500);
    for i in 0..n {
        let mut lines: Vec<String> = texts[i % texts.len()].lines().map(String::from).collect();
        for _ in 0..rng.gen_range(1..4) {
            let at = rng.gen_range(0..lines.len());
            match rng.gen_range(0..5) {
                // A value replaced.
                0 => {
                    if let Some((k, _)) = lines[at].split_once(" = ") {
                        lines[at] = format!("{k} = {}", VALUES[rng.gen_range(0..VALUES.len())]);
                    }
                }
                // A line dropped or duplicated.
                1 => {
                    lines.remove(at);
                }
                2 => {
                    let l = lines[at].clone();
                    lines.insert(at, l);
                }
                // Junk inserted into a line, or a line cut short.
                3 => {
                    let l = &mut lines[at];
                    let cut = (0..=l.len())
                        .rev()
                        .find(|&c| l.is_char_boundary(c) && c <= rng.gen_range(0..=l.len()))
                        .unwrap_or(0);
                    l.insert_str(cut, junk[rng.gen_range(0..junk.len())]);
                }
                _ => {
                    let l = &mut lines[at];
                    let cut = (0..=l.len())
                        .rev()
                        .find(|&c| l.is_char_boundary(c) && c <= l.len() / 2)
                        .unwrap_or(0);
                    l.truncate(cut);
                }
            }
            if lines.is_empty() {
                lines.push(String::new());
            }
        }
        let text = lines.join("\n");
        let r = catch_unwind(AssertUnwindSafe(|| {
            RunConfig::from_toml_str(&text).and_then(|c| c.validate().map(|_| c))
        }));
        match r {
            Err(_) => panic!("config text panicked:\n{text}"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                errors += 1;
                let msg = e.to_string();
                assert!(
                    says_where(&msg, &keys),
                    "no key or position in: {msg}\n{text}"
                );
            }
        }
    }
    assert!(
        errors > n / 10,
        "only {errors} of {n} mutated texts were refused"
    );
}
