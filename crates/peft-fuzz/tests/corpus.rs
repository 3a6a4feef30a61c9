//! Replays every fuzz target's committed inputs: the seeds (`fuzz/seeds/<target>`) and every
//! input a fuzzer once crashed, hung or ran out of memory on (`fuzz/regressions/<target>`).
//! Each must return without a panic. This is how CI runs the fuzz targets without a fuzzing
//! toolchain; `cargo xtask fuzz` runs them under libFuzzer.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz"))
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|f| f.is_file());
    files.sort();
    files
}

#[test]
fn committed_seeds_are_what_the_fixtures_make() {
    let seeds = peft_fuzz::seeds::seeds().unwrap();
    for (target, _) in peft_fuzz::TARGETS {
        let made: Vec<&peft_fuzz::seeds::Seed> =
            seeds.iter().filter(|s| s.target == *target).collect();
        assert!(!made.is_empty(), "no seeds for {target}");
        let committed = inputs(&fuzz_dir().join("seeds").join(target));
        assert_eq!(
            committed.len(),
            made.len(),
            "fuzz/seeds/{target} is stale: run `cargo xtask fuzz --seeds`"
        );
        for seed in made {
            let path = fuzz_dir().join("seeds").join(target).join(&seed.name);
            assert!(
                std::fs::read(&path).is_ok_and(|b| b == seed.bytes),
                "{} is stale: run `cargo xtask fuzz --seeds`",
                path.display()
            );
        }
    }
}

#[test]
fn every_target_survives_its_seeds_and_regressions() {
    let mut replayed = 0;
    for (target, run) in peft_fuzz::TARGETS {
        for kind in ["seeds", "regressions"] {
            for input in inputs(&fuzz_dir().join(kind).join(target)) {
                let bytes = std::fs::read(&input).unwrap();
                let outcome = std::panic::catch_unwind(|| run(&bytes));
                assert!(outcome.is_ok(), "{target} panicked on {}", input.display());
                // No time bound here: the fuzzer holds each input to 1 s on an optimised build
                // (`cargo xtask fuzz`); this suite runs on shared machines and slow backends.
                replayed += 1;
            }
        }
    }
    assert!(replayed > 40, "only {replayed} inputs replayed");
}
