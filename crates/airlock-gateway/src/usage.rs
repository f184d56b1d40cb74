//! Usage recording, from one place: every request owns a [`Record`]; whichever way the request
//! ends (refusal, upstream error, finished stream, client gone) the record is sent exactly once
//! when it is dropped. A background writer stores records in batches (one transaction per
//! batch), so the hot path never waits for the disk.
//!
//! Token counts come from the provider's response: the `usage` object of a JSON body, or of the
//! SSE events of a stream (OpenAI's final chunk with `stream_options.include_usage`, Anthropic's
//! `message_start` / `message_delta`, the Responses API's `response.completed`). The parser
//! looks only for the `"usage"` key, so it never parses whole bodies and never keeps content.

use airlock_store::{Store, UsageRow};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde::Deserialize;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Counters exposed on `/metrics`.
#[derive(Default)]
pub struct Counters {
    /// Requests finished.
    pub requests: AtomicU64,
    /// Records dropped because the writer's queue was full.
    pub dropped: AtomicU64,
    /// Records that failed to write.
    pub write_errors: AtomicU64,
    /// Input tokens.
    pub input_tokens: AtomicU64,
    /// Output tokens.
    pub output_tokens: AtomicU64,
    /// Upstream fallbacks taken.
    pub fallbacks: AtomicU64,
    /// Refused requests.
    pub refused: AtomicU64,
    /// Requests refused before a token was verified: counted here, not stored, so that
    /// unauthenticated traffic cannot fill the database.
    pub unauthenticated: AtomicU64,
}

/// Sends records to the writer.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<UsageRow>,
    /// Shared counters.
    pub counters: Arc<Counters>,
}

impl Recorder {
    /// Starts the writer task; it ends when every `Recorder` is dropped, after writing what
    /// is queued.
    pub fn start(store: Store) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<UsageRow>(65_536);
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let handle = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(512);
            while let Some(first) = rx.recv().await {
                batch.push(first);
                // Group commit: take whatever else is already queued, then wait briefly for more.
                let deadline = tokio::time::sleep(Duration::from_millis(20));
                tokio::pin!(deadline);
                while batch.len() < 512 {
                    tokio::select! {
                        r = rx.recv() => match r { Some(u) => batch.push(u), None => break },
                        _ = &mut deadline => break,
                    }
                }
                if let Err(e) = store.record_usage(&batch).await {
                    c.write_errors
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    tracing::error!(error = %e, rows = batch.len(), "usage write failed");
                }
                batch.clear();
            }
        });
        (Recorder { tx, counters }, handle)
    }

    fn send(&self, row: UsageRow) {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        if row.outcome == "refused" {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
        }
        if row.token_id.is_none() {
            self.counters
                .unauthenticated
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(i) = row.input_tokens {
            self.counters
                .input_tokens
                .fetch_add(i.max(0) as u64, Ordering::Relaxed);
        }
        if let Some(o) = row.output_tokens {
            self.counters
                .output_tokens
                .fetch_add(o.max(0) as u64, Ordering::Relaxed);
        }
        if self.tx.try_send(row).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("usage queue full: a usage record was dropped");
        }
    }
}

/// The per-request record; sent once, on drop.
pub struct Record {
    /// The row being filled in.
    pub row: UsageRow,
    started: Instant,
    recorder: Recorder,
    sent: bool,
}

impl Record {
    /// Starts a record for a request.
    pub fn start(recorder: Recorder, row: UsageRow) -> Self {
        Record {
            row,
            started: Instant::now(),
            recorder,
            sent: false,
        }
    }

    /// Marks the time the upstream answered.
    pub fn mark_ttfb(&mut self) {
        self.row.ttfb_ms = Some(self.started.elapsed().as_millis() as i64);
    }

    /// Sets status and outcome.
    pub fn finish(&mut self, status: u16, outcome: &str) {
        self.row.status = i64::from(status);
        self.row.outcome = outcome.to_string();
    }

    fn apply(&mut self, u: &Usage) {
        if u.input.is_some() {
            self.row.input_tokens = u.input;
        }
        if u.output.is_some() {
            self.row.output_tokens = u.output;
        }
        if u.cached.is_some() {
            self.row.cached_tokens = u.cached;
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if self.sent {
            return;
        }
        self.sent = true;
        self.row.latency_ms = self.started.elapsed().as_millis() as i64;
        let row = std::mem::take(&mut self.row);
        self.recorder.send(row);
    }
}

#[derive(Default, Debug, PartialEq)]
struct Usage {
    input: Option<i64>,
    output: Option<i64>,
    cached: Option<i64>,
}

#[derive(Deserialize)]
struct UsageObj {
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    cache_read_input_tokens: Option<i64>,
    prompt_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    cached_tokens: Option<i64>,
}

/// Finds every `"usage": {…}` object in a JSON text and reads its token counts.
fn scan_usage(text: &[u8], into: &mut Usage) {
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
            let input = u.prompt_tokens.or(u.input_tokens);
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
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
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

    fn end(&mut self) {
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

/// A response body passed through to the client frame by frame as it arrives, observed for
/// usage, with an idle timeout; owns the request's [`Record`].
pub struct ObservedBody<B> {
    inner: Pin<Box<B>>,
    observer: Observer,
    record: Option<Record>,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    status: u16,
}

impl<B> ObservedBody<B> {
    /// Wraps an upstream body.
    pub fn new(inner: B, observer: Observer, record: Record, idle: Duration, status: u16) -> Self {
        ObservedBody {
            inner: Box::pin(inner),
            observer,
            record: Some(record),
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            status,
        }
    }

    fn close(&mut self, outcome: &str) {
        if let Some(mut r) = self.record.take() {
            self.observer.end();
            r.apply(&self.observer.usage);
            r.finish(self.status, outcome);
        }
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.observer.feed(data);
                }
                if this.inner.is_end_stream() {
                    // Known-length bodies: hyper stops polling after the last byte.
                    let ok = if this.status < 400 {
                        "ok"
                    } else {
                        "upstream_refused"
                    };
                    this.close(ok);
                } else {
                    let deadline = tokio::time::Instant::now() + this.idle;
                    this.sleep.as_mut().reset(deadline);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(error = %e, "upstream body failed mid-response");
                this.close("upstream_error");
                Poll::Ready(Some(Err(std::io::Error::other("upstream failed"))))
            }
            Poll::Ready(None) => {
                let ok = if this.status < 400 {
                    "ok"
                } else {
                    "upstream_refused"
                };
                this.close(ok);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.sleep.as_mut().poll(cx).is_ready() {
                    this.close("stream_idle_timeout");
                    return Poll::Ready(Some(Err(std::io::Error::other("upstream went silent"))));
                }
                Poll::Pending
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

impl<B> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        // Reached only if the body did not finish: the client went away mid-response.
        if self.record.is_some() {
            self.close("client_disconnected");
        }
    }
}

use std::future::Future;

#[cfg(test)]
mod tests {
    use super::*;

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
