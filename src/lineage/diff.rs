//! Recipe diffs: only the keys that changed.

use crate::store::{Canon, Recipe};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct KeyChange {
    pub key: String,
    pub left: Option<String>,
    pub right: Option<String>,
}

/// Flatten both recipes to dotted keys and list those that differ.
pub fn recipe_diff(left: &Recipe, right: &Recipe) -> Vec<KeyChange> {
    let flat = |recipe: &Recipe| -> BTreeMap<String, Canon> {
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
    };
    let (a, b) = (flat(left), flat(right));
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
