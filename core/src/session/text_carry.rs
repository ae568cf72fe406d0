//! The start of a UTF-8 character a backend chunk split, held back per request on v1 links.

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::LinkRequest;

/// Backend output that is not UTF-8 text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NotUtf8;

/// Per request, the incomplete character at the end of its last backend chunk.
#[derive(Debug, Default)]
pub(crate) struct TextCarry {
    tails: FxHashMap<LinkRequest, Vec<u8>>,
}

impl TextCarry {
    /// The whole characters of `chunk`, after what was held back for `request`; an
    /// incomplete character at the end is held back in turn. `None` if nothing is whole yet.
    pub(crate) fn whole_text(
        &mut self,
        request: &LinkRequest,
        chunk: Bytes,
    ) -> Result<Option<Bytes>, NotUtf8> {
        let mut text = match self.tails.remove(request) {
            // Only a split character costs a copy.
            Some(mut carried) => {
                carried.extend_from_slice(&chunk);
                Bytes::from(carried)
            }
            None => chunk,
        };
        match std::str::from_utf8(&text) {
            Ok(_) => Ok(Some(text)),
            Err(error) if error.error_len().is_none() => {
                let tail = text.split_off(error.valid_up_to());
                self.tails.insert(request.clone(), tail.to_vec());
                Ok((!text.is_empty()).then_some(text))
            }
            Err(_) => Err(NotUtf8),
        }
    }

    /// Drops what was held back for `request`; whether there was anything.
    pub(crate) fn forget(&mut self, request: &LinkRequest) -> bool {
        self.tails.remove(request).is_some()
    }
}
