//! Checks that an answer is whole: a stream well formed, in order and ended, or a
//! complete JSON body, in the OpenAI or Anthropic shape.

use serde::Serialize;
use serde_json::Value;

/// The API an endpoint speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ApiShape {
    /// OpenAI chat completions (`/v1/chat/completions`).
    Openai,
    /// Anthropic messages (`/v1/messages`).
    Anthropic,
}

impl ApiShape {
    /// The route a request of this shape goes to.
    pub fn path(self) -> &'static str {
        match self {
            Self::Openai => "/v1/chat/completions",
            Self::Anthropic => "/v1/messages",
        }
    }
}

/// Reads a server-sent-event stream piece by piece and checks it as it comes.
#[derive(Debug)]
pub struct StreamCheck {
    api: ApiShape,
    pending: Vec<u8>,
    content: String,
    events: usize,
    started: bool,
    ended: bool,
}

impl StreamCheck {
    /// A check for a stream in `api`'s shape.
    pub fn new(api: ApiShape) -> Self {
        Self {
            api,
            pending: Vec::new(),
            content: String::new(),
            events: 0,
            started: false,
            ended: false,
        }
    }

    /// Events with data seen so far (the stream's chunks).
    pub fn events(&self) -> usize {
        self.events
    }

    /// Takes the next piece of the body; an error names what is wrong with the stream.
    pub fn feed(&mut self, piece: &[u8]) -> Result<(), String> {
        self.pending.extend_from_slice(piece);
        let pending = std::mem::take(&mut self.pending);
        let mut start = 0;
        let result = loop {
            let Some((end, next)) = event_end(&pending[start..]) else {
                break Ok(());
            };
            if let Err(error) = self.event(&pending[start..start + end]) {
                break Err(error);
            }
            start += next;
        };
        self.pending = pending[start..].to_vec();
        result
    }

    fn event(&mut self, raw: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(raw).map_err(|_| "an event that is not UTF-8".to_owned())?;
        let mut name = None;
        let mut data = String::new();
        for line in text.lines() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if let Some(value) = field(line, "event") {
                name = Some(value.to_owned());
            } else if let Some(value) = field(line, "data") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
        }
        if data.is_empty() {
            return Ok(()); // a comment or keep-alive
        }
        if self.ended {
            return Err("an event after the end of the stream".into());
        }
        self.events += 1;
        match self.api {
            ApiShape::Openai => self.openai_event(&data),
            ApiShape::Anthropic => self.anthropic_event(name.as_deref(), &data),
        }
    }

    fn openai_event(&mut self, data: &str) -> Result<(), String> {
        if data == "[DONE]" {
            self.ended = true;
            return Ok(());
        }
        let value: Value = serde_json::from_str(data)
            .map_err(|_| format!("an event that is not JSON: {data:.80}"))?;
        if let Some(error) = value.get("error") {
            return Err(format!("error event: {}", error_text(error)));
        }
        let choice = &value["choices"][0];
        let piece = choice["delta"]["content"]
            .as_str()
            .or_else(|| choice["text"].as_str());
        if let Some(piece) = piece {
            self.content.push_str(piece);
        }
        Ok(())
    }

    fn anthropic_event(&mut self, name: Option<&str>, data: &str) -> Result<(), String> {
        let value: Value = serde_json::from_str(data)
            .map_err(|_| format!("an event that is not JSON: {data:.80}"))?;
        let kind = name.or_else(|| value["type"].as_str()).unwrap_or_default();
        if kind == "error" {
            return Err(format!("error event: {}", error_text(&value["error"])));
        }
        if !self.started {
            if kind != "message_start" {
                return Err(format!("the stream began with {kind:?}, not message_start"));
            }
            self.started = true;
        }
        match kind {
            "content_block_delta" => {
                if let Some(piece) = value["delta"]["text"].as_str() {
                    self.content.push_str(piece);
                }
            }
            "message_stop" => self.ended = true,
            _ => {}
        }
        Ok(())
    }

    /// Ends the check: the stream's text if it ended properly.
    pub fn finish(self) -> Result<String, String> {
        if !self.pending.iter().all(u8::is_ascii_whitespace) {
            return Err("the stream ended in the middle of an event".into());
        }
        if !self.ended {
            return Err(match self.api {
                ApiShape::Openai => format!("no [DONE] after {} events", self.events),
                ApiShape::Anthropic => format!("no message_stop after {} events", self.events),
            });
        }
        Ok(self.content)
    }
}

/// Where the first complete event in `buffer` ends, and where the next begins.
fn event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(offset) = buffer[i..].iter().position(|b| *b == b'\n') {
        let at = i + offset;
        match buffer.get(at + 1) {
            Some(b'\n') => return Some((at, at + 2)),
            Some(b'\r') if buffer.get(at + 2) == Some(&b'\n') => return Some((at, at + 3)),
            _ => i = at + 1,
        }
    }
    None
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(name)?.strip_prefix(':')?;
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

fn error_text(error: &Value) -> String {
    error["code"]
        .as_str()
        .or_else(|| error["type"].as_str())
        .or_else(|| error["message"].as_str())
        .unwrap_or("unnamed")
        .to_owned()
}

/// Checks a whole (non-streaming) answer; returns its text.
pub fn check_body(api: ApiShape, body: &[u8]) -> Result<String, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| "an answer that is not JSON".to_owned())?;
    if let Some(error) = value.get("error") {
        return Err(format!("error answer: {}", error_text(error)));
    }
    let text = match api {
        ApiShape::Openai => value["choices"][0]["message"]["content"]
            .as_str()
            .or_else(|| value["choices"][0]["text"].as_str())
            .map(str::to_owned),
        ApiShape::Anthropic => value["content"].as_array().map(|blocks| {
            blocks
                .iter()
                .filter_map(|block| block["text"].as_str())
                .collect::<String>()
        }),
    };
    text.ok_or_else(|| "an answer without text".to_owned())
}

/// Compares an answer's text with what was expected; the error says where they part.
pub fn check_text(got: &str, expected: &str) -> Result<(), String> {
    if got == expected {
        return Ok(());
    }
    let at = got
        .chars()
        .zip(expected.chars())
        .take_while(|(a, b)| a == b)
        .count();
    Err(format!(
        "text differs from character {at} ({} chars, expected {})",
        got.chars().count(),
        expected.chars().count()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openai(pieces: &[&str]) -> String {
        let mut stream = String::new();
        for piece in pieces {
            stream.push_str(&format!(
                "data: {}\n\n",
                serde_json::json!({"choices": [{"delta": {"content": piece}}]})
            ));
        }
        stream
    }

    #[test]
    fn a_whole_openai_stream_passes_in_any_split() {
        let stream = openai(&["Hel", "lo"]) + "data: [DONE]\n\n";
        for split in 0..stream.len() {
            let mut check = StreamCheck::new(ApiShape::Openai);
            check.feed(&stream.as_bytes()[..split]).unwrap();
            check.feed(&stream.as_bytes()[split..]).unwrap();
            assert_eq!(check.events(), 3);
            assert_eq!(check.finish().unwrap(), "Hello");
        }
    }

    #[test]
    fn broken_openai_streams_say_why() {
        let mut check = StreamCheck::new(ApiShape::Openai);
        check.feed(openai(&["a"]).as_bytes()).unwrap();
        assert!(check.finish().unwrap_err().contains("[DONE]"));

        let mut check = StreamCheck::new(ApiShape::Openai);
        let error = "data: {\"error\":{\"code\":\"worker_lost\"}}\n\n";
        assert!(
            check
                .feed(error.as_bytes())
                .unwrap_err()
                .contains("worker_lost")
        );

        let mut check = StreamCheck::new(ApiShape::Openai);
        let late = "data: [DONE]\n\n".to_owned() + &openai(&["x"]);
        assert!(check.feed(late.as_bytes()).is_err());
    }

    #[test]
    fn anthropic_streams_start_with_message_start_and_end_with_message_stop() {
        let stream = "event: message_start\r\ndata: {\"type\":\"message_start\"}\r\n\r\n\
                      event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Hi\"}}\n\n\
                      event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let mut check = StreamCheck::new(ApiShape::Anthropic);
        check.feed(stream.as_bytes()).unwrap();
        assert_eq!(check.finish().unwrap(), "Hi");

        let mut check = StreamCheck::new(ApiShape::Anthropic);
        let headless = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        assert!(check.feed(headless.as_bytes()).is_err());
    }

    #[test]
    fn whole_answers_and_texts() {
        let body = br#"{"choices":[{"message":{"content":"Hi"}}]}"#;
        assert_eq!(check_body(ApiShape::Openai, body).unwrap(), "Hi");
        let body = br#"{"content":[{"type":"text","text":"Hi"}]}"#;
        assert_eq!(check_body(ApiShape::Anthropic, body).unwrap(), "Hi");
        assert!(check_body(ApiShape::Openai, br#"{"error":{"code":"x"}}"#).is_err());
        assert!(
            check_text("Hellp", "Hello")
                .unwrap_err()
                .contains("character 4")
        );
    }
}
