//! `compute.keep_projections`: which adapted projections keep their outputs from a
//! layer-recompute step's first pass for the layer's rerun ([`super::kept_attention`]).
//!
//! A kept output saves its projection's base product in the rerun for the memory of
//! the output until the layer is rerun. The product's cost per byte kept is the
//! projection's input width, the output's size its output width: a gated MLP's gate
//! and up projections widen the stream 3.5 to 4 times (Llama 3: 8192 of 2048 on 1B,
//! 14336 of 4096 on 8B), so they hold most of what keeping all seven holds (at 32k
//! tokens on llama-1b, 16 of 23 GiB) for the same saving per byte as q, k, v and o,
//! while down, which narrows, saves the most per byte. `narrow` keeps the projections
//! that do not widen their input (in Llama-family models all but gate and up), a
//! middle point between memory and time.
//!
//! Written `false`, `true` (every projection) or `"narrow"` (the strings `"none"`,
//! `"all"`, `"false"` and `"true"` read too); records written before `"narrow"`
//! existed hold the booleans and read back unchanged.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which adapted projections' outputs a layer's first pass keeps for its rerun.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeepProjections {
    /// None: the rerun computes every base product again.
    #[default]
    None,
    /// Those whose output is no wider than their input (all but a gated MLP's gate
    /// and up projections).
    Narrow,
    /// Every adapted projection.
    All,
}

impl KeepProjections {
    /// Whether a projection from `in_features` to `out_features` keeps its output.
    pub fn keeps(self, in_features: usize, out_features: usize) -> bool {
        match self {
            KeepProjections::None => false,
            KeepProjections::Narrow => out_features <= in_features,
            KeepProjections::All => true,
        }
    }

    /// Whether any projection keeps its output.
    pub fn any(self) -> bool {
        self != KeepProjections::None
    }
}

impl std::str::FromStr for KeepProjections {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "false" | "none" => Ok(KeepProjections::None),
            "narrow" => Ok(KeepProjections::Narrow),
            "true" | "all" => Ok(KeepProjections::All),
            other => Err(format!(
                "`{other}` is not a choice: false (none), \"narrow\" (the projections that do not widen) or true (all)"
            )),
        }
    }
}

impl Serialize for KeepProjections {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            KeepProjections::None => serializer.serialize_bool(false),
            KeepProjections::Narrow => serializer.serialize_str("narrow"),
            KeepProjections::All => serializer.serialize_bool(true),
        }
    }
}

impl<'de> Deserialize<'de> for KeepProjections {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Written;
        impl serde::de::Visitor<'_> for Written {
            type Value = KeepProjections;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("false, true or \"narrow\"")
            }

            fn visit_bool<E: serde::de::Error>(self, keep: bool) -> Result<Self::Value, E> {
                Ok(if keep {
                    KeepProjections::All
                } else {
                    KeepProjections::None
                })
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Self::Value, E> {
                name.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_read_as_before_and_narrow_keeps_what_does_not_widen() {
        let read = |json: &str| serde_json::from_str::<KeepProjections>(json);
        assert_eq!(read("true").unwrap(), KeepProjections::All);
        assert_eq!(read("false").unwrap(), KeepProjections::None);
        assert_eq!(read("\"narrow\"").unwrap(), KeepProjections::Narrow);
        let refused = read("\"some\"").unwrap_err().to_string();
        assert!(
            refused.contains("`some`") && refused.contains("narrow"),
            "{refused}"
        );
        let refused = read("3").unwrap_err().to_string();
        assert!(refused.contains("false, true or \"narrow\""), "{refused}");
        for keep in [
            KeepProjections::None,
            KeepProjections::Narrow,
            KeepProjections::All,
        ] {
            let written = serde_json::to_string(&keep).unwrap();
            assert_eq!(read(&written).unwrap(), keep, "{written}");
        }
        assert_eq!(
            serde_json::to_string(&KeepProjections::All).unwrap(),
            "true"
        );
        // Llama-3.2-1B: q 2048 -> 2048, k and v -> 512, gate and up -> 8192, down back.
        let narrow = KeepProjections::Narrow;
        assert!(narrow.keeps(2048, 2048) && narrow.keeps(2048, 512) && narrow.keeps(8192, 2048));
        assert!(!narrow.keeps(2048, 8192));
        assert!(KeepProjections::All.keeps(2048, 8192) && !KeepProjections::None.keeps(8, 8));
    }
}
