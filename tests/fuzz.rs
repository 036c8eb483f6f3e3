//! Property tests of the two doors user input comes through: the config (file and LABCTL_*
//! variables) and the command line. Seeded random inputs, many cases, no services:
//! - nothing panics;
//! - every rejection names the offending key, variable or flag;
//! - nothing hostile gets through: an accepted string value carries none of the characters
//!   that would matter in SQL, a shell, a template or a path.
//!
//! LABCTL_FUZZ_SEED=N reruns a failing case; LABCTL_FUZZ_CASES scales the run.

use std::panic::{catch_unwind, AssertUnwindSafe};

use clap::Parser;
use labctl::{cli::Cli, model::config::Config};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn seed() -> u64 {
    std::env::var("LABCTL_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261124)
}

fn cases(default: usize) -> usize {
    std::env::var("LABCTL_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Every (section, key) of the config, derived from the defaults, so new keys are fuzzed too.
fn keys() -> Vec<(Option<String>, String)> {
    let value = toml::Value::try_from(Config::default()).unwrap();
    let mut out = Vec::new();
    for (k, v) in value.as_table().unwrap() {
        match v.as_table() {
            Some(t) => out.extend(t.keys().map(|kk| (Some(k.clone()), kk.clone()))),
            None => out.push((None, k.clone())),
        }
    }
    out
}

const HOSTILE: &[&str] = &[
    "'",
    "\"",
    ";",
    "$(id)",
    "`id`",
    "../",
    "..",
    "/",
    "\\",
    " ",
    "\n",
    "--",
    "%",
    "{{",
    "}}",
    "{%",
    "\u{0}",
    "é",
    "DROP TABLE x",
    "-XX:+Evil",
    "\t",
    "*",
];

/// Characters that must never survive validation in a string value (`..` is checked where a
/// value becomes a path: project and lake container names admit no dots at all).
fn dangerous(s: &str) -> bool {
    s.chars().any(|c| "'\";$()`\\/ \n\t{}%*\u{0}".contains(c) || c.is_control())
}

fn random_string(rng: &mut StdRng) -> String {
    let mut s = String::new();
    for _ in 0..rng.gen_range(0..6) {
        match rng.gen_range(0..3) {
            0 => s.push_str(HOSTILE[rng.gen_range(0..HOSTILE.len())]),
            1 => s.push_str(
                ["lab", "sensors", "1g", "512m", "127.0.0.1", "x", "A", "0"][rng.gen_range(0..8)],
            ),
            _ => s.push(char::from(rng.gen_range(32u8..127))),
        }
    }
    s
}

/// A TOML literal of a random type: strings (often hostile), numbers in and out of range.
fn random_literal(rng: &mut StdRng) -> String {
    match rng.gen_range(0..7) {
        0..=2 => toml::Value::String(random_string(rng)).to_string(),
        3 => rng.gen_range(-5i64..70_000).to_string(),
        4 => [i64::MIN, i64::MAX, -1, 0, 65_536, 1 << 40][rng.gen_range(0..6)].to_string(),
        5 => ["true", "1.5", "[1, 2]", "{ a = 1 }"][rng.gen_range(0..4)].to_string(),
        _ => format!("\"{}\"", rng.gen_range(0u64..u64::MAX)),
    }
}

fn load_file(
    text: &str,
    env: Vec<(String, String)>,
) -> std::thread::Result<anyhow::Result<Config>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labctl.toml");
    std::fs::write(&path, text).unwrap();
    catch_unwind(AssertUnwindSafe(|| Config::load(Some(&path), env)))
}

fn check_accepted(c: &Config, case: &str) {
    let value = toml::Value::try_from(c).unwrap();
    let mut strings = Vec::new();
    for v in value.as_table().unwrap().values() {
        match v {
            toml::Value::String(s) => strings.push(s.clone()),
            toml::Value::Table(t) => {
                strings.extend(t.values().filter_map(|v| v.as_str().map(str::to_string)))
            }
            _ => {}
        }
    }
    for s in strings {
        assert!(!dangerous(&s), "{case}: accepted a dangerous value {s:?}");
    }
    assert!(
        !c.project.contains('.') && !c.lake.container.contains('.'),
        "{case}: a path-forming name with a dot"
    );
}

#[test]
fn config_file_values_never_panic_and_rejections_name_the_key() {
    let mut rng = StdRng::seed_from_u64(seed());
    let keys = keys();
    for i in 0..cases(3000) {
        let (section, key) = &keys[rng.gen_range(0..keys.len())];
        let literal = random_literal(&mut rng);
        let text = match section {
            Some(s) => format!("[{s}]\n{key} = {literal}\n"),
            None => format!("{key} = {literal}\n"),
        };
        let case = format!("case {i} (seed {}): {text:?}", seed());
        match load_file(&text, vec![]).unwrap_or_else(|_| panic!("{case}: panicked")) {
            Ok(c) => check_accepted(&c, &case),
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(
                    msg.contains(key.as_str()),
                    "{case}: the error does not name `{key}`: {msg}"
                );
            }
        }
    }
}

#[test]
fn env_values_never_panic_and_rejections_name_the_variable() {
    let mut rng = StdRng::seed_from_u64(seed() ^ 1);
    let keys = keys();
    for i in 0..cases(3000) {
        let (section, key) = &keys[rng.gen_range(0..keys.len())];
        let var = match section {
            Some(s) => format!("LABCTL_{}_{}", s.to_ascii_uppercase(), key.to_ascii_uppercase()),
            None => format!("LABCTL_{}", key.to_ascii_uppercase()),
        };
        let value = if rng.gen_bool(0.5) {
            random_string(&mut rng)
        } else {
            rng.gen_range(-5i64..70_000).to_string()
        };
        let case = format!("case {i} (seed {}): {var}={value:?}", seed());
        match load_file("", vec![(var.clone(), value.clone())])
            .unwrap_or_else(|_| panic!("{case}: panicked"))
        {
            Ok(c) => check_accepted(&c, &case),
            Err(e) => {
                let msg = format!("{e:#}");
                let dotted = match section {
                    Some(s) => format!("{s}.{key}"),
                    None => key.clone(),
                };
                assert!(
                    msg.contains(&var) || msg.contains(&dotted) || msg.contains(key.as_str()),
                    "{case}: the error names neither {var} nor {dotted}: {msg}"
                );
            }
        }
    }
}

#[test]
fn garbage_files_never_panic_and_errors_name_the_file() {
    let mut rng = StdRng::seed_from_u64(seed() ^ 2);
    let alphabet: Vec<char> = "[]{}=\"'#\n .,-_0123456789abcxyz\\ãé\t".chars().collect();
    for i in 0..cases(2000) {
        let text: String =
            (0..rng.gen_range(0..80)).map(|_| alphabet[rng.gen_range(0..alphabet.len())]).collect();
        let case = format!("case {i} (seed {}): {text:?}", seed());
        match load_file(&text, vec![]).unwrap_or_else(|_| panic!("{case}: panicked")) {
            Ok(c) => check_accepted(&c, &case),
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(
                    msg.contains("labctl.toml"),
                    "{case}: the error does not name the file: {msg}"
                );
            }
        }
    }
}

#[test]
fn command_lines_never_panic_and_rejections_name_the_argument() {
    let mut rng = StdRng::seed_from_u64(seed() ^ 3);
    let words = [
        "up",
        "down",
        "status",
        "demo",
        "logs",
        "ingest",
        "submit",
        "flink",
        "spark",
        "render",
        "images",
        "bench",
        "config",
        "plot",
        "jobs",
        "cancel",
        "kill",
        "compose",
        "init-db",
        "build",
        "list",
        "broker",
        "--json",
        "--volumes",
        "--yes",
        "--timeout",
        "--watch",
        "--taskmanagers",
        "--spark-workers",
        "--backfill",
        "--from",
        "--to",
        "--partitions",
        "--machines",
        "--interval",
        "--days",
        "--replace",
        "--dry-run",
        "--file",
        "-o",
        "-p",
        "--project",
        "--config",
        "-n",
        "-f",
        "--no-wait",
        "--bogus",
        "-Z",
    ];
    for i in 0..cases(5000) {
        let mut argv = vec!["labctl".to_string()];
        for _ in 0..rng.gen_range(0..6) {
            argv.push(if rng.gen_bool(0.7) {
                words[rng.gen_range(0..words.len())].to_string()
            } else {
                random_string(&mut rng)
            });
        }
        let case = format!("case {i} (seed {}): {argv:?}", seed());
        let parsed = catch_unwind(AssertUnwindSafe(|| Cli::try_parse_from(&argv)))
            .unwrap_or_else(|_| panic!("{case}: panicked"));
        let Err(e) = parsed else { continue };
        use clap::error::ErrorKind::*;
        if matches!(
            e.kind(),
            DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
        ) {
            continue;
        }
        let msg = e.to_string();
        // clap quotes what it objects to ('-X' of a cluster of short flags, a value, a name).
        let quoted: Vec<&str> =
            msg.split('\'').skip(1).step_by(2).filter(|q| !q.is_empty()).collect();
        let printable = |s: &str| s.chars().filter(|c| !c.is_control()).collect::<String>();
        let named = quoted.iter().any(|q| argv[1..].iter().flat_map(|a| [a.clone(), printable(a)]).any(|a| a.contains(q) || q.contains(a.as_str())))
            || matches!(e.kind(), MissingRequiredArgument | MissingSubcommand | InvalidSubcommand | TooFewValues)
            // A short flag without its value is named by its long form ('-n' -> '--tail <N>').
            || msg.contains("a value is required for '--");
        assert!(named, "{case}: the error names no argument given ({:?}): {msg}", e.kind());
    }
}
