//! A client that asks the relay for completions and judges what it got back.

use std::fmt;
use std::time::Duration;

use modelrelay_testkit::simulated_backend::expected_text;
use serde_json::{Value, json};

use crate::net;
use crate::world::{RELAY, RELAY_PORT};

/// One request, as a client sends it.
#[derive(Clone, Debug)]
pub struct Ask {
    /// Tag that marks it in the backends' logs (and the trace).
    pub tag: String,
    /// The relay host it goes to.
    pub relay: String,
    /// Stream or not.
    pub stream: bool,
    /// Tokens in the answer.
    pub tokens: usize,
    /// Milliseconds the backend waits before each token.
    pub delay_ms: u64,
    /// Leave after this many chunks.
    pub abandon_after: Option<usize>,
    /// Stop reading after this many chunks, for this long (a slow phone, a stalled tab).
    pub pause_after: Option<(usize, Duration)>,
}

impl Ask {
    /// A streaming request for `tokens` tokens, one every `delay_ms`.
    pub fn stream(tag: impl Into<String>, tokens: usize, delay_ms: u64) -> Self {
        Self {
            tag: tag.into(),
            relay: RELAY.to_owned(),
            stream: true,
            tokens,
            delay_ms,
            abandon_after: None,
            pause_after: None,
        }
    }

    /// The same ask, sent to relay host `relay`.
    pub fn to(self, relay: &str) -> Self {
        Self {
            relay: relay.to_owned(),
            ..self
        }
    }

    /// The same ask from a client that reads `chunks` chunks, then nothing for `pause`.
    pub fn pausing(self, chunks: usize, pause: Duration) -> Self {
        Self {
            pause_after: Some((chunks, pause)),
            ..self
        }
    }

    /// A non-streaming request for `tokens` tokens, taking `tokens * delay_ms` to answer.
    pub fn whole(tag: impl Into<String>, tokens: usize, delay_ms: u64) -> Self {
        Self {
            stream: false,
            ..Self::stream(tag, tokens, delay_ms)
        }
    }

    fn body(&self) -> String {
        json!({
            "model": "m",
            "stream": self.stream,
            "messages": [{"role": "user", "content": self.tag}],
            "mock": {"tokens": self.tokens, "delay_ms": self.delay_ms, "tag": self.tag},
        })
        .to_string()
    }
}

/// What the client got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The full answer, checked to be complete and in order.
    Complete,
    /// An error answer before any stream: status and the API's error code.
    Refused {
        /// HTTP status.
        status: u16,
        /// `error.code`.
        code: String,
    },
    /// A stream that ended with one error event after a correct prefix.
    BrokenOff {
        /// `error.code` of the event.
        code: String,
        /// Chunks before it.
        chunks: usize,
    },
    /// The client left on purpose after this many chunks.
    Left {
        /// Chunks read.
        chunks: usize,
    },
    /// Something the contract forbids: a wrong, duplicated or unterminated answer.
    Wrong(String),
    /// No end within the client's deadline.
    Hung,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Complete => f.write_str("complete"),
            Self::Refused { status, code } => write!(f, "refused {status} {code}"),
            Self::BrokenOff { code, chunks } => {
                write!(f, "broken off ({code}) after {chunks} chunks")
            }
            Self::Left { chunks } => write!(f, "left after {chunks} chunks"),
            Self::Wrong(why) => write!(f, "WRONG: {why}"),
            Self::Hung => f.write_str("HUNG"),
        }
    }
}

impl Outcome {
    /// Whether the contract allows this outcome at all.
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Self::Wrong(_) | Self::Hung)
    }
}

/// Sends `ask` to the relay; gives up (as [`Outcome::Hung`]) after `deadline`.
pub async fn send(ask: &Ask, deadline: Duration) -> Outcome {
    send_timed(ask, deadline).await.0
}

/// Like [`send`], also returning when (in simulated time) each piece of the body arrived.
pub async fn send_timed(ask: &Ask, deadline: Duration) -> (Outcome, Vec<Duration>) {
    let mut arrivals = Vec::new();
    match tokio::time::timeout(deadline, exchange(ask, &mut arrivals)).await {
        Ok(outcome) => (outcome, arrivals),
        Err(_) => (Outcome::Hung, arrivals),
    }
}

async fn exchange(ask: &Ask, arrivals: &mut Vec<Duration>) -> Outcome {
    let posted = net::post(&ask.relay, RELAY_PORT, "/v1/chat/completions", ask.body()).await;
    let mut response = match posted {
        Ok(response) => response,
        Err(error) => return Outcome::Wrong(format!("no answer: {error}")),
    };
    let mut body = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = response.next_chunk().await {
        match chunk {
            Ok(chunk) => {
                chunks += 1;
                arrivals.push(turmoil::sim_elapsed().unwrap_or_default());
                body.extend_from_slice(&chunk);
            }
            Err(error) => return Outcome::Wrong(format!("body broke off: {error}")),
        }
        if ask.abandon_after.is_some_and(|n| chunks >= n) {
            return Outcome::Left { chunks };
        }
        if let Some((after, pause)) = ask.pause_after
            && after == chunks
        {
            tokio::time::sleep(pause).await;
        }
    }
    judge(ask, response.status, &body)
}

/// Decides what a finished answer was, checking content against what the backend writes.
pub fn judge(ask: &Ask, status: u16, body: &[u8]) -> Outcome {
    let expected = expected_text(ask.tokens);
    if status != 200 {
        return match serde_json::from_slice::<Value>(body) {
            Ok(error) => Outcome::Refused {
                status,
                code: error["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            },
            Err(_) => Outcome::Wrong(format!("HTTP {status} without a JSON error body")),
        };
    }
    if !ask.stream {
        let Ok(answer) = serde_json::from_slice::<Value>(body) else {
            return Outcome::Wrong("a 200 answer that is not JSON".into());
        };
        let text = answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default();
        return if text == expected {
            Outcome::Complete
        } else {
            Outcome::Wrong(format!("answer {text:?} is not the model's {expected:?}"))
        };
    }
    let text = String::from_utf8_lossy(body);
    let mut content = String::new();
    let mut events = 0;
    let mut done = false;
    for event in text.split_terminator("\n\n") {
        events += 1;
        let Some(data) = event.strip_prefix("data: ") else {
            return Outcome::Wrong(format!("not an SSE data event: {event:?}"));
        };
        if done {
            return Outcome::Wrong("an event after [DONE]".into());
        }
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let Ok(value) = serde_json::from_str::<Value>(data) else {
            return Outcome::Wrong(format!("an event that is not JSON: {data:?}"));
        };
        if let Some(code) = value["error"]["code"].as_str() {
            // The one error event: must be last, after a correct prefix.
            if !expected.starts_with(&content) {
                return Outcome::Wrong(format!(
                    "prefix {content:?} before the error is not the model's"
                ));
            }
            if !text.ends_with(&format!("{event}\n\n")) {
                return Outcome::Wrong("events after the error event".into());
            }
            return Outcome::BrokenOff {
                code: code.to_owned(),
                chunks: events - 1,
            };
        }
        if let Some(piece) = value["choices"][0]["delta"]["content"].as_str() {
            content.push_str(piece);
        }
    }
    if !done {
        return Outcome::Wrong(format!("a stream without [DONE] ({events} events)"));
    }
    if content != expected {
        return Outcome::Wrong(format!(
            "streamed {content:?}, the model wrote {expected:?}"
        ));
    }
    Outcome::Complete
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_judge_knows_complete_broken_and_duplicated_streams() {
        let ask = Ask::stream("t", 2, 0);
        let token = |text: &str| {
            format!(
                "data: {}\n\n",
                json!({"choices": [{"delta": {"content": text}}]})
            )
        };
        let words: Vec<String> = expected_text(2)
            .split_inclusive(' ')
            .map(str::to_owned)
            .collect();
        let complete = format!("{}{}data: [DONE]\n\n", token(&words[0]), token(&words[1]));
        assert_eq!(judge(&ask, 200, complete.as_bytes()), Outcome::Complete);
        let duplicated = format!(
            "{}{}{}data: [DONE]\n\n",
            token(&words[0]),
            token(&words[0]),
            token(&words[1])
        );
        assert!(matches!(
            judge(&ask, 200, duplicated.as_bytes()),
            Outcome::Wrong(_)
        ));
        let error = format!("data: {}\n\n", json!({"error": {"code": "worker_lost"}}));
        let broken = format!("{}{error}", token(&words[0]));
        assert_eq!(
            judge(&ask, 200, broken.as_bytes()),
            Outcome::BrokenOff {
                code: "worker_lost".into(),
                chunks: 1
            }
        );
        let unterminated = token(&words[0]);
        assert!(matches!(
            judge(&ask, 200, unterminated.as_bytes()),
            Outcome::Wrong(_)
        ));
        let refused = br#"{"error":{"code":"queue_full"}}"#;
        assert_eq!(
            judge(&ask, 429, refused),
            Outcome::Refused {
                status: 429,
                code: "queue_full".into()
            }
        );
    }
}
