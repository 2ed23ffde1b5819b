//! Bad input: each mistake gives a clear error (the file, line, key, tensor
//! or ref at fault), a non-zero exit, and leaves the store as it was: every
//! record unchanged (a fingerprint of the index), `verify` clean, and any
//! object a failed command wrote unreachable (so `gc` reclaims it).

use crate::reliability_support::*;
use graft::store::{Canon, DatasetRecord, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

struct Before {
    fingerprint: Fingerprint,
    objects: BTreeSet<String>,
}

fn before(dir: &Path, store: &Path) -> Before {
    verify_clean(dir, store);
    Before {
        fingerprint: fingerprint(store),
        objects: object_files(store),
    }
}

/// The store is as `before` left it; objects written since are garbage.
fn unchanged(dir: &Path, store: &Path, before: &Before, case: &str) {
    assert_eq!(
        fingerprint(store),
        before.fingerprint,
        "{case}: the failed command changed the index"
    );
    verify_clean(dir, store);
    let new: BTreeSet<String> = object_files(store)
        .difference(&before.objects)
        .cloned()
        .collect();
    if !new.is_empty() {
        let report = json(&ok(
            dir,
            store,
            &["gc", "--dry-run", "--grace", "0", "--json"],
        ));
        let removable: BTreeSet<String> = report["removed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_str().unwrap().to_string())
            .collect();
        assert!(
            new.is_subset(&removable),
            "{case}: objects written by the failed command must be unreachable: {:?}",
            new.difference(&removable).collect::<Vec<_>>()
        );
    }
}

/// A copy of the fixture model, changed by `edit`.
fn model_copy(dir: &Path, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let target = dir.join(name);
    std::fs::create_dir_all(&target).unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap().flatten() {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
        }
    }
    edit(&target);
    target
}

fn set_config(folder: &Path, key: &str, value: serde_json::Value) {
    let path = folder.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config[key] = value;
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    std::fs::write(dir.join(name), text).unwrap();
    name.to_string()
}

/// Two dataset records whose ids share their first four hex digits, so
/// that prefix is ambiguous. Returns the prefix.
fn add_colliding_datasets(store: &Path) -> String {
    let spec = Canon::map().with("format", "chat").with("seq_len", 64u64);
    let mut seen: BTreeMap<String, (String, DatasetRecord)> = BTreeMap::new();
    for i in 0u64.. {
        let content = format!("{{\"messages\": []}} {i}\n");
        let file_object = graft::store::canonical::object_id(content.as_bytes());
        let id = DatasetRecord::compute_id(file_object, &spec);
        let record = DatasetRecord {
            id,
            file_object,
            path: format!("collide-{i}.jsonl"),
            spec: spec.clone(),
            stats: Canon::map(),
            replay_of: None,
            added_at: chrono::Utc::now(),
        };
        let prefix = id.to_hex()[..4].to_string();
        if let Some((other_content, other)) = seen.remove(&prefix) {
            let store = Store::open(store).unwrap();
            let index = store.index().unwrap();
            for (content, record) in [(other_content, other), (content, record)] {
                assert_eq!(
                    store.objects().put_bytes(content.as_bytes()).unwrap(),
                    record.file_object
                );
                index.put_dataset(&record).unwrap();
            }
            index.flush().unwrap();
            return prefix;
        }
        seen.insert(prefix, (content, record));
    }
    unreachable!()
}

#[test]
fn bad_input_is_named_and_changes_nothing() {
    let work = workspace(8, 5);
    let dir = work.path();
    let store = dir.join("store");
    ok(dir, &store, &["train", "exp.toml", "--tag", "first", "-q"]);
    let prefix = add_colliding_datasets(&store);
    let good = experiment(8, 11);
    let state = before(dir, &store);

    // ----- experiment files ---------------------------------------------
    let file = write(dir, "malformed.toml", &good.replace("[optim]", "[optim"));
    let stderr = fails(dir, &store, &["train", &file]);
    assert!(
        stderr.contains("malformed.toml") && stderr.contains("line"),
        "{stderr}"
    );
    unchanged(dir, &store, &state, "malformed TOML");

    let file = write(
        dir,
        "unknown-key.toml",
        &good.replace("lr = 5e-3", "lrr = 5e-3"),
    );
    let stderr = fails(dir, &store, &["train", &file]);
    assert!(
        stderr.contains("unknown-key.toml") && stderr.contains("line 15"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`lrr`") && stderr.contains("did you mean `lr`?"),
        "{stderr}"
    );
    unchanged(dir, &store, &state, "unknown key");

    let file = write(
        dir,
        "unknown-section.toml",
        &good.replace("[optim]", "[optimizer]"),
    );
    let stderr = fails(dir, &store, &["train", &file]);
    assert!(stderr.contains("did you mean `optim`?"), "{stderr}");
    unchanged(dir, &store, &state, "unknown section");

    let stderr = fails(
        dir,
        &store,
        &["train", "exp.toml", "--set", "train.stpes=3"],
    );
    assert!(stderr.contains("did you mean `steps`?"), "{stderr}");
    let stderr = fails(dir, &store, &["train", "exp.toml", "--set", "optim.lr"]);
    assert!(
        stderr.contains("--set optim.lr") && stderr.contains("key=value"),
        "{stderr}"
    );
    let stderr = fails(
        dir,
        &store,
        &["train", "exp.toml", "--set", "optim.schedule=\"cosin\""],
    );
    assert!(stderr.contains("optim.schedule"), "{stderr}");
    let stderr = fails(dir, &store, &["train", "exp.toml", "--set", "optim.lr=nan"]);
    assert!(
        stderr.contains("optim.lr = NaN") && stderr.contains("finite"),
        "{stderr}"
    );
    let stderr = fails(
        dir,
        &store,
        &["train", "exp.toml", "--set", "adapter.alpha=inf"],
    );
    assert!(stderr.contains("adapter.alpha = inf"), "{stderr}");
    // A negative learning rate would train uphill and be recorded as completed.
    let stderr = fails(
        dir,
        &store,
        &["train", "exp.toml", "--set", "optim.lr=-1e-3"],
    );
    assert!(
        stderr.contains("optim.lr = -0.001") && stderr.contains("positive"),
        "{stderr}"
    );
    let stderr = fails(dir, &store, &["train", "missing.toml"]);
    assert!(stderr.contains("missing.toml"), "{stderr}");
    unchanged(dir, &store, &state, "bad --set");

    // ----- the base model -------------------------------------------------
    let no_weights = model_copy(dir, "no-weights", |m| {
        std::fs::remove_file(m.join("model.safetensors")).unwrap()
    });
    let file = write(
        dir,
        "no-weights.toml",
        &good.replace(
            &fixture().display().to_string(),
            &no_weights.display().to_string(),
        ),
    );
    let stderr = fails(dir, &store, &["train", &file]);
    assert!(stderr.contains("model.safetensors"), "{stderr}");
    unchanged(dir, &store, &state, "missing weights file");

    let no_tokenizer = model_copy(dir, "no-tokenizer", |m| {
        std::fs::remove_file(m.join("tokenizer.json")).unwrap()
    });
    let file = write(
        dir,
        "no-tokenizer.toml",
        &good.replace(
            &fixture().display().to_string(),
            &no_tokenizer.display().to_string(),
        ),
    );
    let stderr = fails(dir, &store, &["train", &file]);
    assert!(stderr.contains("tokenizer.json"), "{stderr}");
    unchanged(dir, &store, &state, "missing tokenizer");

    let stderr = fails(
        dir,
        &store,
        &[
            "train",
            "exp.toml",
            "--set",
            "model.base=\"no/such/folder\"",
        ],
    );
    assert!(stderr.contains("no/such/folder"), "{stderr}");
    unchanged(dir, &store, &state, "missing model folder");

    let small_vocab = model_copy(dir, "small-vocab", |m| {
        set_config(m, "vocab_size", 100.into())
    });
    let file = write(
        dir,
        "small-vocab.toml",
        &good.replace(
            &fixture().display().to_string(),
            &small_vocab.display().to_string(),
        ),
    );
    let stderr = fails(dir, &store, &["train", &file]);
    // The 320-row embedding disagrees with vocab_size = 100 before the
    // tokenizer is compared: either refusal names the file and the key.
    assert!(
        (stderr.contains("tokenizer.json") && stderr.contains("vocab_size is 100"))
            || (stderr.contains("config.json") && stderr.contains("vocab_size = 100")),
        "{stderr}"
    );
    unchanged(dir, &store, &state, "tokenizer larger than the vocabulary");

    let stderr = fails(
        dir,
        &store,
        &["train", "exp.toml", "--set", "data.seq_len=4096"],
    );
    assert!(
        stderr.contains("data.seq_len = 4096") && stderr.contains("max_position_embeddings"),
        "{stderr}"
    );
    let short = model_copy(dir, "short-positions", |m| {
        set_config(m, "max_position_embeddings", 32.into())
    });
    let file = write(
        dir,
        "short.toml",
        &good.replace(
            &fixture().display().to_string(),
            &short.display().to_string(),
        ),
    );
    let stderr = fails(dir, &store, &["train", &file]);
    assert!(
        stderr.contains("data.seq_len = 64") && stderr.contains("32 positions"),
        "{stderr}"
    );
    unchanged(dir, &store, &state, "seq_len beyond the model's positions");
    let stderr = fails(
        dir,
        &store,
        &["train", "exp.toml", "--set", "data.seq_len=6"],
    );
    assert!(
        stderr.contains("eval set `reverse`") && stderr.contains("seq_len = 6"),
        "{stderr}"
    );
    unchanged(
        dir,
        &store,
        &state,
        "seq_len too short for any eval example",
    );

    // ----- data files -----------------------------------------------------
    let mut lines: Vec<String> = std::fs::read_to_string(dir.join("reverse.jsonl"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines[2] = "{\"messages\": [{\"role\": \"user\", \"content\": \"abc\"}".into();
    write(dir, "broken.jsonl", &(lines.join("\n") + "\n"));
    let stderr = fails(
        dir,
        &store,
        &[
            "train",
            "exp.toml",
            "--set",
            "data.train=[{path=\"broken.jsonl\"}]",
        ],
    );
    assert!(
        stderr.contains("broken.jsonl:3") && stderr.contains("JSON"),
        "{stderr}"
    );
    lines[2] = "{\"conversation\": []}".into();
    write(dir, "no-messages.jsonl", &(lines.join("\n") + "\n"));
    let stderr = fails(
        dir,
        &store,
        &[
            "train",
            "exp.toml",
            "--set",
            "data.train=[{path=\"no-messages.jsonl\"}]",
        ],
    );
    assert!(
        stderr.contains("no-messages.jsonl:3") && stderr.contains("messages"),
        "{stderr}"
    );
    let stderr = fails(
        dir,
        &store,
        &[
            "train",
            "exp.toml",
            "--set",
            "data.eval=[{path=\"no-messages.jsonl\"}]",
        ],
    );
    assert!(stderr.contains("no-messages.jsonl:3"), "{stderr}");
    let stderr = fails(
        dir,
        &store,
        &[
            "train",
            "exp.toml",
            "--set",
            "data.train=[{path=\"nowhere.jsonl\"}]",
        ],
    );
    assert!(stderr.contains("nowhere.jsonl"), "{stderr}");
    unchanged(dir, &store, &state, "malformed data");

    // ----- refs and queries -------------------------------------------------
    for args in [
        vec!["show", "no-such-tag"],
        vec!["show", "first@99"],
        vec!["show", "first@soon"],
        vec!["show", "no-such-tag@last"],
        vec!["export", "deadbeef", "--peft", "out"],
        vec!["fork", "no-such-tag@best", "--set", "train.steps=2"],
        vec!["resume", "feedface"],
        vec!["metrics", "no-such-tag"],
        vec!["lineage", "abc"],
        vec!["diff", "first", "no-such-tag"],
        vec!["tag", "x", "no-such-tag"],
    ] {
        let stderr = fails(dir, &store, &args);
        let named = args
            .iter()
            .skip(1)
            .any(|a| stderr.contains(&format!("`{}", a.split('@').next().unwrap())));
        assert!(named, "{args:?}: the error names the ref:\n{stderr}");
    }
    let stderr = fails(dir, &store, &["show", &prefix]);
    assert!(
        stderr.contains("ambiguous") && stderr.matches(&prefix).count() >= 3,
        "{stderr}"
    );
    let stderr = fails(dir, &store, &["fork", &prefix, "--set", "train.steps=2"]);
    assert!(stderr.contains("ambiguous"), "{stderr}");
    let stderr = fails(dir, &store, &["tag", "abcd", "first"]);
    assert!(
        stderr.contains("abcd") && stderr.contains("id prefix"),
        "{stderr}"
    );
    for (query, column) in [
        ("optim.lr <", 11),
        ("(optim.lr < 1", 14),
        ("optim.lr < 1e-4 and and", 21),
        ("optim.lr ~ 3", 10),
        ("'open", 1),
    ] {
        let stderr = fails(dir, &store, &["runs", "--where", query]);
        assert!(
            stderr.contains("--where")
                && stderr.contains(&format!("column {column}"))
                && stderr.contains('^'),
            "{query}: {stderr}"
        );
    }
    unchanged(dir, &store, &state, "refs and queries");

    // ----- a store that cannot be written -------------------------------
    // Tests run as root, whom permissions do not stop: the object folder is
    // replaced by a plain file instead, which stops everyone.
    let objects = store.join("objects");
    let aside = store.join("objects.aside");
    std::fs::rename(&objects, &aside).unwrap();
    std::fs::write(&objects, b"not a folder").unwrap();
    let output = run(
        dir,
        &store,
        &["train", "exp.toml", "--set", "train.seed=12"],
    );
    std::fs::remove_file(&objects).unwrap();
    std::fs::rename(&aside, &objects).unwrap();
    assert!(matches!(output.status.code(), Some(c) if c != 0));
    let stderr = err(&output);
    assert!(
        stderr.contains(&objects.display().to_string()),
        "the error names the object folder: {stderr}"
    );
    unchanged(dir, &store, &state, "object folder not writable");
    if let Some(_read_only) = Mount::read_only_bind(&objects) {
        // A read-only mount stops root too.
        let output = run(
            dir,
            &store,
            &["train", "exp.toml", "--set", "train.seed=12"],
        );
        assert!(matches!(output.status.code(), Some(c) if c != 0));
        let stderr = err(&output);
        assert!(
            stderr.contains(&objects.display().to_string())
                && stderr.contains("Read-only file system"),
            "{stderr}"
        );
        // Reading a store whose objects cannot be written still works.
        ok(dir, &store, &["show", "first"]);
        ok(dir, &store, &["metrics", "first", "--json"]);
    } else {
        eprintln!("note: cannot bind-mount the object folder read-only here; only the folder-replaced-by-a-file case was tried");
    }
    unchanged(dir, &store, &state, "read-only object folder (mount)");
    if unsafe_is_root() {
        eprintln!("note: running as root, so a chmod-read-only object folder cannot be tried (root ignores it)");
    } else {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            |m| std::fs::set_permissions(&objects, std::fs::Permissions::from_mode(m)).unwrap();
        mode(0o555);
        let output = run(
            dir,
            &store,
            &["train", "exp.toml", "--set", "train.seed=12"],
        );
        mode(0o755);
        assert!(!output.status.success());
        assert!(
            err(&output).contains(&objects.display().to_string()),
            "{}",
            err(&output)
        );
        unchanged(dir, &store, &state, "read-only object folder");
    }
}

fn unsafe_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A disk that fills while a checkpoint is written, simulated at the two
/// places a checkpoint goes: the object files and the journal. The run
/// stops with an error naming the file, the store verifies, and `resume`
/// (with room again) ends exactly where an uninterrupted run ends.
#[test]
fn a_disk_that_fills_during_a_checkpoint_leaves_a_resumable_store() {
    let work = workspace(16, 5);
    let dir = work.path();
    let reference = json(&ok(
        dir,
        &dir.join("reference"),
        &["train", "exp.toml", "-q", "--json"],
    ));
    let run_id = reference["run"].as_str().unwrap().to_string();
    let final_id = reference["checkpoints"].as_array().unwrap().last().unwrap()["id"].clone();

    for (hook, value, names) in [
        // Objects: the plan writes 5 (model files, data), each checkpoint ~90.
        ("GRAFT_FAIL_OBJECT_WRITES_AFTER", "150", "objects"),
        // Journal: metrics and two checkpoint frames fit, the third does not.
        ("GRAFT_FAIL_JOURNAL_AFTER_BYTES", "24000", "journal"),
    ] {
        let store = dir.join(format!("store-{names}"));
        let output = command(dir, &store, &["train", "exp.toml", "-q"])
            .env(hook, value)
            .output()
            .unwrap();
        let stderr = err(&output);
        assert!(
            matches!(output.status.code(), Some(c) if c != 0),
            "{hook}: {stderr}"
        );
        assert!(
            stderr.contains("no space left on device")
                && stderr.contains(&store.join(names).display().to_string()),
            "{hook}: the error names the file that could not be written:\n{stderr}"
        );
        verify_clean(dir, &store);
        let log = json(&ok(dir, &store, &["log", "--json"]));
        let status = log[0]["status"].as_str().unwrap();
        assert!(
            status == "failed" || status == "interrupted",
            "{hook}: {status}"
        );
        let shown = json(&ok(dir, &store, &["show", &run_id, "--json"]));
        let recorded = shown["checkpoints"].as_array().unwrap().len();
        assert!(
            (1..4).contains(&recorded),
            "{hook}: the checkpoints before the full disk are kept ({recorded})"
        );
        let resumed = json(&ok(dir, &store, &["resume", &run_id, "-q", "--json"]));
        assert_eq!(
            resumed["checkpoints"].as_array().unwrap().last().unwrap()["id"],
            final_id,
            "{hook}"
        );
        let loss = series(dir, &store, &run_id).remove("loss").unwrap();
        assert_eq!(
            loss.iter().map(|p| p.0).collect::<Vec<_>>(),
            (1..=16).collect::<Vec<_>>(),
            "{hook}"
        );
        ok(dir, &store, &["gc", "--grace", "0"]);
        verify_clean(dir, &store);
    }
}

/// Unmounts a test filesystem when dropped (also when the test fails).
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(path: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Mount(path.to_path_buf()))
    }

    /// `path` bind-mounted onto itself, read-only.
    fn read_only_bind(path: &Path) -> Option<Mount> {
        let mount = |args: &[&str]| {
            std::process::Command::new("mount")
                .args(args)
                .arg(path)
                .arg(path)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !mount(&["--bind"]) {
            return None;
        }
        let guard = Mount(path.to_path_buf());
        let remounted = std::process::Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        remounted.then_some(guard)
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A real full disk: the store lives on a small tmpfs that fills while the
/// run writes checkpoints. Commands run on the full disk fail with an error
/// (no panic); once there is room again the store opens, verifies, and the
/// run resumes to the uninterrupted run's last checkpoint. Skipped (with a
/// note) where tmpfs cannot be mounted.
#[test]
fn a_real_full_disk_loses_nothing_once_there_is_room_again() {
    let work = workspace(16, 5);
    let dir = work.path();
    let reference = json(&ok(
        dir,
        &dir.join("reference"),
        &["train", "exp.toml", "-q", "--json"],
    ));
    let run_id = reference["run"].as_str().unwrap().to_string();
    let final_id = reference["checkpoints"].as_array().unwrap().last().unwrap()["id"].clone();

    // The index (sled preallocates 512 KiB), model files and data fit; the
    // checkpoints (about 90 small objects each) soon do not.
    for (attempt, size) in ["1600k", "2000k", "1300k", "2600k", "3200k", "1100k"]
        .iter()
        .enumerate()
    {
        let store = dir.join(format!("full-{attempt}"));
        let Some(mount) = Mount::tmpfs(&store, size) else {
            eprintln!("note: cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN): the real full disk is not tried; the simulated one is");
            return;
        };
        let output = run(dir, &store, &["train", "exp.toml", "-q"]);
        let stderr = err(&output);
        if output.status.success() {
            continue;
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains("No space left on device"), "{stderr}");
        // While the disk is full, commands fail cleanly (or succeed).
        for args in [
            vec!["log", "--json"],
            vec!["verify"],
            vec!["resume", &run_id, "-q"],
        ] {
            let output = run(dir, &store, &args);
            assert!(
                output.status.code().is_some() && !err(&output).contains("panicked"),
                "{args:?}: {}",
                err(&output)
            );
        }
        mount.resize("64m");
        let log = json(&ok(dir, &store, &["log", "--json"]));
        let Some(entry) = log
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == run_id.as_str())
        else {
            // The disk filled before the run was registered: try more room.
            drop(mount);
            continue;
        };
        let status = entry["status"].as_str().unwrap().to_string();
        assert!(status == "failed" || status == "interrupted", "{status}");
        verify_clean(dir, &store);
        let resumed = json(&ok(dir, &store, &["resume", &run_id, "-q", "--json"]));
        assert_eq!(
            resumed["checkpoints"].as_array().unwrap().last().unwrap()["id"],
            final_id
        );
        let loss = series(dir, &store, &run_id).remove("loss").unwrap();
        assert_eq!(
            loss.iter().map(|p| p.0).collect::<Vec<_>>(),
            (1..=16).collect::<Vec<_>>()
        );
        ok(dir, &store, &["gc", "--grace", "0"]);
        verify_clean(dir, &store);
        eprintln!(
            "a {size} disk filled during the run ({}); resumed to the same last checkpoint",
            stderr.trim()
        );
        return;
    }
    panic!("no disk size made the run fail after it began");
}

/// A journal append that a full disk cuts short must not hide what is
/// appended after it once there is room again: the torn frame is cut off.
#[test]
fn a_journal_write_cut_short_by_a_full_disk_hides_nothing_after_it() {
    use graft::store::journal::{decode_frames, JournalEntry, JournalWriter, MetricPoint};
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let Some(_mount) = Mount::tmpfs(&root, "64k") else {
        eprintln!("note: cannot mount a tmpfs here: the torn journal write is not tried");
        return;
    };
    let points = |steps: std::ops::Range<u64>| {
        JournalEntry::Metrics(
            steps
                .map(|step| MetricPoint {
                    step,
                    series: "loss".into(),
                    value: step as f64,
                })
                .collect(),
        )
    };
    let mut writer = JournalWriter::create(&root, &graft::store::Id([7; 32]), 1).unwrap();
    writer.append(&[points(1..2)]).unwrap();
    // Fill the disk: the journal's last page still has room for part of a
    // large frame, not all of it.
    let filler_path = root.join("filler");
    let mut filler = std::fs::File::create(&filler_path).unwrap();
    while filler.write_all(&[0u8; 4096]).is_ok() {}
    drop(filler);
    let error = writer.append(&[points(2..2000)]).unwrap_err().to_string();
    assert!(error.contains("No space left on device"), "{error}");
    std::fs::remove_file(&filler_path).unwrap();
    writer.append(&[points(2..3)]).unwrap();
    let frames = decode_frames(&std::fs::read(writer.path()).unwrap());
    assert_eq!(
        frames
            .iter()
            .map(|(entry, _)| entry.clone())
            .collect::<Vec<_>>(),
        vec![points(1..2), points(2..3)]
    );
}
