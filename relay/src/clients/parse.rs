//! Reading an inference request: its body, and the two fields the relay needs from it.

use std::fmt;

use axum::body::Body;
use axum::http::StatusCode;
use bytes::Bytes;
use modelrelay_core::relay::MAX_MODEL_NAME_BYTES;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::codes;
use crate::error::ApiError;

use super::InferenceRoute;
use super::body::{BodyLimits, HeldBytes, read_body};

/// An inference request the relay can route.
pub(super) struct ParsedRequest {
    /// The body, passed to the worker untouched.
    pub(super) body: Bytes,
    /// The model it asks for.
    pub(super) model: String,
    /// Whether it asks for a streamed answer (on a route that can stream).
    pub(super) streaming: bool,
    /// The room its body holds in the budget of buffered request bytes.
    pub(super) held: HeldBytes,
}

/// The two fields the relay reads from a request body; the rest is skipped
/// unread (serde ignores unknown fields without building them) and passes
/// through untouched.
///
/// Neither field is read as a tree of arbitrary values: a `model` that is an
/// array or object stops the read at its first byte, so no body can make the
/// probe allocate more than the name it names (a tree of a 32 MB array of
/// zeros once cost about 16 bytes for each byte of the body).
#[derive(Deserialize)]
pub(super) struct Probe {
    #[serde(default)]
    model: ModelField,
    #[serde(default)]
    stream: StreamField,
}

/// What `model` held.
#[derive(Debug, Default, PartialEq, Eq)]
enum ModelField {
    /// No `model` key.
    #[default]
    Absent,
    /// A string of at most [`MAX_MODEL_NAME_BYTES`].
    Name(String),
    /// A longer string: refused without being copied.
    TooLong,
    /// `null`, a number or a boolean.
    NotAString,
}

/// What `stream` held.
#[derive(Debug, Default, PartialEq, Eq)]
enum StreamField {
    /// No `stream` key, or `null` (the APIs' default: not streamed).
    #[default]
    Absent,
    /// `true` or `false`.
    Flag(bool),
    /// A number or a string: lenient backends may stream on `1` or `"true"`.
    NotABool,
}

/// The read stopped at an array or object where `model` belongs (told apart
/// from other JSON errors by this message, which serde_json puts first).
const MODEL_IS_A_TREE: &str = "model is an array or object";
/// The read stopped at an array or object where `stream` belongs.
const STREAM_IS_A_TREE: &str = "stream is an array or object";

impl<'de> Deserialize<'de> for ModelField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor {
            tree: MODEL_IS_A_TREE,
            string: |text| {
                if text.len() > MAX_MODEL_NAME_BYTES {
                    ModelField::TooLong
                } else {
                    ModelField::Name(text.to_owned())
                }
            },
            boolean: |_| ModelField::NotAString,
            number: ModelField::NotAString,
            null: ModelField::NotAString,
        })
    }
}

impl<'de> Deserialize<'de> for StreamField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor {
            tree: STREAM_IS_A_TREE,
            string: |_| StreamField::NotABool,
            boolean: StreamField::Flag,
            number: StreamField::NotABool,
            null: StreamField::Absent,
        })
    }
}

/// Reads one JSON scalar into `T`; refuses an array or object at its first byte.
struct ScalarVisitor<T> {
    /// The error message for an array or object.
    tree: &'static str,
    /// What a string becomes.
    string: fn(&str) -> T,
    /// What a boolean becomes.
    boolean: fn(bool) -> T,
    /// What a number becomes.
    number: T,
    /// What `null` becomes.
    null: T,
}

impl<'de, T> Visitor<'de> for ScalarVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON scalar")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        Ok((self.string)(text))
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<T, E> {
        Ok((self.boolean)(value))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<T, E> {
        Ok(self.number)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<T, E> {
        Ok(self.number)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<T, E> {
        Ok(self.number)
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(self.null)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<T, A::Error> {
        Err(de::Error::custom(self.tree))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<T, A::Error> {
        Err(de::Error::custom(self.tree))
    }
}

/// Reads a request body sent to `route` within `limits`, and checks it.
pub(super) async fn parse(
    body: Body,
    limits: BodyLimits<'_>,
    route: InferenceRoute,
) -> Result<ParsedRequest, ApiError> {
    let (body, held) = read_body(body, limits).await?;
    // The body travels to the worker as text on v1 links, and JSON must be UTF-8
    // anyway; serde_json does not check the strings it skips, so check here.
    if std::str::from_utf8(&body).is_err() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            codes::INVALID_BODY,
            "The request body is not UTF-8.",
        ));
    }
    let probe = probe(&body)?;
    let model = model(probe.model)?;
    let streaming = route.streams && stream(probe.stream)? == Some(true);
    Ok(ParsedRequest {
        body,
        model,
        streaming,
        held,
    })
}

/// The `model` and `stream` fields of a UTF-8 body, which must be a JSON object.
pub(super) fn probe(body: &[u8]) -> Result<Probe, ApiError> {
    // serde would also read a struct from an array, by position.
    if body.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            codes::INVALID_JSON,
            "The request body is not a JSON object.",
        ));
    }
    serde_json::from_slice(body).map_err(|error| {
        let message = error.to_string();
        if message.starts_with(MODEL_IS_A_TREE) {
            not_a_model_name()
        } else if message.starts_with(STREAM_IS_A_TREE) {
            not_a_stream_flag()
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                codes::INVALID_JSON,
                format!("The request body is not a JSON object: {error}"),
            )
        }
    })
}

/// The `model` field, if it is a usable model name: a non-empty string of at
/// most 256 bytes (the longest a worker may advertise) without control characters.
fn model(field: ModelField) -> Result<String, ApiError> {
    match field {
        ModelField::Name(model)
            if !model.trim().is_empty()
                && model.len() <= MAX_MODEL_NAME_BYTES
                && !model.chars().any(char::is_control) =>
        {
            Ok(model)
        }
        ModelField::Name(_) | ModelField::TooLong | ModelField::NotAString => {
            Err(not_a_model_name())
        }
        ModelField::Absent => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            codes::MISSING_MODEL,
            "The request has no `model`.",
        )),
    }
}

/// The `stream` flag, if one was given.
fn stream(field: StreamField) -> Result<Option<bool>, ApiError> {
    match field {
        StreamField::Absent => Ok(None),
        StreamField::Flag(flag) => Ok(Some(flag)),
        StreamField::NotABool => Err(not_a_stream_flag()),
    }
}

/// The answer to a `model` the relay cannot route; the name is never echoed.
fn not_a_model_name() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        codes::INVALID_MODEL,
        "`model` must be a non-empty string of at most 256 bytes without control characters.",
    )
}

/// The answer to a `stream` that is neither `true`, `false` nor `null`.
fn not_a_stream_flag() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        codes::INVALID_STREAM,
        "`stream` must be true or false.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probed(body: &str) -> Result<(String, Option<bool>), String> {
        let probe = probe(body.as_bytes()).map_err(|e| e.code.to_owned())?;
        let model = model(probe.model).map_err(|e| e.code.to_owned())?;
        let stream = stream(probe.stream).map_err(|e| e.code.to_owned())?;
        Ok((model, stream))
    }

    #[test]
    fn model_and_stream_are_read_and_everything_else_skipped() {
        let body = r#"{"messages":[{"role":"user","content":[1,{"a":null}]}],"model":"m","stream":true,"n":1}"#;
        assert_eq!(probed(body), Ok(("m".to_owned(), Some(true))));
        assert_eq!(
            probed(r#"{"model":"m","stream":null}"#),
            Ok(("m".to_owned(), None))
        );
        assert_eq!(probed(r#"{"model":"m"}"#), Ok(("m".to_owned(), None)));
    }

    #[test]
    fn a_model_that_is_not_a_string_is_refused_as_invalid_model() {
        for body in [
            r#"{"model":[0,0,0]}"#,
            r#"{"model":{"a":1}}"#,
            r#"{"model":7}"#,
            r#"{"model":true}"#,
            r#"{"model":null}"#,
            r#"{"model":""}"#,
        ] {
            assert_eq!(probed(body), Err("invalid_model".to_owned()), "{body}");
        }
        assert_eq!(
            probed(r#"{"stream":true}"#),
            Err("missing_model".to_owned())
        );
    }

    #[test]
    fn an_array_model_is_refused_before_the_rest_of_the_body_is_read() {
        // The rest is not even JSON: the read stopped at the array's first byte.
        let body = r#"{"model":[0,0,0, this is never read"#;
        assert_eq!(probed(body), Err("invalid_model".to_owned()));
    }

    #[test]
    fn a_model_name_over_256_bytes_is_refused_without_echoing_it() {
        let name = "x".repeat(MAX_MODEL_NAME_BYTES + 1);
        let probe = probe(format!(r#"{{"model":"{name}"}}"#).as_bytes()).unwrap();
        let error = model(probe.model).unwrap_err();
        assert_eq!(error.code, "invalid_model");
        assert!(!error.message.contains(&name));
        let longest = "x".repeat(MAX_MODEL_NAME_BYTES);
        assert_eq!(
            probed(&format!(r#"{{"model":"{longest}"}}"#)),
            Ok((longest, None))
        );
    }

    #[test]
    fn a_stream_that_is_not_a_boolean_is_refused() {
        for body in [
            r#"{"model":"m","stream":1}"#,
            r#"{"model":"m","stream":"true"}"#,
            r#"{"model":"m","stream":[true]}"#,
            r#"{"model":"m","stream":{}}"#,
        ] {
            assert_eq!(probed(body), Err("invalid_stream".to_owned()), "{body}");
        }
        assert_eq!(
            probed(r#"{"model":"m","stream":false}"#),
            Ok(("m".to_owned(), Some(false)))
        );
    }

    #[test]
    fn a_body_that_is_not_a_json_object_is_invalid_json() {
        for body in [
            "[]",
            r#"["m", true]"#,
            "\"m\"",
            "",
            "{",
            r#"{"model":"m","model":"n"}"#,
        ] {
            assert_eq!(probed(body), Err("invalid_json".to_owned()), "{body}");
        }
    }
}
