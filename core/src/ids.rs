//! Typed identifiers used throughout the core: workers, requests, providers, models.

use std::borrow::Borrow;
use std::fmt;
use std::num::ParseIntError;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! numeric_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a raw number chosen by the driver that allocates ids.
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }

            /// The raw number behind the id.
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = ParseIntError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }

        // Text formats (v1 JSON) carry ids as decimal strings, as existing
        // workers expect; binary formats (v2) carry them as varints.
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.collect_str(&self.0)
                } else {
                    serializer.serialize_u64(self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                if deserializer.is_human_readable() {
                    let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                    text.parse().map_err(|_| {
                        serde::de::Error::custom(format_args!(
                            concat!("invalid ", stringify!($name), " {:?}"),
                            text
                        ))
                    })
                } else {
                    u64::deserialize(deserializer).map(Self)
                }
            }
        }
    };
}

numeric_id! {
    /// One worker link, from connect to close; a reconnecting worker gets a new one.
    WorkerId
}

numeric_id! {
    /// One client request, from arrival to its single end.
    RequestId
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps a name.
            pub fn new(name: &str) -> Self {
                Self(Arc::from(name))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(name: &str) -> Self {
                Self::new(name)
            }
        }

        impl From<String> for $name {
            fn from(name: String) -> Self {
                Self(Arc::from(name))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                <std::borrow::Cow<'de, str>>::deserialize(deserializer).map(|s| Self::new(&s))
            }
        }
    };
}

name_id! {
    /// A provider: the pool a worker joins (`?provider=` at connect; `local` by default).
    ProviderId
}

name_id! {
    /// A model name exactly as workers advertise it and clients ask for it.
    ModelName
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_decimal_strings_in_json_and_varints_in_postcard() {
        let id = RequestId::new(300);
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"300\"");
        assert_eq!(postcard::to_allocvec(&id).unwrap(), vec![0xac, 0x02]);
        let back: RequestId = serde_json::from_str("\"300\"").unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<RequestId>("\"abc\"").is_err());
    }

    #[test]
    fn model_names_compare_by_text() {
        let model = ModelName::new("llama-3");
        assert_eq!(model.as_str(), "llama-3");
        assert_eq!(serde_json::to_string(&model).unwrap(), "\"llama-3\"");
        let map: std::collections::HashMap<ModelName, u8> = [(model, 1)].into();
        assert_eq!(map.get("llama-3"), Some(&1));
    }
}
