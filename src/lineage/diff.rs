//! Recipe diffs: only the keys that changed; and the whole `graft diff`
//! report (recipes, metrics side by side), which the UI serves as well.

use super::summary::RunSummary;
use crate::store::{Canon, Id, Recipe};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct KeyChange {
    pub key: String,
    pub left: Option<String>,
    pub right: Option<String>,
}

/// A recipe as dotted keys: its config, the recipe fields, one key per dataset.
pub fn recipe_flat(recipe: &Recipe) -> BTreeMap<String, Canon> {
    let mut map = recipe.config.flatten();
    map.insert("recipe.base_model".into(), Canon::from(recipe.base_model));
    map.insert(
        "recipe.start_checkpoint".into(),
        Canon::from(recipe.start_checkpoint),
    );
    map.insert("recipe.seed".into(), Canon::from(recipe.seed));
    map.insert(
        "recipe.graft_version".into(),
        Canon::from(recipe.graft_version.as_str()),
    );
    for dataset in &recipe.datasets {
        map.insert(
            format!("datasets.{}.{}", dataset.role, dataset.name),
            Canon::from(format!(
                "{} (weight {})",
                dataset.dataset.short(),
                dataset.weight
            )),
        );
    }
    map
}

/// Flatten both recipes to dotted keys and list those that differ.
pub fn recipe_diff(left: &Recipe, right: &Recipe) -> Vec<KeyChange> {
    let (a, b) = (recipe_flat(left), recipe_flat(right));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| KeyChange {
            key: k.clone(),
            left: a.get(k).map(|v| v.to_string()),
            right: b.get(k).map(|v| v.to_string()),
        })
        .collect()
}

/// The keys on which any of several recipes differ, each with every
/// recipe's value (None where a recipe lacks the key), in key order.
pub fn recipes_diff(recipes: &[&Recipe]) -> Vec<(String, Vec<Option<String>>)> {
    let flat: Vec<BTreeMap<String, Canon>> = recipes.iter().map(|r| recipe_flat(r)).collect();
    let keys: BTreeSet<&String> = flat.iter().flat_map(|m| m.keys()).collect();
    keys.into_iter()
        .filter(|key| {
            flat.windows(2)
                .any(|pair| pair[0].get(*key) != pair[1].get(*key))
        })
        .map(|key| {
            let values = flat
                .iter()
                .map(|m| m.get(key).map(Canon::to_string))
                .collect();
            (key.clone(), values)
        })
        .collect()
}

/// What `graft diff --json` prints: changed recipe keys, the common
/// ancestor, and each series' best and last values side by side.
pub fn diff_report(left: &RunSummary, right: &RunSummary, common: Option<Id>) -> serde_json::Value {
    let changes = recipe_diff(&left.run.recipe, &right.run.recipe);
    let series: BTreeSet<&String> = left.series.keys().chain(right.series.keys()).collect();
    let metrics: Vec<_> = series
        .iter()
        .map(|name| {
            let (x, y) = (left.best(name), right.best(name));
            let last = |s: &RunSummary| s.series.get(*name).map(|v| v.last);
            let (p, q) = (last(left), last(right));
            serde_json::json!({
                "series": name,
                "left": x, "right": y, "delta": x.zip(y).map(|(x, y)| y - x),
                "left_last": p, "right_last": q, "delta_last": p.zip(q).map(|(p, q)| q - p),
            })
        })
        .collect();
    serde_json::json!({
        "left": left.run.id.to_hex(), "right": right.run.id.to_hex(),
        "common_ancestor": common.map(|c| c.to_hex()),
        "changes": changes, "metrics": metrics,
    })
}
