//! Read-only queries over the run DAG: ancestors, descendants, diffs, and the
//! `--where` query language.
