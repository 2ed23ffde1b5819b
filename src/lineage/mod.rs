//! Read-only queries over the run DAG: ancestors, descendants, common
//! ancestors, recipe diffs, and the `--where` query language.

pub mod ancestry;
pub mod diff;
pub mod forgetting;
pub mod query;
pub mod select;
pub mod summary;

pub use ancestry::{ancestors, children_map, common_ancestor, descendants};
pub use diff::{diff_report, recipe_diff, recipes_diff, KeyChange};
pub use forgetting::{forgetting_of, Forgetting};
pub use query::{Query, QueryError};
pub use select::{known_keys, SelectError, Selection};
pub use summary::{tags_by_target, RunSummary};
