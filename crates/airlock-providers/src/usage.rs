//! Token usage read from provider responses as they pass: every `"usage": {…}` object of a
//! JSON body or of an SSE stream's events, in OpenAI's and Anthropic's shapes. Pure code over
//! bytes (no I/O, no clock), so it can be tested and fuzzed on its own.

use serde::Deserialize;

/// Token counts a provider reported (absent where it reported none).
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Every prompt token, cached ones included (Anthropic's cache reads and writes too).
    pub input: Option<i64>,
    /// Output tokens.
    pub output: Option<i64>,
    /// Prompt tokens served from the provider's cache.
    pub cached: Option<i64>,
}

#[derive(Deserialize)]
struct UsageObj {
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    cache_read_input_tokens: Option<i64>,
    cache_creation_input_tokens: Option<i64>,
    prompt_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    cached_tokens: Option<i64>,
}

/// Finds every `"usage": {…}` object in a JSON text and reads its token counts.
pub fn scan_usage(text: &[u8], into: &mut Usage) {
    let finder = memchr::memmem::Finder::new(b"\"usage\"");
    let mut at = 0;
    while let Some(i) = finder.find(&text[at..]) {
        let mut j = at + i + 7;
        at = j;
        while j < text.len() && text[j].is_ascii_whitespace() {
            j += 1;
        }
        if text.get(j) != Some(&b':') {
            continue;
        }
        j += 1;
        while j < text.len() && text[j].is_ascii_whitespace() {
            j += 1;
        }
        if text.get(j) != Some(&b'{') {
            continue;
        }
        let mut de = serde_json::Deserializer::from_slice(&text[j..]).into_iter::<UsageObj>();
        if let Some(Ok(u)) = de.next() {
            // Anthropic counts cache reads and writes apart from `input_tokens`; OpenAI's
            // prompt tokens include the cached ones. Input here is always every prompt token.
            let anthropic_cache = u
                .cache_read_input_tokens
                .unwrap_or(0)
                .saturating_add(u.cache_creation_input_tokens.unwrap_or(0));
            let input = u
                .prompt_tokens
                .or(u.input_tokens.map(|i| i.saturating_add(anthropic_cache)));
            if input.is_some() {
                into.input = input;
            }
            let output = u.completion_tokens.or(u.output_tokens);
            if output.is_some() {
                into.output = output;
            }
            let cached = u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .or(u.input_tokens_details.and_then(|d| d.cached_tokens))
                .or(u.cache_read_input_tokens);
            if cached.is_some() {
                into.cached = cached;
            }
        }
    }
}

/// A JSON body up to this size is kept whole and scanned at its end.
const MAX_JSON_WHOLE: usize = 256 * 1024;
/// Past that, only a tail window is kept: every provider puts `usage` at the end of a
/// non-streamed body, so memory per response stays bounded whatever the body's size.
const JSON_TAIL: usize = 64 * 1024;
const MAX_EVENT: usize = 1024 * 1024;

/// Watches response bytes go by and extracts usage.
pub struct Observer {
    sse: bool,
    buf: Vec<u8>,
    /// How far `buf` has been searched for an event end (SSE only).
    searched: usize,
    usage: Usage,
    tail_only: bool,
    /// Complete SSE events seen (a streamed token or a few each).
    events: i64,
}

impl Observer {
    /// An observer for an SSE stream (`sse`) or a JSON body.
    pub fn new(sse: bool) -> Self {
        Observer {
            sse,
            buf: Vec::new(),
            searched: 0,
            usage: Usage::default(),
            tail_only: false,
            events: 0,
        }
    }

    /// Whether it reads an SSE stream.
    pub fn is_sse(&self) -> bool {
        self.sse
    }

    /// Complete SSE events seen so far (a streamed token or a few each).
    pub fn events(&self) -> i64 {
        self.events
    }

    /// The usage found so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Reads the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.sse {
            self.buf.extend_from_slice(chunk);
            if self.buf.len() > MAX_JSON_WHOLE {
                self.tail_only = true;
            }
            if self.tail_only && self.buf.len() > 2 * JSON_TAIL {
                let cut = self.buf.len() - JSON_TAIL;
                self.buf.drain(..cut);
            }
            return;
        }
        self.buf.extend_from_slice(chunk);
        // Process every complete event (terminated by a blank line). The search resumes where
        // the last one stopped, so an event arriving in many small pieces costs linear time.
        let mut start = 0;
        while let Some(end) =
            find_event_end(&self.buf[start..], self.searched.saturating_sub(start))
        {
            let event = &self.buf[start..start + end.0];
            self.events += 1;
            if memchr::memmem::find(event, b"\"usage\"").is_some() {
                scan_usage(event, &mut self.usage);
            }
            start += end.1;
        }
        if start > 0 {
            self.buf.drain(..start);
        }
        // Back up a little: a terminator may straddle this chunk and the next.
        self.searched = self.buf.len().saturating_sub(2);
        if self.buf.len() > MAX_EVENT {
            self.buf.clear();
            self.searched = 0;
        }
    }

    /// The body ended (or was cut): reads what is left.
    pub fn end(&mut self) {
        // A stream's unterminated last event, a whole JSON body, or a large body's tail.
        let rest = std::mem::take(&mut self.buf);
        scan_usage(&rest, &mut self.usage);
    }
}

/// Position of the end of the first SSE event at or after `from`: (length of the event, length
/// including the blank line).
fn find_event_end(b: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while let Some(off) = memchr::memchr(b'\n', b.get(i..)?) {
        i += off;
        match (b.get(i + 1), b.get(i + 2)) {
            (Some(b'\n'), _) => return Some((i, i + 2)),
            (Some(b'\r'), Some(b'\n')) => return Some((i, i + 3)),
            (None, _) | (Some(b'\r'), None) => return None,
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_cache_tokens_count_as_input() {
        // Anthropic reports cache reads and writes apart from input_tokens.
        let mut u = Usage::default();
        scan_usage(br#"{"type":"message","usage":{"input_tokens":50,"cache_creation_input_tokens":100000,"cache_read_input_tokens":2000,"output_tokens":10}}"#, &mut u);
        assert_eq!(
            u,
            Usage {
                input: Some(102_050),
                output: Some(10),
                cached: Some(2000)
            }
        );
    }

    #[test]
    fn openai_json_and_stream() {
        let mut u = Usage::default();
        scan_usage(br#"{"choices":[{"message":{"content":"the \"usage\": {x}"}}],"usage": {"prompt_tokens": 12, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 2}}}"#, &mut u);
        assert_eq!(
            u,
            Usage {
                input: Some(12),
                output: Some(5),
                cached: Some(2)
            }
        );

        let mut o = Observer::new(true);
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
        for piece in stream.as_bytes().chunks(5) {
            o.feed(piece);
        }
        o.end();
        assert_eq!(
            o.usage,
            Usage {
                input: Some(7),
                output: Some(3),
                cached: None
            }
        );
    }

    #[test]
    fn anthropic_stream_takes_start_and_delta() {
        let mut o = Observer::new(true);
        let s = "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\r\n\r\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n";
        o.feed(s.as_bytes());
        o.end();
        assert_eq!(
            o.usage,
            Usage {
                input: Some(25),
                output: Some(15),
                cached: None
            }
        );
    }

    #[test]
    fn responses_api_and_cut_stream() {
        let mut o = Observer::new(true);
        o.feed(b"event: response.created\ndata: {\"response\":{\"usage\":null}}\n\n");
        o.feed(b"event: response.completed\ndata: {\"response\":{\"usage\":{\"input_tokens\":4,\"output_tokens\":9,\"input_tokens_details\":{\"cached_tokens\":1}}}}");
        o.end(); // stream cut before the blank line: what arrived still counts
        assert_eq!(
            o.usage,
            Usage {
                input: Some(4),
                output: Some(9),
                cached: Some(1)
            }
        );
    }

    #[test]
    fn large_json_body_keeps_only_its_tail_and_still_finds_usage() {
        let mut o = Observer::new(false);
        let filler = format!("{{\"data\":[\"{}\"],", "x".repeat(3 * 1024 * 1024));
        for piece in filler.as_bytes().chunks(16 * 1024) {
            o.feed(piece);
            assert!(o.buf.len() <= MAX_JSON_WHOLE.max(2 * JSON_TAIL) + 16 * 1024);
        }
        o.feed(br#""usage":{"prompt_tokens":40,"completion_tokens":0}}"#);
        o.end();
        assert_eq!((o.usage.input, o.usage.output), (Some(40), Some(0)));
    }

    #[test]
    fn events_split_anywhere_including_inside_terminators() {
        let stream = "data: {\"a\":1}\r\n\r\ndata: {\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
        for size in 1..8 {
            let mut o = Observer::new(true);
            for piece in stream.as_bytes().chunks(size) {
                o.feed(piece);
            }
            assert!(
                o.buf.is_empty(),
                "every event was complete (chunk size {size})"
            );
            o.end();
            assert_eq!(
                (o.usage.input, o.usage.output),
                (Some(2), Some(3)),
                "chunk size {size}"
            );
        }
        assert_eq!(find_event_end(b"a\n\nb", 0), Some((1, 3)));
        assert_eq!(find_event_end(b"a\r\n\r\nb", 0), Some((2, 5)));
        assert_eq!(find_event_end(b"a\nb\n", 0), None);
        assert_eq!(find_event_end(b"a\n\n", 5), None);
    }
}
