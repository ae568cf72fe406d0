//! Ceilings on every list and map decoded from the wire, enforced while decoding.
//!
//! A frame's size is already capped ([`super::FrameLimits`]), but a list of tiny
//! elements costs far more decoded than on the wire: an empty string is one byte
//! of postcard (`0`) or three of JSON (`"",`) and 24 bytes as a `String` in a
//! `Vec`. So a 60 MB list of empty strings would cost 1.4 GB decoded. The visitors
//! here count elements as they come and refuse the frame at the first element
//! past the ceiling, so no list ever holds more than its ceiling, whatever the
//! frame's size; a peer's announced length (postcard's length prefix) is checked
//! against the ceiling before anything is reserved.
//!
//! Between what the relay keeps and the ceiling, nothing changes: the relay
//! still keeps the first [`MAX_MODELS_PER_WORKER`] models and says what it
//! dropped (`sanitize_models`). Strings need no ceiling of their own: a decoded
//! string costs at most its own size on the wire (postcard checks a string's
//! length prefix against the bytes left before it copies them; JSON unescaping
//! only shrinks), so a 60 MB name costs 60 MB, not more.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

use crate::ids::ModelName;
use crate::relay::MAX_MODELS_PER_WORKER;

/// Most model names one `register`, `models_update` or `register_ack` may list:
/// four times what the relay keeps ([`MAX_MODELS_PER_WORKER`]).
///
/// A worker listing up to this many still registers (the relay keeps the first
/// [`MAX_MODELS_PER_WORKER`] and warns about the rest, as before); past it the
/// frame is refused while decoding. Costs at most 1024 × 24 bytes of list.
pub const MAX_LISTED_MODELS: usize = 4 * MAX_MODELS_PER_WORKER;

/// Most warnings one `register_ack` may carry: two per listed model.
///
/// The relay writes at most one warning per dropped name (each of at most
/// [`MAX_LISTED_MODELS`]) plus a few about the whole registration (count cap,
/// empty names, `max_concurrent`, worker name); twice the list ceiling leaves
/// room for a server that words its warnings differently.
pub const MAX_ACK_WARNINGS: usize = 2 * MAX_LISTED_MODELS;

/// Most header pairs in a `request` or `response_complete`.
///
/// hyper, which parses both the clients' requests at the relay and the
/// backends' responses at the worker, refuses a message with more than 100
/// headers by default, and the relay forwards only eleven request headers
/// ([`super::FORWARDED_REQUEST_HEADERS`]); 256 leaves room for a peer with a
/// larger limit and costs at most 256 × 48 bytes of pairs.
pub const MAX_HEADER_PAIRS: usize = 256;

/// A list ceiling that refused a frame, noted for [`super::DecodeError::TooManyItems`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CeilingHit {
    pub(crate) list: &'static str,
    pub(crate) ceiling: usize,
}

thread_local! {
    static CEILING_HIT: Cell<Option<CeilingHit>> = const { Cell::new(None) };
}

/// Forgets a ceiling noted by an earlier decode on this thread.
pub(crate) fn clear_ceiling_hit() {
    CEILING_HIT.with(|hit| hit.set(None));
}

/// The ceiling that made the decode just run fail, if one did.
///
/// Formats report custom errors differently (postcard keeps no message), so the
/// visitor notes which ceiling it hit here and the codec turns it into a typed error.
pub(crate) fn take_ceiling_hit() -> Option<CeilingHit> {
    CEILING_HIT.with(Cell::take)
}

/// The error for a list that is longer than `ceiling`, noted for the codec.
pub(crate) fn too_many<E: de::Error>(list: &'static str, ceiling: usize) -> E {
    CEILING_HIT.with(|hit| hit.set(Some(CeilingHit { list, ceiling })));
    E::custom(format_args!("{list} lists more than {ceiling} items"))
}

/// Reading a list of `T` that stops at `ceiling` elements.
struct BoundedSeq<T> {
    list: &'static str,
    ceiling: usize,
    element: PhantomData<fn() -> T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedSeq<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list of at most {} items", self.ceiling)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        // postcard announces the count up front: refuse before reserving anything.
        let announced = seq.size_hint().unwrap_or(0);
        if announced > self.ceiling {
            return Err(too_many(self.list, self.ceiling));
        }
        let mut items = Vec::with_capacity(announced);
        while let Some(item) = seq.next_element()? {
            if items.len() == self.ceiling {
                return Err(too_many(self.list, self.ceiling));
            }
            items.push(item);
        }
        Ok(items)
    }
}

fn bounded_seq<'de, D, T>(
    deserializer: D,
    list: &'static str,
    ceiling: usize,
) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_seq(BoundedSeq {
        list,
        ceiling,
        element: PhantomData,
    })
}

/// `deserialize_with` for a worker's model list (`register`, `models_update`).
pub(crate) fn listed_models<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    bounded_seq(deserializer, "models", MAX_LISTED_MODELS)
}

/// `deserialize_with` for the model list of a `register_ack`.
pub(crate) fn acked_models<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<ModelName>, D::Error> {
    bounded_seq(deserializer, "models", MAX_LISTED_MODELS)
}

/// `deserialize_with` for the warnings of a `register_ack`.
pub(crate) fn ack_warnings<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    bounded_seq(deserializer, "warnings", MAX_ACK_WARNINGS)
}
