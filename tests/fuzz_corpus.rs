//! Replays the fuzz corpus on stable: every file under `fuzz/corpus/<target>/`,
//! `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/` goes through the same oracle the fuzz target checks
//! (`fuzz/oracles.rs`), so what a campaign found stays found. A missing or empty corpus
//! fails: a replay of zero files would pass while testing nothing.
//!
//! `fuzz/regressions/known-defects.txt` lists regression inputs that trip a defect being
//! fixed (`target/file oracle`): each must fail with that oracle alone, and once it passes
//! the test fails until its line is deleted, so the list cannot go stale.
//!
//! Try it: `cargo test --test fuzz_corpus -- --nocapture`.

#[path = "../fuzz/oracles.rs"]
mod oracles;

use std::collections::BTreeMap;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/file` -> the oracle it is known to fail.
fn known_defects() -> BTreeMap<String, String> {
    let path = root().join("fuzz/regressions/known-defects.txt");
    let Ok(text) = fs::read_to_string(&path) else {
        return BTreeMap::new();
    };
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut words = l.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(file), Some(oracle), None) => (file.to_string(), oracle.to_string()),
                _ => panic!("{}: bad line {l:?}", path.display()),
            }
        })
        .collect()
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn shown(bytes: &[u8]) -> String {
    let s = bytes.escape_ascii().to_string();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}... ({} bytes)", &s[..i], bytes.len()),
        None => s,
    }
}

fn replay(target: &str) {
    let oracle = oracles::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .expect("a target named in oracles::TARGETS");
    let [corpus, seeds, regressions] = oracles::input_dirs(root(), target);
    assert!(
        corpus.is_dir(),
        "{} is missing: the fuzz corpus must be committed (seed it, or run fuzz/run.sh)",
        corpus.display()
    );
    let corpus_files = files_in(&corpus);
    assert!(
        !corpus_files.is_empty(),
        "{} is empty: a replay of zero files tests nothing",
        corpus.display()
    );
    let optional = |dir: &Path| {
        if dir.is_dir() {
            files_in(dir)
        } else {
            Vec::new()
        }
    };
    let seed_files = optional(&seeds);
    let regression_files = optional(&regressions);

    let known = known_defects();
    let mut failures = Vec::new();
    let mut still_known = 0;
    for (path, is_regression) in corpus_files
        .iter()
        .chain(&seed_files)
        .map(|p| (p, false))
        .chain(regression_files.iter().map(|p| (p, true)))
    {
        let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = format!(
            "{target}/{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        let expected = is_regression.then(|| known.get(&name)).flatten();
        let what = format!("{} [{}]", path.display(), shown(&bytes));
        let violations = match catch_unwind(AssertUnwindSafe(|| oracle(&bytes))) {
            Ok(v) => v,
            Err(_) => {
                failures.push(format!("{what}: panicked (message above)"));
                continue;
            }
        };
        match expected {
            None => failures.extend(
                violations
                    .iter()
                    .map(|v| format!("{what}: oracle {} failed: {}", v.oracle, v.detail)),
            ),
            Some(oracle) if violations.is_empty() => failures.push(format!(
                "{what}: listed in fuzz/regressions/known-defects.txt as failing {oracle}, \
                 but it passes now: the defect is fixed, delete its line"
            )),
            Some(oracle) => {
                still_known += 1;
                failures.extend(
                    violations
                        .iter()
                        .filter(|v| v.oracle != oracle)
                        .map(|v| format!("{what}: oracle {} failed: {}", v.oracle, v.detail)),
                );
            }
        }
    }
    for name in known
        .keys()
        .filter(|k| k.starts_with(&format!("{target}/")))
    {
        let listed = regression_files.iter().any(|p| {
            p.file_name()
                .is_some_and(|f| *name == format!("{target}/{}", f.to_string_lossy()))
        });
        if !listed {
            failures.push(format!(
                "known-defects.txt names {name}, which is not in fuzz/regressions/"
            ));
        }
    }
    eprintln!(
        "{target}: replayed {} corpus, {} seed and {} regression files ({still_known} known defects still open)",
        corpus_files.len(),
        seed_files.len(),
        regression_files.len()
    );
    assert!(
        failures.is_empty(),
        "{target}: {} failure(s):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn chat_line_corpus() {
    replay("chat_line");
}

#[test]
fn lines_corpus() {
    replay("lines");
}

#[test]
fn telnet_corpus() {
    replay("telnet");
}

#[test]
fn http_request_corpus() {
    replay("http_request");
}

#[test]
fn http_range_corpus() {
    replay("http_range");
}

#[test]
fn proxy_header_corpus() {
    replay("proxy_header");
}

#[test]
fn ftp_line_corpus() {
    replay("ftp_line");
}

/// Every target in the oracle table has its test above (a new target needs one).
#[test]
fn every_target_is_replayed() {
    let names: Vec<&str> = oracles::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "chat_line",
            "lines",
            "telnet",
            "http_request",
            "http_range",
            "proxy_header",
            "ftp_line"
        ]
    );
}
