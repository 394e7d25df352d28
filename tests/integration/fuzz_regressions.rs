//! Replays every saved fuzz finding (`fuzz/regressions/<target>/`) and every
//! seed (`fuzz/corpus/<target>/`) through the same functions the fuzz targets
//! call (`crdt_hub_core::fuzzing`): no panic may escape, each input finishes
//! quickly, and the seeds (real Yjs bytes) must go through.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crdt_hub::decode_guard;
use crdt_hub_core::fuzzing::{self, Outcome};

/// Generous for a debug build on a busy 2-core machine; the fuzzer's own
/// limit on the optimized build is 5 s.
const TIME_LIMIT: Duration = Duration::from_secs(20);

/// The stack of a tokio worker thread, where rooms and connections run:
/// a stack overflow must show up here as it would in the server.
const STACK: usize = 2 << 20;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// `(target, file)` for every file under `fuzz/<kind>/<target>/`.
fn inputs(kind: &str) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let root = fuzz_dir().join(kind);
    for target in std::fs::read_dir(&root).expect("fuzz directory exists") {
        let target = target.unwrap().path();
        let name = target.file_name().unwrap().to_string_lossy().into_owned();
        for file in std::fs::read_dir(&target).unwrap() {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|e| e == "bin") {
                found.push((name.clone(), file));
            }
        }
    }
    found.sort();
    found
}

/// Runs one input through its target on a worker-sized stack; panics with
/// the file name if the target panicked or took too long.
fn replay(target: &str, file: &Path) -> Option<Outcome> {
    let data = std::fs::read(file).unwrap();
    let target_name = target.to_string();
    let started = Instant::now();
    let outcome = std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || match target_name.as_str() {
            "frame_into_room" => Some(fuzzing::frame_into_room(&data)),
            "decode_apply_update" => Some(fuzzing::decode_apply_update(&data)),
            "convergence" => {
                fuzzing::convergence(&data);
                None
            }
            other => panic!("no fuzz target named {other}"),
        })
        .unwrap()
        .join()
        .unwrap_or_else(|_| panic!("{} panicked", file.display()));
    let elapsed = started.elapsed();
    assert!(elapsed < TIME_LIMIT, "{} took {elapsed:?}", file.display());
    outcome
}

#[test]
fn every_saved_finding_replays_cleanly() {
    let findings = inputs("regressions");
    assert!(!findings.is_empty(), "no regression files found");
    for (target, file) in &findings {
        let outcome = replay(target, file);
        // Everything the guard lets through must be cheap to apply: the
        // finding files that reached yrs are the ones the fuzzer kept for
        // coverage of a fixed problem, not for their size.
        if target == "decode_apply_update" && outcome != Some(Outcome::Refused) {
            let data = std::fs::read(file).unwrap();
            let summary = decode_guard::check_update_v1(&data).unwrap();
            assert!(
                summary.estimated_bytes <= decode_guard::expansion_limit(data.len()),
                "{}",
                file.display()
            );
        }
    }
}

#[test]
fn saved_attacks_are_refused_before_they_reach_a_room() {
    // Each file was an input that made an unguarded yrs 0.28.1 allocate,
    // spin, overflow its stack or panic (see `crdt-hub-core/src/decode_guard.rs`);
    // it must now be refused outright. A finding that is fine to
    // accept once its real cause is fixed is named `accepted-*`.
    for (target, file) in inputs("regressions") {
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        if target != "convergence" && !name.starts_with("accepted-") {
            assert_eq!(
                replay(&target, &file),
                Some(Outcome::Refused),
                "{}",
                file.display()
            );
        }
    }
}

#[test]
fn real_yjs_bytes_in_the_seed_corpus_go_through() {
    let seeds = inputs("corpus");
    assert!(
        seeds
            .iter()
            .any(|(_, f)| f.to_string_lossy().contains("yjs-"))
    );
    for (target, file) in &seeds {
        let outcome = replay(target, file);
        if target == "convergence" {
            continue;
        }
        // The targets refuse updates that create subdocuments, as the
        // server does by default (`crdt_hub::subdocs`); real Yjs bytes
        // holding one must be refused for that reason alone.
        let bytes = std::fs::read(file).unwrap();
        let creates_subdocs = match target.as_str() {
            "decode_apply_update" => {
                crdt_hub::decode_guard::check_update_v1(&bytes).is_ok_and(|s| s.subdocs > 0)
            }
            _ => matches!(
                crdt_hub::protocol::parse_frame_with(
                    &bytes::Bytes::from(bytes),
                    crdt_hub::protocol::FrameRules {
                        subdocuments: crdt_hub::subdocs::SubdocPolicy::Refuse,
                        ..Default::default()
                    }
                ),
                Err(crdt_hub::protocol::ProtocolError::Subdocument { .. })
            ),
        };
        let expected = if creates_subdocs {
            Outcome::Refused
        } else {
            Outcome::Applied
        };
        assert_eq!(outcome, Some(expected), "{}", file.display());
    }
}
