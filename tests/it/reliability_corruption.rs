//! Corruption: an object file with a flipped byte and one cut short are
//! reported by `graft verify` by id and path; every command that needs them
//! (export, fork, resume) fails with an error naming the object and leaves
//! the record as it was; every other run stays usable.

use crate::reliability_support::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

fn object_path(store: &Path, id: &str) -> std::path::PathBuf {
    store.join("objects").join(&id[..2]).join(&id[2..])
}

/// Object ids named by every checkpoint of a run (retired ones included).
fn objects_of(dir: &Path, store: &Path, run: &str) -> BTreeSet<String> {
    let shown = json(&ok(dir, store, &["show", run, "--json"]));
    let mut ids = BTreeSet::new();
    for checkpoint in shown["checkpoints"].as_array().unwrap() {
        for part in ["tensors", "state"] {
            for (_, id) in checkpoint[part].as_object().unwrap() {
                ids.insert(id.as_str().unwrap().to_string());
            }
        }
    }
    ids
}

fn checkpoint(dir: &Path, store: &Path, reference: &str) -> Value {
    json(&ok(dir, store, &["show", reference, "--json"]))
}

#[test]
fn a_flipped_and_a_truncated_object_are_named_and_only_their_run_is_affected() {
    let work = workspace(8, 5);
    let dir = work.path();
    let store = dir.join("store");
    ok(
        dir,
        &store,
        &["train", "exp.toml", "--tag", "damaged", "-q"],
    );
    ok(
        dir,
        &store,
        &[
            "train",
            "exp.toml",
            "--set",
            "train.seed=6",
            "--tag",
            "healthy",
            "-q",
        ],
    );
    // A third run stops on a NaN after its step-4 checkpoint: resumable.
    let output = command(
        dir,
        &store,
        &["train", "exp.toml", "--set", "train.seed=7", "-q"],
    )
    .env("GRAFT_INJECT_NAN_AT_STEP", "6")
    .output()
    .unwrap();
    assert!(!output.status.success());
    // A failed run is not tagged: name it by id.
    let stopped = json(&ok(dir, &store, &["log", "--json"]))[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    verify_clean(dir, &store);

    let healthy = objects_of(dir, &store, "healthy");
    let last = checkpoint(dir, &store, "damaged@last");
    // A LoRA tensor gets a flipped byte; the optimizer moment of another
    // tensor is cut in half. Neither is shared with the healthy run.
    let flipped = last["tensors"]["model.layers.0.self_attn.q_proj.lora_B.weight"]
        .as_str()
        .unwrap()
        .to_string();
    let truncated = last["state"]["optim.m/model.layers.1.mlp.up_proj.lora_A.weight"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!healthy.contains(&flipped) && !healthy.contains(&truncated));
    let path = object_path(&store, &flipped);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let path = object_path(&store, &truncated);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    // The stopped run's trainer state (needed to resume) is cut to nothing.
    let stopped_last = checkpoint(dir, &store, &format!("{stopped}@last"));
    assert_eq!(stopped_last["step"], 4);
    let trainer = stopped_last["state"]["trainer"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(object_path(&store, &trainer), b"").unwrap();

    // verify names each damaged object by id and path, and exits 1.
    let output = run(dir, &store, &["verify"]);
    assert_eq!(output.status.code(), Some(1), "{}", out(&output));
    let report = out(&output);
    for id in [&flipped, &truncated, &trainer] {
        let line = report
            .lines()
            .find(|l| l.contains(id.as_str()))
            .unwrap_or_else(|| panic!("verify names {id}:\n{report}"));
        assert!(
            line.contains(&object_path(&store, id).display().to_string()),
            "{line}"
        );
    }
    assert!(report.contains("PROBLEMS FOUND"), "{report}");
    let listed = json(&out(&run(dir, &store, &["verify", "--json"])));
    assert_eq!(
        listed["corrupt_objects"].as_array().unwrap().len(),
        3,
        "{listed:#}"
    );

    let before = fingerprint(&store);
    let names_damage = |stderr: &str| {
        assert!(
            (stderr.contains(&flipped) || stderr.contains(&truncated))
                && stderr.contains("corrupt"),
            "the error names the damaged object:\n{stderr}"
        );
    };
    // Loading the damaged checkpoint fails clearly, whichever way it is loaded.
    names_damage(&fails(
        dir,
        &store,
        &["export", "damaged", "--peft", "adapter-damaged"],
    ));
    names_damage(&fails(
        dir,
        &store,
        &["export", "damaged@last", "--merged", "merged-damaged"],
    ));
    names_damage(&fails(
        dir,
        &store,
        &["fork", "damaged@last", "--set", "train.steps=12", "-q"],
    ));
    names_damage(&fails(
        dir,
        &store,
        &[
            "fork",
            "damaged",
            "exp.toml",
            "--set",
            "optim.lr=1e-3",
            "-q",
        ],
    ));
    let stderr = fails(dir, &store, &["resume", &stopped, "-q"]);
    assert!(
        stderr.contains(&trainer) && stderr.contains("corrupt"),
        "{stderr}"
    );
    assert!(!dir
        .join("adapter-damaged")
        .join("adapter_model.safetensors")
        .exists());
    assert_eq!(fingerprint(&store), before, "failed loads record nothing");

    // Everything else is as usable as before.
    ok(dir, &store, &["show", "healthy"]);
    ok(dir, &store, &["show", "damaged"]);
    ok(dir, &store, &["metrics", "damaged", "--json"]);
    ok(dir, &store, &["lineage", "healthy"]);
    ok(dir, &store, &["log"]);
    ok(
        dir,
        &store,
        &["export", "healthy", "--peft", "adapter-healthy"],
    );
    assert!(dir
        .join("adapter-healthy")
        .join("adapter_model.safetensors")
        .is_file());
    // An older checkpoint of the damaged run that does not share the
    // damaged objects still exports.
    let kept: Vec<Value> = json(&ok(dir, &store, &["show", "damaged", "--json"]))["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["retired"] == false && c["step"] != last["step"])
        .cloned()
        .collect();
    for older in &kept {
        let ids: Vec<&str> = older["tensors"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap())
            .collect();
        if !ids.contains(&flipped.as_str()) {
            let reference = format!("damaged@{}", older["step"]);
            ok(
                dir,
                &store,
                &["export", &reference, "--peft", "adapter-older"],
            );
        }
    }
    ok(
        dir,
        &store,
        &[
            "fork",
            "healthy@last",
            "--set",
            "train.steps=10",
            "--tag",
            "child",
            "-q",
        ],
    );
    assert_eq!(checkpoint(dir, &store, "child@last")["step"], 10);
}

/// sled reads the newest `snap.*` file on open, a half-written
/// `snap.N.generating` included (left by a full disk or a kill while a
/// snapshot was written): the index must still open, with every record.
#[test]
fn a_snapshot_cut_short_does_not_lock_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    ok(dir.path(), &store, &["init"]);
    ok(
        dir.path(),
        &store,
        &[
            "model",
            "add",
            &fixture().display().to_string(),
            "--tag",
            "tiny",
        ],
    );
    let before = fingerprint(&store);
    for (name, bytes) in [
        ("snap.FFFFFFFFFFFFFFF0.generating", &b""[..]),
        ("snap.FFFFFFFFFFFFFFFF.generating", &[7u8; 40][..]),
    ] {
        std::fs::write(store.join("index").join(name), bytes).unwrap();
    }
    let models = json(&ok(dir.path(), &store, &["model", "ls", "--json"]));
    assert_eq!(models.as_array().unwrap().len(), 1);
    ok(dir.path(), &store, &["show", "tiny"]);
    assert_eq!(fingerprint(&store), before);
    verify_clean(dir.path(), &store);
    let left: Vec<_> = std::fs::read_dir(store.join("index"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".generating"))
        .collect();
    assert!(left.is_empty(), "the torn snapshots are removed");
}
