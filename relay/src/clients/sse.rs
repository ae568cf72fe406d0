//! Scanning stream chunks without parsing them: for the final event of a
//! streamed answer (so a client that leaves right after it is not taken for one
//! that gave up) and for the token usage a backend reports.

use modelrelay_core::wire::{BackendUsage, TokenCounts};

/// Whether `chunk` ends with a stream's final event: `data: [DONE]` (OpenAI chat
/// and completions), `message_stop` (Anthropic), or `response.completed`,
/// `response.failed` or `response.incomplete` (OpenAI Responses).
///
/// Only the chunk's last event is read, so the check costs a few bytes per
/// chunk; a final event split across two chunks is not recognized (the client's
/// leaving then counts as a plain disconnect, as it would without this check).
pub(crate) fn ends_stream(chunk: &[u8]) -> bool {
    // The last event: its lines, read from the end up to the blank line before it.
    chunk
        .trim_ascii_end()
        .rsplit(|&b| b == b'\n')
        .map(<[u8]>::trim_ascii)
        .take_while(|line| !line.is_empty())
        .any(is_final_line)
}

fn is_final_line(line: &[u8]) -> bool {
    if let Some(data) = line.strip_prefix(b"data:") {
        return data.trim_ascii() == b"[DONE]";
    }
    if let Some(name) = line.strip_prefix(b"event:") {
        return matches!(
            name.trim_ascii(),
            b"message_stop" | b"response.completed" | b"response.failed" | b"response.incomplete"
        );
    }
    false
}

/// Longest `usage` object read: real ones are a few hundred bytes; a longer
/// one is skipped unread, so no chunk costs more than one pass over its bytes.
const MAX_USAGE_OBJECT_BYTES: usize = 4096;

/// Token usage a backend reported inside a stream chunk, if this chunk has it:
/// OpenAI's last chunk (`usage`, with `stream_options.include_usage`),
/// Anthropic's `message_start` and `message_delta` events, and the Responses
/// API's `response.completed` (`response.usage`).
///
/// Only the `usage` objects are read, wherever they sit in an event, so an
/// event split across chunks still counts unless the split falls inside the
/// small `usage` object itself. Several in one chunk are merged, each count
/// keeping its largest value.
pub(crate) fn stream_usage(chunk: &[u8]) -> Option<TokenCounts> {
    scan_usage(chunk).0
}

/// The merged usage in `chunk`, with the bytes looked at while delimiting
/// objects (the `memmem` search aside), which tests hold to one pass.
///
/// Every byte is delimited at most once: the search resumes after an object,
/// or after the window that held none, so a chunk of `"usage":{` repeated
/// costs one pass, not one per key.
pub(super) fn scan_usage(chunk: &[u8]) -> (Option<TokenCounts>, usize) {
    const KEY: &[u8] = b"\"usage\"";
    let (mut found, mut examined): (Option<TokenCounts>, usize) = (None, 0);
    let mut from = 0;
    // Most chunks carry no usage: memmem skips them without parsing.
    while let Some(at) = memchr::memmem::find(&chunk[from..], KEY).map(|i| from + i) {
        from = at + KEY.len();
        // Inside a JSON string the quotes would be escaped: not a key.
        if at > 0 && chunk[at - 1] == b'\\' {
            continue;
        }
        let after_key = chunk[from..].trim_ascii_start();
        let Some(value) = after_key.strip_prefix(b":").map(<[u8]>::trim_ascii_start) else {
            continue;
        };
        let window = &value[..value.len().min(MAX_USAGE_OBJECT_BYTES)];
        let (object, looked_at) = json_object_at(window);
        examined += looked_at;
        // Past what was looked at (at least one byte, at most the rest).
        from = chunk.len() - value.len() + looked_at.max(1).min(value.len());
        let counts = object
            .and_then(|object| serde_json::from_slice::<BackendUsage>(object).ok())
            .and_then(BackendUsage::counts);
        if let Some(counts) = counts {
            found.get_or_insert_default().merge_max(counts);
        }
    }
    (found, examined)
}

/// The JSON object `text` starts with, up to its closing brace (strings and
/// their escapes skipped), or `None` if it does not start with one or ends
/// first; with the number of bytes looked at.
fn json_object_at(text: &[u8]) -> (Option<&[u8]>, usize) {
    if text.first() != Some(&b'{') {
        return (None, 0);
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in text.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return (Some(&text[..=i]), i + 1);
                }
            }
            _ => {}
        }
    }
    (None, text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_events_of_each_api_are_recognized() {
        assert!(ends_stream(b"data: [DONE]\n\n"));
        assert!(ends_stream(b"data: {\"x\":1}\n\ndata: [DONE]\n\n"));
        assert!(ends_stream(b"data:[DONE]\r\n\r\n"));
        assert!(ends_stream(
            b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
        ));
        assert!(ends_stream(
            b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{}}\n\n"
        ));
        assert!(ends_stream(b"event: response.incomplete\ndata: {}\n\n"));
    }

    #[test]
    fn other_events_are_not_final() {
        assert!(!ends_stream(b""));
        assert!(!ends_stream(b"data: {\"choices\":[]}\n\n"));
        // A final event followed by another one is not the end.
        assert!(!ends_stream(b"data: [DONE]\n\ndata: {}\n\n"));
        assert!(!ends_stream(
            b"event: message_delta\ndata: {\"type\":\"message_delta\"}\n\n"
        ));
        // The marker as content is not the marker.
        assert!(!ends_stream(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"data: [DONE]\"}}]}\n\n"
        ));
        assert!(!ends_stream(b"data: [DONE] and more\n\n"));
        // Half of a final event.
        assert!(!ends_stream(b"data: [DO"));
    }

    #[test]
    fn usage_is_read_from_openai_and_anthropic_stream_events() {
        let openai = br#"data: {"id":"x","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9,"total_tokens":14}}

"#;
        assert_eq!(
            stream_usage(openai),
            Some(TokenCounts {
                prompt_tokens: Some(5),
                completion_tokens: Some(9),
                total_tokens: Some(14),
            })
        );
        let start = br#"event: message_start
data: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":12,"output_tokens":1}}}

"#;
        assert_eq!(stream_usage(start).and_then(|u| u.prompt_tokens), Some(12));
        let delta = br#"event: message_delta
data: {"type":"message_delta","delta":{},"usage":{"output_tokens":30}}

"#;
        assert_eq!(
            stream_usage(delta).and_then(|u| u.completion_tokens),
            Some(30)
        );
        assert_eq!(stream_usage(b"data: {\"choices\":[]}\n\n"), None);
        assert_eq!(stream_usage(b"data: {\"usage\": not json\n\n"), None);
        assert_eq!(stream_usage(b"data: {\"usage\": null}\n\n"), None);
    }

    #[test]
    fn usage_is_read_from_responses_events_and_split_events() {
        let completed = br#"event: response.completed
data: {"type":"response.completed","response":{"id":"r","output":[{"content":[{"text":"a {brace} and \"usage\": {\"input_tokens\": 99}"}]}],"usage":{"input_tokens":7,"output_tokens":11,"total_tokens":18,"output_tokens_details":{"reasoning_tokens":0}}}}

"#;
        assert_eq!(
            stream_usage(completed),
            Some(TokenCounts {
                prompt_tokens: Some(7),
                completion_tokens: Some(11),
                total_tokens: Some(18),
            })
        );
        // The event's start came in an earlier chunk; the usage is whole in this one.
        let tail = br#"reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}

data: [DONE]

"#;
        assert_eq!(
            stream_usage(tail).and_then(|u| u.completion_tokens),
            Some(4)
        );
        // Cut inside the usage object: nothing rather than a wrong count.
        assert_eq!(
            stream_usage(br#"data: {"usage":{"prompt_tokens":3,"compl"#),
            None
        );
    }

    #[test]
    fn the_usage_scan_looks_at_each_byte_once_whatever_the_chunk_holds() {
        let hostile = [
            b"\"usage\":{".repeat(60_000),
            b"\"usage\":{\"a\":\"".repeat(60_000),
            [b"\"usage\":".as_slice(), &b"{".repeat(500_000)].concat(),
            br#""usage":{"prompt_tokens":1},"#.repeat(20_000),
        ];
        for chunk in hostile {
            let (_, examined) = scan_usage(&chunk);
            assert!(
                examined <= chunk.len(),
                "{examined} bytes examined for a chunk of {}",
                chunk.len()
            );
        }
    }

    #[test]
    fn a_usage_object_longer_than_the_window_is_skipped() {
        let padding = " ".repeat(MAX_USAGE_OBJECT_BYTES);
        let long = format!(
            "data: {{\"usage\":{{\"prompt_tokens\":3,{padding}\"completion_tokens\":4}}}}\n\n"
        );
        assert_eq!(stream_usage(long.as_bytes()), None);
        let after = format!("{long}data: {{\"usage\":{{\"completion_tokens\":5}}}}\n\n");
        assert_eq!(
            stream_usage(after.as_bytes()).and_then(|u| u.completion_tokens),
            Some(5)
        );
    }
}
