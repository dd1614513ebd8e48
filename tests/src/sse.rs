//! A Server-Sent Events reader for tests: events as the wire carries them, every wait bounded.

use std::time::Duration;

/// One event (`event:`, `id:`, `data:` lines up to a blank line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", self.data))
    }
}

#[derive(Debug)]
pub struct SseReader {
    response: reqwest::Response,
    buffer: String,
    /// Comment lines seen (heartbeats).
    pub comments: usize,
}

impl SseReader {
    /// `GET url` as an SSE client, resuming after `last_event_id` if given; panics unless the
    /// answer is `200 text/event-stream`.
    pub async fn open(url: &str, token: &str, last_event_id: Option<&str>) -> SseReader {
        let response = Self::request(url, token, last_event_id).await;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            let body = response.text().await.unwrap_or_default();
            panic!("feed {url} answered {status}: {body}");
        }
        Self::from_response(response)
    }

    /// The raw answer to a feed request (for tests of refusals).
    pub async fn request(url: &str, token: &str, last_event_id: Option<&str>) -> reqwest::Response {
        // A client of its own: a feed holds its connection, and a shared pool would hand the
        // next request a fresh one anyway.
        let client = reqwest::Client::new();
        let mut request = client
            .get(url)
            .bearer_auth(token)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        tokio::time::timeout(Duration::from_secs(10), request.send())
            .await
            .expect("feed answered within 10 s")
            .expect("feed request sent")
    }

    pub fn from_response(response: reqwest::Response) -> SseReader {
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "content-type {content_type}"
        );
        SseReader {
            response,
            buffer: String::new(),
            comments: 0,
        }
    }

    /// The next event within `wait`; `None` when the server ended the stream. Panics on timeout.
    pub async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = self.parse(&block) {
                    return Some(event);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("no event within {wait:?}; buffered: {:?}", self.buffer))
                .expect("feed stream readable");
            match chunk {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => return None,
            }
        }
    }

    /// The next `change` events, `n` of them, each within `wait`.
    pub async fn changes(&mut self, n: usize, wait: Duration) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while out.len() < n {
            let event = self
                .next(wait)
                .await
                .unwrap_or_else(|| panic!("stream ended after {} of {n} changes", out.len()));
            assert_eq!(event.event, "change", "unexpected event {event:?}");
            out.push(event);
        }
        out
    }

    fn parse(&mut self, block: &str) -> Option<SseEvent> {
        let mut event = SseEvent::default();
        let mut any = false;
        for line in block.lines() {
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event.event = value.to_owned(),
                "id" => event.id = Some(value.to_owned()),
                "data" => {
                    if any {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                    any = true;
                }
                _ => {}
            }
        }
        any.then_some(event)
    }
}
