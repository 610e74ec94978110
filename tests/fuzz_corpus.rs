//! Replays the fuzz corpus (`tests/fuzz-corpus/<target>/*`): every input
//! that libFuzzer found interesting while fuzzing `Engine::process` (see
//! `scripts/fuzz.sh`) goes through the same set-up and the same invariant
//! checks as in the fuzz targets, on stable Rust and without libFuzzer.
//!
//! The checks live once, in `fuzz/harness.rs`, which this test and the fuzz
//! targets both compile as a module (`#[path]`): the fuzz crate is a
//! separate workspace that the main package's tests cannot depend on, and a
//! module file (unlike `include!`) keeps its own docs, imports and lint
//! attributes.
//!
//! A missing or empty corpus folder fails: a corpus that is not there is a
//! defect, not a pass.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../fuzz/harness.rs"]
mod harness;

fn corpus_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("the fuzz corpus {} cannot be read: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn the_fuzz_corpus_replays_without_a_finding() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("tests/fuzz-corpus");
    let h = harness::Harness::new(root);
    let mut failures = Vec::new();
    let mut total = 0;
    for target in harness::TARGETS {
        let files = corpus_files(&corpus.join(target));
        assert!(
            !files.is_empty(),
            "the fuzz corpus of target {target} is empty: run `bash scripts/fuzz.sh 600 {target}`"
        );
        for file in files {
            let data = fs::read(&file).expect("a corpus file");
            total += 1;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| h.run(target, &data))) {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                failures.push(format!("{}: {why}", file.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} corpus inputs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("replayed {total} fuzz corpus inputs; first pass per scenario:");
    for ((scenario, outcome), n) in harness::outcome_counts() {
        eprintln!("  {scenario:<30} {outcome:<28} {n}");
    }
}

#[test]
fn every_corpus_folder_is_a_fuzz_target() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus");
    for entry in fs::read_dir(&corpus).expect("tests/fuzz-corpus") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            assert!(
                harness::TARGETS.contains(&name),
                "{} is not a fuzz target ({:?})",
                path.display(),
                harness::TARGETS
            );
        }
    }
}
