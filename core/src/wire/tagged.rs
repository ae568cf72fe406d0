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
//! Measured (release build, this machine, 2 cores) against the derive:
//! an 811-byte `register` 4.1 µs with `type` first and 6.5 µs with it last,
//! where the derive took 7.7 and 8.9 µs; a 73 KB `response_chunk` full of
//! escapes 404 and 474 µs, where the derive took 373 and 319 µs (the whole-frame
//! UTF-8 check below and, with `type` last, the first pass's scan of the chunk).
//! Neither costs memory beyond the decoded message: no tree, and no copy of the
//! frame (`serde_json::value::RawValue` would need serde_json's `raw_value`
//! feature, which the core does not enable, and buys nothing here).
//!
//! Decoding results are the derive's: same fields, same defaults, same errors
//! for a missing or repeated `type` and for unknown types, and every frame the
//! derive accepted is accepted (`core/tests/bounded_decoding.rs` compares the
//! two on mutated frames). Two differences, both at the edges of JSON:
//! - serde also accepted a JSON array (`["pong", 3]`) for an internally tagged
//!   enum; v1 frames are objects (PROTOCOL.md), and an array is refused.
//! - the value of an unknown field is skipped unread, as serde_json does for any
//!   struct, where serde's buffering decoded it: a number past `f64`'s range or
//!   a lone surrogate escape there no longer fails the frame.

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
    fn body_from_json(tag: Self::Tag, frame: &str) -> Result<Self, serde_json::Error>;
}

/// Decodes a v1 frame: in one pass when `type` comes first, else in two.
pub(crate) fn decode_v1<M>(frame: &[u8]) -> Result<M, serde_json::Error>
where
    M: Tagged + DeserializeOwned,
{
    // serde_json skips ignored strings without checking their UTF-8, and serde's
    // buffering parsed (so checked) every string: check the whole frame once, as
    // WebSocket text frames are anyway, so a frame not UTF-8 is still refused.
    let text = std::str::from_utf8(frame)
        .map_err(|e| de::Error::custom(format_args!("frame is not UTF-8: {e}")))?;
    if type_comes_first(frame) {
        serde_json::from_str(text)
    } else {
        let TagOnly { tag } = serde_json::from_str::<TagOnly<M::Tag>>(text)?;
        M::body_from_json(tag, text)
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

            fn body_from_json(tag: $tag, frame: &str) -> Result<Self, serde_json::Error> {
                match tag {
                    $($tag::$variant => serde_json::from_str::<$body>(frame).map(Self::$variant),)*
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
