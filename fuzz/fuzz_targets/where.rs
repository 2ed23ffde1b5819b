//! The `--where` language: parse, then evaluate what parses.
#![no_main]
use graft::lineage::query::{Query, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    match Query::parse(&text) {
        Ok(query) => {
            let lookup = |key: &str| match key {
                "optim.lr" => Some(Value::Number(1e-4)),
                "status" => Some(Value::Text("completed".into())),
                _ => None,
            };
            let _ = query.matches(&lookup);
        }
        Err(error) => assert!(error.column >= 1 && error.column <= text.chars().count() + 1),
    }
});
