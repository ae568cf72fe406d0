//! What differs between the text (v1) and binary (v2) encodings of one message type.
//!
//! The message types derive serde once. Two things depend on the encoding in
//! progress, and serde attributes cannot see it, so the codec records it here
//! for the duration of one encode or decode call:
//! - v1 JSON omits absent optional fields; postcard is not self-describing and
//!   must write every field.
//! - v2 payloads (`body`, `chunk`) decode as slices of the received frame
//!   instead of copies.

use std::cell::{Cell, RefCell};

use bytes::Bytes;
use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;

thread_local! {
    static OMIT_ABSENT: Cell<bool> = const { Cell::new(false) };
    static SOURCE_FRAME: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `f` with absent optional fields omitted (the v1 JSON rule).
pub(crate) fn omitting_absent<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            OMIT_ABSENT.with(|flag| flag.set(self.0));
        }
    }
    let _reset = Reset(OMIT_ABSENT.with(|flag| flag.replace(true)));
    f()
}

/// Runs `f` with payload fields decoded as slices of `frame`.
pub(crate) fn slicing_from<T>(frame: &Bytes, f: impl FnOnce() -> T) -> T {
    struct Reset(Option<Bytes>);
    impl Drop for Reset {
        fn drop(&mut self) {
            SOURCE_FRAME.with(|source| *source.borrow_mut() = self.0.take());
        }
    }
    let previous = SOURCE_FRAME.with(|source| source.borrow_mut().replace(frame.clone()));
    let _reset = Reset(previous);
    f()
}

fn omit_absent() -> bool {
    OMIT_ABSENT.with(Cell::get)
}

/// `skip_serializing_if` for `Option` fields.
pub(crate) fn skip_none<T>(value: &Option<T>) -> bool {
    value.is_none() && omit_absent()
}

/// `skip_serializing_if` for list fields that are omitted when empty.
pub(crate) fn skip_empty_vec<T>(value: &[T]) -> bool {
    value.is_empty() && omit_absent()
}

/// `skip_serializing_if` for payload fields that are omitted when empty.
pub(crate) fn skip_empty_bytes(value: &Bytes) -> bool {
    value.is_empty() && omit_absent()
}

/// `skip_serializing_if` for header maps that are omitted when empty.
pub(crate) fn skip_empty_headers(value: &super::Headers) -> bool {
    value.is_empty() && omit_absent()
}

/// Serde for payload fields: a string in text formats, raw bytes in binary ones.
pub(crate) mod payload {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        value: &Bytes,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            let text = std::str::from_utf8(value).map_err(|_| {
                serde::ser::Error::custom(
                    "payload is not UTF-8 and cannot travel in a v1 text frame",
                )
            })?;
            serializer.serialize_str(text)
        } else {
            serializer.serialize_bytes(value)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Bytes, D::Error> {
        if deserializer.is_human_readable() {
            // `any`, so that an explicit JSON `null` reads as an empty payload.
            deserializer.deserialize_any(PayloadVisitor)
        } else {
            deserializer.deserialize_bytes(PayloadVisitor)
        }
    }

    struct PayloadVisitor;

    impl<'de> Visitor<'de> for PayloadVisitor {
        type Value = Bytes;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a payload (string or bytes)")
        }

        fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
            Ok(slice_of_source(v).unwrap_or_else(|| Bytes::copy_from_slice(v)))
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v))
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v.as_bytes()))
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }

        fn visit_unit<E: de::Error>(self) -> Result<Bytes, E> {
            Ok(Bytes::new())
        }
    }

    /// The part of the frame being decoded that `v` points into, without copying.
    fn slice_of_source(v: &[u8]) -> Option<Bytes> {
        SOURCE_FRAME.with(|source| {
            let source = source.borrow();
            let frame = source.as_ref()?;
            let start = frame.as_ptr() as usize;
            let end = start + frame.len();
            let v_start = v.as_ptr() as usize;
            (v_start >= start && v_start + v.len() <= end).then(|| frame.slice_ref(v))
        })
    }
}
