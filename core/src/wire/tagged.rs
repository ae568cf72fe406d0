//! Decoding the message enums from v1 JSON without serde's internally tagged buffering.
//!
//! `#[serde(tag = "type")]` cannot know the variant until it has seen `type`,
//! which may come last, so serde first reads the whole object into a tree of
//! `Content` values (one 32-byte node per JSON value, whatever the value's own
//! size) and only then deserializes the variant from that tree. A frame of
//! small values, known fields or unknown ones, so costs many times its size
//! before any of our ceilings can look at it.
//!
//! Here the variant's own struct reads the object directly:
//! - when `type` is the first key (what our encoder, serde's and every known v1
//!   sender write), in one pass: the tag is read, then the rest of the same map
//!   goes straight to the variant's derived `Deserialize`;
//! - otherwise ([`decode_v1`] only), in two passes over the frame: the first
//!   reads `type` and skips every other value without keeping it (serde_json's
//!   skipping allocates one byte per open bracket at most), the second reads the
//!   variant's struct from the whole frame, where `type` is just a field it ignores.
//!
//! Measured on a 1 KiB `register` (release build, this machine): serde's
//! internally tagged derive 2.3 µs, one pass 1.4 µs, two passes 2.0 µs; on a
//! 64 KiB `response_chunk` the one pass costs what the derive did, the two passes
//! about 1.3× (the skip is a scan for the closing quote). The two passes cost no
//! memory beyond the body itself, and `serde_json::value::RawValue` is not
//! needed (the core does not enable serde_json's `raw_value`).
//!
//! Decoding results are the derive's: same fields, same defaults, same errors
//! for a missing or repeated `type` and for unknown types. One difference: serde
//! also accepted a JSON array (`["pong", 3]`) for an internally tagged enum;
//! v1 frames are objects (PROTOCOL.md), and an array is refused.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{BorrowedStrDeserializer, MapAccessDeserializer, StrDeserializer};
use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, de::IntoDeserializer};

/// The key that names a message's variant.
const TAG: &str = "type";

/// A message enum whose variant is named by its `type` field.
pub(crate) trait Tagged: Sized {
    /// The variant names, as a unit-only enum.
    type Tag: DeserializeOwned;
    /// What the visitor expects, for error messages.
    const EXPECTING: &'static str;
    /// Reads the variant `tag` from the rest of an object whose `type` was read.
    fn body<'de, A: MapAccess<'de>>(tag: Self::Tag, rest: A) -> Result<Self, A::Error>;
    /// Reads the variant `tag` from a whole JSON frame.
    fn body_from_json(tag: Self::Tag, frame: &[u8]) -> Result<Self, serde_json::Error>;
}

/// Decodes a v1 frame: in one pass when `type` comes first, else in two.
pub(crate) fn decode_v1<M>(frame: &[u8]) -> Result<M, serde_json::Error>
where
    M: Tagged + DeserializeOwned,
{
    if type_comes_first(frame) {
        serde_json::from_slice(frame)
    } else {
        let TagOnly { tag } = serde_json::from_slice::<TagOnly<M::Tag>>(frame)?;
        M::body_from_json(tag, frame)
    }
}

/// The first pass: `type`, every other field skipped unread.
#[derive(Deserialize)]
struct TagOnly<T> {
    #[serde(rename = "type")]
    tag: T,
}

/// Whether `frame` is an object whose first key is `"type"`, written without escapes.
fn type_comes_first(frame: &[u8]) -> bool {
    fn skip_space(bytes: &[u8]) -> &[u8] {
        let start = bytes
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            .unwrap_or(bytes.len());
        &bytes[start..]
    }
    let Some(rest) = skip_space(frame).strip_prefix(b"{") else {
        return false;
    };
    let Some(rest) = skip_space(rest).strip_prefix(b"\"type\"") else {
        return false;
    };
    skip_space(rest).starts_with(b":")
}

/// Reads a message enum from a map that starts with `type`.
pub(crate) struct MessageVisitor<M>(pub(crate) PhantomData<fn() -> M>);

impl<'de, M: Tagged> Visitor<'de> for MessageVisitor<M> {
    type Value = M;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(M::EXPECTING)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<M, A::Error> {
        match map.next_key_seed(IsTag)? {
            None => Err(de::Error::missing_field(TAG)),
            Some(true) => {
                let tag = map.next_value::<M::Tag>()?;
                M::body(tag, RestOfMap(map))
            }
            // Buffering the fields before `type` is what this module avoids;
            // `WireVersion::decode` reads such frames in two passes instead.
            Some(false) => Err(de::Error::custom(
                "`type` must be the first field here (WireVersion::decode accepts it anywhere)",
            )),
        }
    }
}

/// A map key, read only to tell whether it is `type`.
struct IsTag;

impl<'de> DeserializeSeed<'de> for IsTag {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl Visitor<'_> for IsTag {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == TAG)
    }

    fn visit_bytes<E: de::Error>(self, key: &[u8]) -> Result<bool, E> {
        Ok(key == TAG.as_bytes())
    }
}

/// The fields after `type`, for the variant's struct; a second `type` is an
/// error, as it was with serde's internally tagged enums.
struct RestOfMap<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for RestOfMap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(NotTagAgain(seed))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.0.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

/// A key of the variant's struct, refused if it is `type` again.
struct NotTagAgain<K>(K);

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for NotTagAgain<K> {
    type Value = K::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<K::Value, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl<'de, K: DeserializeSeed<'de>> Visitor<'de> for NotTagAgain<K> {
    type Value = K::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<K::Value, E> {
        if key == TAG {
            return Err(E::duplicate_field(TAG));
        }
        self.0.deserialize(BorrowedStrDeserializer::new(key))
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<K::Value, E> {
        if key == TAG {
            return Err(E::duplicate_field(TAG));
        }
        self.0.deserialize(StrDeserializer::new(key))
    }

    fn visit_string<E: de::Error>(self, key: String) -> Result<K::Value, E> {
        if key == TAG {
            return Err(E::duplicate_field(TAG));
        }
        self.0.deserialize(key.into_deserializer())
    }
}

/// The variant's struct read from the rest of the map.
pub(crate) fn rest_of_map<'de, A, T>(rest: A) -> Result<T, A::Error>
where
    A: MapAccess<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(MapAccessDeserializer::new(RestOfMap(rest)))
}

/// Implements `Deserialize` and [`Tagged`] for a message enum of newtype variants.
macro_rules! tagged_by_type {
    ($message:ident, $tag:ident, $expecting:literal { $($variant:ident($body:ty)),* $(,)? }) => {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub(crate) enum $tag {
            $($variant,)*
        }

        impl $crate::wire::tagged::Tagged for $message {
            type Tag = $tag;
            const EXPECTING: &'static str = $expecting;

            fn body<'de, A: serde::de::MapAccess<'de>>(
                tag: $tag,
                rest: A,
            ) -> Result<Self, A::Error> {
                match tag {
                    $($tag::$variant => $crate::wire::tagged::rest_of_map::<A, $body>(rest)
                        .map(Self::$variant),)*
                }
            }

            fn body_from_json(tag: $tag, frame: &[u8]) -> Result<Self, serde_json::Error> {
                match tag {
                    $($tag::$variant => serde_json::from_slice::<$body>(frame).map(Self::$variant),)*
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $message {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_map($crate::wire::tagged::MessageVisitor::<Self>(
                    std::marker::PhantomData,
                ))
            }
        }
    };
}

pub(crate) use tagged_by_type;
