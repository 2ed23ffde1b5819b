//! `compute.devices`: which GPUs of the machine train one run. `devices = 2` means the
//! first two, `devices = [1, 3]` those two; every device gets an equal share of each
//! batch (see `crate::train::parallel`). It is an execution option, not a recipe key:
//! the global batch and the data order are the same on any number of devices, so the
//! run is the same run, computed with another summation order.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The most devices one run can name (device indices are below this).
pub const MAX_DEVICES: usize = 16;

/// A set of device indices, kept as a bit mask so that the compute value stays `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Devices(u16);

impl Devices {
    /// The first `count` devices.
    pub fn first(count: usize) -> Result<Devices, String> {
        if count == 0 || count > MAX_DEVICES {
            return Err(format!(
                "compute.devices = {count}: name between 1 and {MAX_DEVICES} devices"
            ));
        }
        Ok(Devices((((1u32 << count) - 1) & 0xffff) as u16))
    }

    /// Exactly the devices `indices` names, each once.
    pub fn list(indices: &[usize]) -> Result<Devices, String> {
        let mut mask = 0u16;
        for &index in indices {
            if index >= MAX_DEVICES {
                return Err(format!(
                    "compute.devices: device {index} is out of range (0..{MAX_DEVICES})"
                ));
            }
            if mask & (1 << index) != 0 {
                return Err(format!("compute.devices: device {index} is named twice"));
            }
            mask |= 1 << index;
        }
        if mask == 0 {
            return Err("compute.devices = []: name at least one device".into());
        }
        Ok(Devices(mask))
    }

    /// The device indices, in increasing order.
    pub fn indices(self) -> Vec<usize> {
        (0..MAX_DEVICES)
            .filter(|i| self.0 & (1 << i) != 0)
            .collect()
    }

    pub fn count(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether this is the first `count()` devices (written as a number).
    fn is_prefix(self) -> bool {
        self.0 & self.0.wrapping_add(1) == 0
    }
}

impl Default for Devices {
    fn default() -> Self {
        Devices(1)
    }
}

impl fmt::Debug for Devices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self)
    }
}

impl fmt::Display for Devices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_prefix() {
            write!(f, "{}", self.count())
        } else {
            write!(f, "{:?}", self.indices())
        }
    }
}

impl Serialize for Devices {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.is_prefix() {
            serializer.serialize_u64(self.count() as u64)
        } else {
            let indices = self.indices();
            let mut seq = serializer.serialize_seq(Some(indices.len()))?;
            for index in indices {
                seq.serialize_element(&(index as u64))?;
            }
            seq.end()
        }
    }
}

impl<'de> Deserialize<'de> for Devices {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DevicesVisitor;
        impl<'de> Visitor<'de> for DevicesVisitor {
            type Value = Devices;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of devices (2) or a list of device indices ([0, 1])")
            }
            fn visit_u64<E: de::Error>(self, count: u64) -> Result<Devices, E> {
                Devices::first(count as usize).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, count: i64) -> Result<Devices, E> {
                if count < 1 {
                    return Err(E::custom(format!(
                        "compute.devices = {count}: name at least one device"
                    )));
                }
                self.visit_u64(count as u64)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Devices, A::Error> {
                let mut indices = Vec::new();
                while let Some(index) = seq.next_element::<u64>()? {
                    indices.push(index as usize);
                }
                Devices::list(&indices).map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_any(DevicesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Serialize)]
    struct Section {
        devices: Devices,
    }

    fn parse(text: &str) -> Result<Devices, String> {
        toml::from_str::<Section>(text)
            .map(|s| s.devices)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn counts_and_lists_read_and_write_back() {
        assert_eq!(parse("devices = 2").unwrap().indices(), [0, 1]);
        assert_eq!(parse("devices = [3, 1]").unwrap().indices(), [1, 3]);
        // A list of the first devices is the same set as their count, and says so.
        assert_eq!(
            parse("devices = [1, 0]").unwrap(),
            parse("devices = 2").unwrap()
        );
        let json = |d: Devices| serde_json::to_string(&Section { devices: d }).unwrap();
        assert_eq!(json(parse("devices = [0, 1]").unwrap()), r#"{"devices":2}"#);
        assert_eq!(
            json(parse("devices = [2, 5]").unwrap()),
            r#"{"devices":[2,5]}"#
        );
        assert_eq!(Devices::default().count(), 1);
    }

    #[test]
    fn bad_device_sets_are_refused_naming_the_key() {
        for text in [
            "devices = 0",
            "devices = []",
            "devices = [1, 1]",
            "devices = 17",
            "devices = -1",
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains("compute.devices"), "{text}: {error}");
        }
    }
}
