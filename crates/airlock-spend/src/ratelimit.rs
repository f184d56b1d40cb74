//! Rate limits per token, identity or credential: requests per minute and tokens per minute,
//! each a GCRA (generic cell rate algorithm: one "theoretical arrival time" per limit, no
//! counters to reset, bursts up to a minute's allowance). A request's tokens are not known up
//! front, so it is admitted on its estimate (the body's length / 3 plus its `max_tokens` or
//! the default) and the unused part is credited back when it ends.
//!
//! The limits live in the database (`rate_limits`); their state in memory.

use crate::budget::Kind;
use airlock_store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

const WINDOW_NS: i64 = 60_000_000_000;

struct Limiter {
    id: String,
    rpm: Option<i64>,
    tpm: Option<i64>,
    req_tat: i64,
    tok_tat: i64,
}

/// Every rate limit's state.
pub struct RateLimits {
    map: Mutex<HashMap<(Kind, String), Vec<Limiter>>>,
    epoch: Instant,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            map: Mutex::default(),
            epoch: Instant::now(),
        }
    }
}

/// What the `x-ratelimit-*` headers say (the tightest limit that applies).
#[derive(Debug, Clone, Default)]
pub struct Info {
    /// Requests per minute, remaining, nanoseconds until the bucket is full again.
    pub requests: Option<(i64, i64, i64)>,
    /// Tokens per minute, remaining, nanoseconds until full.
    pub tokens: Option<(i64, i64, i64)>,
    /// When refused: nanoseconds until a retry can pass.
    pub retry_after_ns: Option<i64>,
    /// Refused for good (the request is larger than a minute's allowance).
    pub no_retry: bool,
}

/// Tokens admitted on an estimate, credited back (the unused part) when the request ends.
pub struct Hold {
    limits: Arc<RateLimits>,
    keys: Vec<(Kind, String)>,
    /// Each token limiter's arrival time right after this admission: a credit never reaches
    /// further back than what this request's charge still holds in the future.
    after: Vec<(String, i64)>,
    estimate: i64,
    done: bool,
}

/// Why a request was refused.
pub struct Refused {
    /// What to tell the client.
    pub message: String,
    /// Headers.
    pub info: Info,
}

fn tighter(a: Option<(i64, i64, i64)>, b: (i64, i64, i64)) -> Option<(i64, i64, i64)> {
    match a {
        Some(x) if x.1 <= b.1 => Some(x),
        _ => Some(b),
    }
}

impl RateLimits {
    fn now_ns(&self) -> i64 {
        self.epoch.elapsed().as_nanos() as i64
    }

    /// Loads the limits (keeping the state of those that stay).
    pub async fn reload(&self, store: &Store) -> Result<(), airlock_store::StoreError> {
        let rows = store.list_rate_limits().await?;
        let mut next: HashMap<(Kind, String), Vec<Limiter>> = HashMap::new();
        let mut cur = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for r in rows {
            let Some(kind) = Kind::parse(&r.kind) else {
                continue;
            };
            let old = cur
                .get(&(kind, r.key.clone()))
                .and_then(|l| l.iter().find(|o| o.id == r.id));
            let (req_tat, tok_tat) = old.map(|o| (o.req_tat, o.tok_tat)).unwrap_or((0, 0));
            next.entry((kind, r.key.clone()))
                .or_default()
                .push(Limiter {
                    id: r.id,
                    rpm: r.rpm,
                    tpm: r.tpm,
                    req_tat,
                    tok_tat,
                });
        }
        *cur = next;
        Ok(())
    }

    /// Sets one limit with nothing used (tests).
    #[cfg(test)]
    pub(crate) fn insert(&self, kind: Kind, key: &str, rpm: Option<i64>, tpm: Option<i64>) {
        if let Ok(mut m) = self.map.lock() {
            m.entry((kind, key.to_string())).or_default().push(Limiter {
                id: format!("r-{key}"),
                rpm,
                tpm,
                req_tat: 0,
                tok_tat: 0,
            });
        }
    }

    /// Whether any limit exists.
    pub fn is_empty(&self) -> bool {
        self.map.lock().map(|m| m.is_empty()).unwrap_or(false)
    }

    /// Admits one request of `tokens` (estimated) for every subject, or refuses it; all or
    /// nothing.
    pub fn admit(
        self: &Arc<Self>,
        subjects: &[(Kind, &str)],
        tokens: i64,
    ) -> Result<(Option<Hold>, Info), Refused> {
        let now = self.now_ns();
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut info = Info::default();
        let mut worst: Option<(i64, String)> = None;
        let mut any = false;
        // Check everything first.
        for (kind, key) in subjects {
            let Some(list) = map.get(&(*kind, key.to_string())) else {
                continue;
            };
            for l in list {
                any = true;
                if let Some(rpm) = l.rpm {
                    let t = WINDOW_NS / rpm.max(1);
                    let tat = l.req_tat.max(now) + t;
                    if tat - now > WINDOW_NS {
                        let wait = tat - now - WINDOW_NS;
                        if worst.as_ref().is_none_or(|(w, _)| wait > *w) {
                            worst = Some((
                                wait,
                                format!("{rpm} requests per minute on {}", whose(*kind, key)),
                            ));
                        }
                    }
                }
                if let Some(tpm) = l.tpm {
                    if tokens > tpm {
                        return Err(Refused {
                            message: format!(
                                "this request may use up to {tokens} tokens, more than the limit of {tpm} tokens per minute; set a smaller max_tokens"
                            ),
                                                        info: Info {
                                no_retry: true,
                                ..Info::default()
                            },
                        });
                    }
                    let t = WINDOW_NS / tpm.max(1);
                    let tat = l.tok_tat.max(now) + tokens * t;
                    if tat - now > WINDOW_NS {
                        let wait = tat - now - WINDOW_NS;
                        if worst.as_ref().is_none_or(|(w, _)| wait > *w) {
                            worst = Some((
                                wait,
                                format!("{tpm} tokens per minute on {}", whose(*kind, key)),
                            ));
                        }
                    }
                }
            }
        }
        if !any {
            return Ok((None, info));
        }
        if let Some((wait, what)) = worst {
            info.retry_after_ns = Some(wait);
            for (kind, key) in subjects {
                for l in map.get(&(*kind, key.to_string())).into_iter().flatten() {
                    fill(&mut info, l, now);
                }
            }
            return Err(Refused {
                message: format!(
                    "the rate limit of {what} is reached; retry in {:.1}s",
                    wait as f64 / 1e9
                ),
                info,
            });
        }
        let mut keys = Vec::new();
        let mut after = Vec::new();
        for (kind, key) in subjects {
            let k = (*kind, key.to_string());
            if let Some(list) = map.get_mut(&k) {
                for l in list.iter_mut() {
                    if let Some(rpm) = l.rpm {
                        l.req_tat = l.req_tat.max(now) + WINDOW_NS / rpm.max(1);
                    }
                    if let Some(tpm) = l.tpm {
                        l.tok_tat = l.tok_tat.max(now) + tokens * (WINDOW_NS / tpm.max(1));
                        after.push((l.id.clone(), l.tok_tat));
                    }
                    fill(&mut info, l, now);
                }
                keys.push(k);
            }
        }
        Ok((
            Some(Hold {
                limits: self.clone(),
                keys,
                after,
                estimate: tokens,
                done: false,
            }),
            info,
        ))
    }

    fn credit(&self, keys: &[(Kind, String)], after: &[(String, i64)], unused: i64) {
        if unused <= 0 {
            return;
        }
        let now = self.now_ns();
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for k in keys {
            for l in map.get_mut(k).into_iter().flatten() {
                if let Some(tpm) = l.tpm {
                    let held = after
                        .iter()
                        .find(|(id, _)| *id == l.id)
                        .map(|(_, t)| (t - now).max(0))
                        .unwrap_or(0);
                    let back = unused.saturating_mul(WINDOW_NS / tpm.max(1)).min(held);
                    l.tok_tat = (l.tok_tat - back).max(now);
                }
            }
        }
    }
}

fn fill(info: &mut Info, l: &Limiter, now: i64) {
    if let Some(rpm) = l.rpm {
        let t = WINDOW_NS / rpm.max(1);
        let used = (l.req_tat - now).max(0);
        let remaining = ((WINDOW_NS - used) / t).clamp(0, rpm);
        info.requests = tighter(info.requests, (rpm, remaining, used));
    }
    if let Some(tpm) = l.tpm {
        let t = WINDOW_NS / tpm.max(1);
        let used = (l.tok_tat - now).max(0);
        let remaining = ((WINDOW_NS - used) / t).clamp(0, tpm);
        info.tokens = tighter(info.tokens, (tpm, remaining, used));
    }
}

impl Hold {
    /// Credits back what the request did not use of its estimate; `None` (the provider may
    /// have used tokens it did not report) credits nothing.
    pub fn settle(mut self, used_tokens: Option<i64>) {
        self.done = true;
        if let Some(u) = used_tokens {
            let unused = self.estimate - u.clamp(0, self.estimate);
            self.limits.credit(&self.keys, &self.after, unused);
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.done {
            self.limits.credit(&self.keys, &self.after, self.estimate);
        }
    }
}

/// `6m0s`-style durations for the `x-ratelimit-reset-*` headers (as OpenAI writes them).
pub fn reset_text(ns: i64) -> String {
    let ms = (ns.max(0) + 999_999) / 1_000_000;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

/// Adds the `x-ratelimit-*` headers (and `retry-after` when refused).
pub fn headers(info: &Info, h: &mut http::HeaderMap) {
    // The client sees airlock's limits, not a mix with the provider's.
    let theirs: Vec<http::HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("x-ratelimit-"))
        .cloned()
        .collect();
    for k in theirs {
        h.remove(k);
    }
    let mut set = |k: &'static str, v: String| {
        if let Ok(v) = http::HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    if let Some((limit, remaining, reset)) = info.requests {
        set("x-ratelimit-limit-requests", limit.to_string());
        set("x-ratelimit-remaining-requests", remaining.to_string());
        set("x-ratelimit-reset-requests", reset_text(reset));
    }
    if let Some((limit, remaining, reset)) = info.tokens {
        set("x-ratelimit-limit-tokens", limit.to_string());
        set("x-ratelimit-remaining-tokens", remaining.to_string());
        set("x-ratelimit-reset-tokens", reset_text(reset));
    }
    if info.no_retry {
        set("x-should-retry", "false".into());
    }
    if let Some(w) = info.retry_after_ns {
        set(
            "retry-after",
            ((w + 999_999_999) / 1_000_000_000).max(1).to_string(),
        );
        set("retry-after-ms", ((w + 999_999) / 1_000_000).to_string());
    }
    if info.no_retry {
        // Retrying cannot help: the request is larger than a minute's allowance.
        h.remove("retry-after");
    }
}

/// Names what a limit is on, for refusals: `project \`x\``; a token is "this token" (its id
/// says nothing to the client) and an identity is named (it is the caller's own).
fn whose(kind: Kind, key: &str) -> String {
    match kind {
        Kind::Token => "this token".into(),
        Kind::Identity => format!("identity `{key}`"),
        Kind::Credential => format!("credential `{key}`"),
        Kind::Project => format!("project `{key}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rpm: Option<i64>, tpm: Option<i64>) -> Arc<RateLimits> {
        let l = RateLimits::default();
        if let Ok(mut m) = l.map.lock() {
            m.insert(
                (Kind::Token, "t".into()),
                vec![Limiter {
                    id: "r".into(),
                    rpm,
                    tpm,
                    req_tat: 0,
                    tok_tat: 0,
                }],
            );
        }
        Arc::new(l)
    }

    #[test]
    fn requests_per_minute_allow_a_minutes_burst_then_refuse_with_a_wait() {
        let l = limits(Some(10), None);
        let s = [(Kind::Token, "t")];
        for i in 0..10 {
            let (_, info) = l
                .admit(&s, 0)
                .unwrap_or_else(|_| panic!("request {i} fits"));
            assert_eq!(info.requests.map(|r| r.1), Some(9 - i));
        }
        let e = l
            .admit(&s, 0)
            .err()
            .unwrap_or_else(|| panic!("11th refused"));
        let wait = e.info.retry_after_ns.unwrap_or_default();
        assert!(wait > 0 && wait <= 6_000_000_000, "{wait}");
        assert!(e.message.contains("10 requests per minute"));
        // Another key is not limited.
        assert!(matches!(l.admit(&[(Kind::Token, "u")], 0), Ok((None, _))));
    }

    #[test]
    fn tokens_are_admitted_on_the_estimate_and_credited_back() {
        let l = limits(None, Some(1000));
        let s = [(Kind::Token, "t")];
        let (h, _) = l.admit(&s, 600).ok().unwrap_or_else(|| panic!("fits"));
        assert!(l.admit(&s, 600).is_err(), "600 + 600 > 1000");
        h.unwrap_or_else(|| panic!("held")).settle(Some(100));
        assert!(l.admit(&s, 600).is_ok(), "100 used + 600 fits");
        assert!(l
            .admit(&s, 2000)
            .err()
            .is_some_and(|e| e.message.contains("max_tokens")));
    }

    #[test]
    fn reset_texts() {
        assert_eq!(reset_text(1), "1ms");
        assert_eq!(reset_text(6_000_000_000), "6s");
        assert_eq!(reset_text(61_000_000_000), "1m1s");
    }
}
