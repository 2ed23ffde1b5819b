//! experiments/REFERENCE.md lists every key of an experiment file, and nothing else:
//! the keys are read from the config types themselves (a fully populated experiment,
//! serialized), so the reference cannot drift from what graft accepts.

use std::collections::BTreeSet;
use std::path::Path;

/// Every dotted key of `value`; arrays of tables as `key[].field`.
fn keys(prefix: &str, value: &serde_json::Value, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (name, child) in map {
                let key = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                match child {
                    serde_json::Value::Object(_) => keys(&key, child, out),
                    serde_json::Value::Array(items)
                        if items.iter().all(|i| i.is_object()) && !items.is_empty() =>
                    {
                        keys(&format!("{key}[]"), &items[0], out)
                    }
                    _ => {
                        out.insert(key);
                    }
                }
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

#[test]
fn the_experiment_reference_lists_every_key_graft_accepts_and_no_other() {
    // Every optional section present, so each key appears once.
    let adapter =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/llama-tiny/lora-adapter");
    let full = format!(
        r#"
[model]
base = "m"

[adapter]
from = "{}"

[unfreeze]
schedule = [{{ at = 0, layers = "none" }}]

[data]
train = [{{ path = "t.jsonl" }}]
eval = [{{ path = "e.jsonl" }}]
replay = {{ ratio = 0.1 }}
eval_ancestors = true

[optim]
embedding_lr = 1e-5

[train]
forgetting_budget = 0.05
stop_on_forgetting = true
early_stop_patience = 2
"#,
        adapter.display()
    );
    let experiment = graft::train::Experiment::parse(&full, Path::new("full.toml"), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut accepted = BTreeSet::new();
    keys(
        "",
        &serde_json::to_value(&experiment).unwrap(),
        &mut accepted,
    );
    let reference = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/REFERENCE.md"),
    )
    .unwrap();
    let documented: BTreeSet<String> = reference
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_string)
        .collect();
    let missing: Vec<_> = accepted.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&accepted).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "experiments/REFERENCE.md is out of date: missing {missing:?}, not accepted {unknown:?}"
    );
}
