//! The per-request record: every request owns a [`Record`], sent exactly once (from `Drop` if
//! nothing else sent it), which becomes one audit record and, for a request with a valid token,
//! one usage row, through the writer in `usage`. Its charge (`airlock_spend::charge`) is
//! settled when it is taken. A streamed answer passes through [`ObservedBody`], which reads
//! usage as it goes and holds the last frame until the record is durable (I5).

use crate::usage::{Durable, Recorder};
use airlock_audit::log::Note;
use airlock_audit::Record as AuditRecord;
use airlock_providers::usage::{scan_usage, Observer, Usage};
use airlock_spend::charge::{Charge, Ending, Payers, Tokens};
use airlock_store::UsageRow;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The per-request record: one usage row and one audit record, sent exactly once.
pub struct Record {
    /// The row being filled in.
    pub row: UsageRow,
    /// Why the request was refused or failed, for the audit record.
    pub reason: Option<String>,
    /// The fingerprint of the provider key used.
    pub key: Option<String>,
    started: Instant,
    recorder: Recorder,
    sent: bool,
    capped: bool,
    /// What it is charged: reservations, attempts, settlement.
    charge: Charge,
    /// The request's trace, when traces are on.
    pub trace: Option<crate::otel::TraceCtx>,
    /// The prompt for its span (only with `[otel] capture_prompts`).
    pub prompt: Option<String>,
    /// The SSE events of its streamed answer, when it streamed.
    pub streamed_events: Option<i64>,
}

impl Record {
    /// The request's charge, changed only through its transitions.
    pub fn charge(&mut self) -> &mut Charge {
        &mut self.charge
    }

    /// Starts a record for a request.
    pub fn start(recorder: Recorder, row: UsageRow) -> Self {
        Record {
            row,
            reason: None,
            key: None,
            started: Instant::now(),
            recorder,
            sent: false,
            capped: false,
            charge: Charge::new(),
            trace: None,
            prompt: None,
            streamed_events: None,
        }
    }

    /// Adds a reason in front of any already given (e.g. the fallbacks taken).
    pub fn add_reason(&mut self, reason: &str) {
        self.reason = Some(match self.reason.take() {
            Some(prev) => format!("{reason}; {prev}"),
            None => reason.to_string(),
        });
    }

    /// Counts this record against the anonymous audit budget (a refusal of a revoked token:
    /// its id is known, but anyone holding the leaked token could flood the log with it).
    pub fn cap_like_anonymous(&mut self) {
        self.capped = true;
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
        // Counts come from the upstream's body: keep them within what every JSON reader of
        // the audit log represents exactly (2^53), and never negative.
        let clamp = |v: Option<i64>| v.map(|n| n.clamp(0, 1 << 53));
        if u.input.is_some() {
            self.row.input_tokens = clamp(u.input);
        }
        if u.output.is_some() {
            self.row.output_tokens = clamp(u.output);
        }
        if u.cached.is_some() {
            self.row.cached_tokens = clamp(u.cached);
        }
    }

    /// Reads usage from a whole (non-streamed) body.
    pub fn observe_body(&mut self, body: &[u8]) {
        let mut u = Usage::default();
        scan_usage(body, &mut u);
        self.apply(&u);
    }

    /// Takes the row and builds the audit record; `None` when there is nothing to write (an
    /// anonymous refusal over the rate cap). Marks the record sent.
    fn take(&mut self) -> Option<(Option<UsageRow>, AuditRecord)> {
        self.sent = true;
        self.row.latency_ms = self.started.elapsed().as_millis() as i64;
        let ending = match self.row.outcome.as_str() {
            "client_disconnected" | "upstream_error" => Ending::Cut {
                events: self.streamed_events.unwrap_or(0),
            },
            "stream_idle_timeout" => Ending::Silent,
            _ => Ending::Finished,
        };
        let r = &self.row;
        let settled = self.charge.settle(
            ending,
            r.model.as_deref(),
            Tokens {
                input: r.input_tokens,
                cached: r.cached_tokens,
                output: r.output_tokens,
            },
            self.recorder.prices(),
            Payers {
                token: r.token_id.as_deref(),
                identity: r.subject.as_deref(),
                project: r.project.as_deref(),
                credential: r.credential.as_deref(),
            },
        );
        if r.model.is_some() {
            self.row.cost_nanos = settled.cost_nanos;
        }
        let charged = settled.charged_nanos;
        self.row.charged_nanos = charged;
        let row = std::mem::take(&mut self.row);
        self.recorder.count(&row, self.started.elapsed());
        if let Some(d) = self.recorder.detector() {
            d.observe(&row, charged);
        }
        // Spans for requests with a verified token only: anonymous noise must not crowd out
        // real spans, nor attach itself to anyone's trace.
        if let (Some(t), Some(tc), Some(_)) =
            (self.recorder.tracer(), &self.trace, row.token_id.as_ref())
        {
            t.record(
                &row,
                tc,
                self.started.elapsed(),
                self.reason.as_deref(),
                self.prompt.as_deref(),
            );
        }
        let anonymous = row.token_id.is_none();
        if anonymous {
            self.recorder
                .counters
                .unauthenticated
                .fetch_add(1, Ordering::Relaxed);
        }
        if (anonymous || self.capped) && !self.recorder.anonymous_allowed() {
            self.recorder
                .counters
                .audit_anonymous_skipped
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let audit = {
            // Within what every JSON reader of the log represents exactly.
            let cost = row.cost_nanos.map(|n| ((n + 500) / 1000).clamp(0, 1 << 53));
            AuditRecord {
                ts: row.ts,
                actor_kind: if anonymous { "anonymous" } else { "token" }.into(),
                actor: row.token_id.clone(),
                subject: row.subject.clone(),
                action: if row.outcome == "refused" {
                    "request.refused"
                } else {
                    "inference"
                }
                .into(),
                target_kind: Some("endpoint".into()),
                target: Some(row.endpoint.clone()),
                outcome: row.outcome.clone(),
                reason: self.reason.take(),
                request_id: Some(row.request_id.clone()),
                client_ip: row.client_ip.clone(),
                credential: row.credential.clone(),
                model: row.model.clone(),
                status: Some(row.status),
                input_tokens: row.input_tokens,
                output_tokens: row.output_tokens,
                cost_micros: cost,
                key: self.key.clone(),
                ..Default::default()
            }
        };
        // Usage rows are kept for requests that presented a valid token only.
        Some(((!anonymous).then_some(row), audit))
    }

    /// Before a stream's first byte: a durable record that this token is using this credential
    /// for this model now. A stream's events reach the client as they arrive, so this record
    /// (not the one at the end, which carries the token counts) is what makes I5 hold for
    /// streams: nothing is served before the use is on record.
    pub async fn commit_stream_start(&self) -> Durable {
        let row = &self.row;
        let rec = AuditRecord {
            ts: crate::util::now_ms(),
            actor_kind: "token".into(),
            actor: row.token_id.clone(),
            subject: row.subject.clone(),
            action: "inference.stream".into(),
            target_kind: Some("endpoint".into()),
            target: Some(row.endpoint.clone()),
            outcome: "started".into(),
            request_id: Some(row.request_id.clone()),
            client_ip: row.client_ip.clone(),
            credential: row.credential.clone(),
            model: row.model.clone(),
            status: Some(row.status),
            // The credentials tried before this one used their keys too.
            reason: self.reason.clone(),
            key: self.key.clone(),
            ..Default::default()
        };
        self.recorder.write(None, rec).await
    }

    /// Sends the record and waits until it is durable.
    pub async fn commit(self) -> Durable {
        self.commit_noted(Note::NotAnswered).await
    }

    /// Sends a refusal's record and waits until it is durable; the refusal is sent either way,
    /// and a record written late says so.
    pub async fn commit_refusal(self) -> Durable {
        self.commit_noted(Note::Refused).await
    }

    async fn commit_noted(mut self, note: Note) -> Durable {
        // Queued before the first await, so a cancelled request cannot lose its record.
        let rx = self.send_acked_noted(note);
        let ok = rx.await.unwrap_or(false);
        self.recorder.verdict(ok)
    }

    /// Sends the record, returning a receiver for the writer's acknowledgement.
    /// (An anonymous refusal over the audit cap has nothing to write: answered at once.)
    fn send_acked_noted(&mut self, note: Note) -> oneshot::Receiver<bool> {
        match self.take() {
            Some((usage, audit)) => self.recorder.send(usage, audit, note),
            None => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(true);
                rx
            }
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if self.sent {
            return;
        }
        if let Some((usage, audit)) = self.take() {
            self.recorder.write_nowait(usage, audit);
        }
    }
}

/// A streamed response body passed through to the client frame by frame as it arrives,
/// observed for usage, with an idle timeout; owns the request's [`Record`]. Its end (the last
/// frame, or the end of stream) is held back until the audit record is durable (I5).
pub struct ObservedBody<B> {
    inner: Pin<Box<B>>,
    observer: Observer,
    record: Option<Record>,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    status: u16,
    held: Option<Held>,
    done: bool,
}

struct Held {
    frame: Option<Frame<Bytes>>,
    ack: Option<oneshot::Receiver<bool>>,
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
            held: None,
            done: false,
        }
    }

    fn outcome(&self) -> &'static str {
        if self.status < 400 {
            "ok"
        } else {
            "upstream_refused"
        }
    }

    /// The response ended normally: send the record and hold `frame` until it is durable.
    fn end_with(&mut self, frame: Option<Frame<Bytes>>) {
        let outcome = self.outcome();
        let ack = self.record.as_mut().map(|r| {
            self.observer.end();
            r.apply(&self.observer.usage());
            if self.observer.is_sse() {
                r.streamed_events = Some(self.observer.events());
            }
            r.finish(self.status, outcome);
            r.send_acked_noted(Note::StreamCut)
        });
        self.held = Some(Held { frame, ack });
    }

    /// The response failed: send the record without waiting.
    fn close(&mut self, outcome: &str, reason: &str) {
        if let Some(mut r) = self.record.take() {
            if !r.sent {
                self.observer.end();
                r.apply(&self.observer.usage());
                if self.observer.is_sse() {
                    r.streamed_events = Some(self.observer.events());
                }
                r.finish(self.status, outcome);
                r.add_reason(reason);
            }
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
        if this.held.is_none() && !this.done {
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.observer.feed(data);
                    }
                    if !this.inner.is_end_stream() {
                        let deadline = tokio::time::Instant::now() + this.idle;
                        this.sleep.as_mut().reset(deadline);
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    // The last frame: it waits for the audit record.
                    this.end_with(Some(frame));
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream body failed mid-response");
                    this.close("upstream_error", "the provider's response broke off");
                    this.done = true;
                    return Poll::Ready(Some(Err(std::io::Error::other("upstream failed"))));
                }
                Poll::Ready(None) => this.end_with(None),
                Poll::Pending => {
                    if this.sleep.as_mut().poll(cx).is_ready() {
                        this.close("stream_idle_timeout", "the provider went silent");
                        this.done = true;
                        return Poll::Ready(Some(Err(std::io::Error::other(
                            "upstream went silent",
                        ))));
                    }
                    return Poll::Pending;
                }
            }
        }
        if let Some(held) = this.held.as_mut() {
            let ok = match held.ack.as_mut() {
                Some(rx) => match Pin::new(rx).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r.unwrap_or(false),
                },
                None => false,
            };
            let frame = this.held.take().and_then(|h| h.frame);
            this.done = true;
            let verdict = match &this.record {
                Some(r) => r.recorder.verdict(ok),
                None => Durable::Yes,
            };
            if !verdict.may_answer() {
                tracing::error!(
                    "stream aborted before its end: its audit record could not be written"
                );
                return Poll::Ready(Some(Err(std::io::Error::other(
                    "audit record could not be written",
                ))));
            }
            return Poll::Ready(frame.map(Ok));
        }
        Poll::Ready(None)
    }

    fn size_hint(&self) -> SizeHint {
        if self.done || self.held.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.held.is_none()
    }
}

impl<B> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        // Reached with an unsent record only if the client went away mid-response.
        if self.record.as_ref().is_some_and(|r| !r.sent) {
            self.close(
                "client_disconnected",
                "the client closed the connection mid-response",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Kit;
    use http_body_util::BodyExt;

    /// An SSE answer in three events, the last carrying usage, as a provider streams it.
    fn sse() -> Vec<&'static str> {
        vec![
            "data: {\"choices\":[{\"delta\":{\"content\":\"he\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"llo\"}}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
        ]
    }

    fn upstream(
        events: Vec<&'static str>,
    ) -> http_body_util::StreamBody<
        impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>>,
    > {
        http_body_util::StreamBody::new(futures_util::stream::iter(
            events
                .into_iter()
                .map(|e| Ok(Frame::data(Bytes::from_static(e.as_bytes())))),
        ))
    }

    fn record(kit: &Kit, id: &str) -> Record {
        let row = UsageRow {
            ts: crate::util::now_ms(),
            request_id: id.into(),
            token_id: Some("tok_unit".into()),
            subject: Some("alice".into()),
            endpoint: "/v1/chat/completions".into(),
            model: Some("gpt-4o-mini".into()),
            stream: true,
            ..Default::default()
        };
        Record::start(kit.app.recorder.clone(), row)
    }

    async fn stored(kit: &Kit, id: &str) -> Option<airlock_audit::Record> {
        let f = airlock_store::AuditFilter {
            action: Some("inference".into()),
            limit: 1000,
            ..Default::default()
        };
        let all = kit.app.store.audit_records(&f).await.ok()?;
        all.into_iter()
            .map(|s| s.record)
            .find(|r| r.request_id.as_deref() == Some(id))
    }

    #[tokio::test]
    async fn a_stream_ends_only_after_its_record_is_durable() {
        let kit = Kit::new("").await;
        // A body that knows its end, as a body with a length or an HTTP/2 stream does: its last
        // data frame is the one held back.
        let whole = Bytes::from(sse().concat());
        let mut body = ObservedBody::new(
            http_body_util::Full::new(whole.clone()),
            Observer::new(true),
            record(&kit, "req-whole"),
            Duration::from_secs(5),
            200,
        );
        // Another connection holds the database's write lock: the record cannot be written,
        // so the last frame must not reach the client.
        let db = kit.dir.path().join("airlock.db");
        let lock = rusqlite::Connection::open(&db).unwrap_or_else(|e| panic!("{e}"));
        lock.execute_batch("BEGIN EXCLUSIVE")
            .unwrap_or_else(|e| panic!("{e}"));
        let held = tokio::time::timeout(Duration::from_millis(500), body.frame()).await;
        assert!(
            held.is_err(),
            "I5: the end waits while its record cannot be written"
        );
        assert!(stored(&kit, "req-whole").await.is_none());
        lock.execute_batch("ROLLBACK")
            .unwrap_or_else(|e| panic!("{e}"));
        let last = body.frame().await;
        let data = last
            .and_then(|f| f.ok())
            .and_then(|f| f.into_data().ok())
            .unwrap_or_default();
        assert_eq!(data, whole, "every byte, once the record is durable");
        // Durable when the end was handed over: found without waiting for the writer.
        let r = stored(&kit, "req-whole").await;
        let r = r.unwrap_or_else(|| panic!("durable before the stream's end"));
        assert_eq!(r.outcome, "ok");
        assert_eq!((r.input_tokens, r.output_tokens), (Some(7), Some(2)));
    }

    #[tokio::test]
    async fn a_client_that_leaves_mid_stream_leaves_a_record_with_what_arrived() {
        let kit = Kit::new("").await;
        let mut body = ObservedBody::new(
            upstream(sse()),
            Observer::new(true),
            record(&kit, "req-cut"),
            Duration::from_secs(5),
            200,
        );
        let first = body.frame().await;
        assert!(first.is_some_and(|f| f.is_ok()));
        drop(body);
        kit.flush().await;
        let r = stored(&kit, "req-cut").await;
        let r = r.unwrap_or_else(|| panic!("recorded"));
        assert_eq!(r.outcome, "client_disconnected");
        assert_eq!(r.output_tokens, None, "no usage had arrived");
    }

    #[tokio::test]
    async fn a_provider_gone_silent_ends_the_stream_with_an_error_and_a_record() {
        let kit = Kit::new("").await;
        let silent = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, std::io::Error>,
        >());
        let mut body = ObservedBody::new(
            silent,
            Observer::new(true),
            record(&kit, "req-silent"),
            Duration::from_millis(200),
            200,
        );
        let got = body.frame().await;
        assert!(got.is_some_and(|f| f.is_err()), "an error, not a hang");
        drop(body);
        kit.flush().await;
        let r = stored(&kit, "req-silent").await;
        assert_eq!(r.map(|r| r.outcome).as_deref(), Some("stream_idle_timeout"));
    }
}
