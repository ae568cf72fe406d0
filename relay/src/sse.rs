//! Recognizing the final event of a streamed answer, so a client that leaves
//! right after it is not taken for one that gave up.

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
}
