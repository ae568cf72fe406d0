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

numeric_id! {
    /// One relay a worker links to, as the worker's session counts them; its
    /// link may close and reopen under the same id.
    LinkId
}

/// A request's id as it travels on a link: a number from this relay, any text from another.
///
/// Existing relays may use ids such as `"req-42"`; a worker echoes whatever it is
/// given. Text that is a canonical decimal number reads as a number, so ids
/// round-trip exactly.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WireRequestId {
    /// An id this relay issued.
    Number(u64),
    /// Any other id.
    Text(Arc<str>),
}

impl WireRequestId {
    /// This relay's id, if the wire id is one of its numbers.
    pub fn as_request_id(&self) -> Option<RequestId> {
        match self {
            Self::Number(n) => Some(RequestId::new(*n)),
            Self::Text(_) => None,
        }
    }

    fn from_text(text: &str) -> Self {
        match text.parse::<u64>() {
            Ok(n) if n.to_string() == text => Self::Number(n),
            _ => Self::Text(Arc::from(text)),
        }
    }
}

impl From<RequestId> for WireRequestId {
    fn from(id: RequestId) -> Self {
        Self::Number(id.get())
    }
}

impl From<&str> for WireRequestId {
    fn from(text: &str) -> Self {
        Self::from_text(text)
    }
}

impl fmt::Debug for WireRequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for WireRequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Text(text) => f.write_str(text),
        }
    }
}

/// How a [`WireRequestId`] travels in binary (v2) frames.
#[derive(Serialize, Deserialize)]
enum BinaryRequestId<'a> {
    Number(u64),
    Text(#[serde(borrow)] std::borrow::Cow<'a, str>),
}

impl Serialize for WireRequestId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            match self {
                Self::Number(n) => BinaryRequestId::Number(*n),
                Self::Text(text) => BinaryRequestId::Text(std::borrow::Cow::Borrowed(text)),
            }
            .serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for WireRequestId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
            Ok(Self::from_text(&text))
        } else {
            Ok(match BinaryRequestId::deserialize(deserializer)? {
                BinaryRequestId::Number(n) => Self::Number(n),
                BinaryRequestId::Text(text) => Self::Text(Arc::from(&*text)),
            })
        }
    }
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
    /// A provider: the pool a worker joins (`?provider=` at connect; [`DEFAULT_PROVIDER`] by default).
    ProviderId
}

/// The provider a worker joins, and a relay serves, unless told otherwise.
pub const DEFAULT_PROVIDER: &str = "local";

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
    fn wire_request_ids_are_numbers_when_ours_and_text_otherwise() {
        let ours: WireRequestId = serde_json::from_str("\"42\"").unwrap();
        assert_eq!(ours, WireRequestId::Number(42));
        assert_eq!(ours.as_request_id(), Some(RequestId::new(42)));
        for text in ["req-42", "007", "", "18446744073709551616"] {
            let id: WireRequestId = serde_json::from_str(&format!("{text:?}")).unwrap();
            assert_eq!(id, WireRequestId::Text(Arc::from(text)), "{text}");
            assert_eq!(id.as_request_id(), None);
            assert_eq!(serde_json::to_string(&id).unwrap(), format!("{text:?}"));
            let binary = postcard::to_allocvec(&id).unwrap();
            assert_eq!(postcard::from_bytes::<WireRequestId>(&binary).unwrap(), id);
        }
        let binary = postcard::to_allocvec(&WireRequestId::Number(300)).unwrap();
        assert_eq!(binary, vec![0, 0xac, 0x02]);
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
