//! Budgets: spend caps on a token, an identity (a token's subject) or a credential, per UTC
//! day, per calendar month (UTC) or in total, in integer nano-dollars.
//!
//! Before a request is forwarded, its estimated maximum cost is **reserved** against every
//! budget it touches: input tokens estimated from the body (one per 3 bytes, more than any
//! tokenizer yields for text) at the input price, plus `max_tokens` (or
//! `max_completion_tokens`, `max_output_tokens`; `[budgets] default_max_output_tokens` when the
//! request names none) at the output price. A request whose reservation does not fit is
//! refused up front (429 `insufficient_quota`). When the request ends its reservation is
//! released and its real cost added. So the spend can pass a limit only by what requests in
//! flight cost beyond their reservations: nothing for requests that set `max_tokens` (the
//! provider stops there) and whose prompt is text; for requests without it, at most their
//! output beyond `default_max_output_tokens` each.
//!
//! State lives in memory, loaded at start (and when budgets change) from the usage rows of the
//! current period; one airlock per database (as the audit log requires).

use crate::clock::{Clock, SystemClock};
use airlock_store::{Store, UsageDimension};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What a budget caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A token id.
    Token,
    /// A token subject.
    Identity,
    /// A credential name.
    Credential,
    /// A project (of the token).
    Project,
}

impl Kind {
    /// Parses `token`, `identity`, `credential`, `project`.
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "token" => Kind::Token,
            "identity" => Kind::Identity,
            "credential" => Kind::Credential,
            "project" => Kind::Project,
            _ => return None,
        })
    }

    fn dimension(self) -> UsageDimension {
        match self {
            Kind::Token => UsageDimension::Token,
            Kind::Identity => UsageDimension::Identity,
            Kind::Credential => UsageDimension::Credential,
            Kind::Project => UsageDimension::Project,
        }
    }
}

/// Over what time a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// A UTC day.
    Day,
    /// A calendar month (UTC).
    Month,
    /// Forever.
    Total,
}

impl Period {
    /// Parses `day`, `month`, `total`.
    pub fn parse(s: &str) -> Option<Period> {
        Some(match s {
            "day" => Period::Day,
            "month" => Period::Month,
            "total" => Period::Total,
            _ => return None,
        })
    }

    /// Start and end (unix ms) of the period holding `now_ms`.
    pub fn bounds(self, now_ms: i64) -> (i64, i64) {
        const DAY: i64 = 86_400_000;
        match self {
            Period::Total => (0, i64::MAX),
            Period::Day => {
                let start = now_ms.div_euclid(DAY) * DAY;
                (start, start + DAY)
            }
            Period::Month => {
                let days = now_ms.div_euclid(DAY);
                let (y, m, _) = civil_from_days(days);
                let start = days_from_civil(y, m, 1) * DAY;
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (start, days_from_civil(ny, nm, 1) * DAY)
            }
        }
    }
}

// Days since 1970-01-01 <-> proleptic Gregorian dates (H. Hinnant's algorithms).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

struct Entry {
    id: String,
    limit: i64,
    period: Period,
    start: i64,
    end: i64,
    spent: i64,
    reserved: i64,
}

impl Entry {
    fn roll(&mut self, now: i64) {
        if now >= self.end {
            let (s, e) = self.period.bounds(now);
            self.start = s;
            self.end = e;
            self.spent = 0;
        }
    }
}

/// Every budget's spend and reservations.
pub struct Budgets {
    entries: Mutex<HashMap<(Kind, String), Vec<Entry>>>,
    reload: tokio::sync::Mutex<()>,
    clock: Arc<dyn Clock>,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets::with_clock(Arc::new(SystemClock))
    }
}

/// One budget's state, for listing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// Budget id.
    pub id: String,
    /// Spent this period, nano-dollars.
    pub spent_nanos: i64,
    /// Reserved by requests in flight.
    pub reserved_nanos: i64,
    /// Start of the current period (unix ms).
    pub period_start_ms: i64,
    /// The cap, nano-dollars.
    pub limit_nanos: i64,
}

/// A request's reservations; released (and its cost settled) exactly once, when the
/// request's record is taken or, failing that, when dropped.
pub struct Reservation {
    budgets: Arc<Budgets>,
    held: Vec<((Kind, String), i64)>,
    settled: bool,
}

/// Why a request does not fit.
pub struct Refused {
    /// What is over.
    pub what: String,
}

impl Budgets {
    /// No budgets yet, periods read on `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Budgets {
            entries: Mutex::default(),
            reload: tokio::sync::Mutex::default(),
            clock,
        }
    }

    /// Loads every budget with its spend in the current period.
    pub async fn load(store: &Store) -> Result<Budgets, airlock_store::StoreError> {
        let b = Budgets::default();
        b.reload(store).await?;
        Ok(b)
    }

    /// Re-reads budgets and their spend (keeping reservations in flight).
    pub async fn reload(&self, store: &Store) -> Result<(), airlock_store::StoreError> {
        let _one = self.reload.lock().await;
        let rows = store.list_budgets().await?;
        let now = self.clock.now_ms();
        // Budgets that stay keep their in-memory spend (charges settled but not yet written
        // would be lost by a re-read); only new ones are read from the usage rows.
        let known: HashMap<String, (i64, i64, i64)> = self
            .entries
            .lock()
            .map(|m| {
                m.values()
                    .flatten()
                    .map(|e| (e.id.clone(), (e.start, e.end, e.spent)))
                    .collect()
            })
            .unwrap_or_default();
        let mut next: HashMap<(Kind, String), Vec<Entry>> = HashMap::new();
        for r in rows {
            let (Some(kind), Some(period)) = (Kind::parse(&r.kind), Period::parse(&r.period))
            else {
                continue;
            };
            let (start, end, spent) = match known.get(&r.id) {
                Some(k) => *k,
                None => {
                    let (start, end) = period.bounds(now);
                    let spent = store.spent_since(kind.dimension(), &r.key, start).await?;
                    (start, end, spent)
                }
            };
            next.entry((kind, r.key.clone())).or_default().push(Entry {
                id: r.id,
                limit: r.limit_nanos,
                period,
                start,
                end,
                spent,
                reserved: 0,
            });
        }
        let mut cur = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (k, list) in next.iter_mut() {
            if let Some(old) = cur.get(k) {
                for e in list.iter_mut() {
                    if let Some(o) = old.iter().find(|o| o.id == e.id) {
                        e.reserved = o.reserved;
                    }
                }
            }
        }
        *cur = next;
        Ok(())
    }

    /// Sets one budget with nothing spent (tests).
    #[cfg(test)]
    pub(crate) fn insert(&self, kind: Kind, key: &str, limit: i64) {
        if let Ok(mut m) = self.entries.lock() {
            m.entry((kind, key.to_string())).or_default().push(Entry {
                id: format!("b-{key}"),
                limit,
                period: Period::Total,
                start: 0,
                end: i64::MAX,
                spent: 0,
                reserved: 0,
            });
        }
    }

    /// Whether any budget exists (the hot path skips everything when none does).
    pub fn is_empty(&self) -> bool {
        self.entries.lock().map(|e| e.is_empty()).unwrap_or(false)
    }

    /// Whether `key` of `kind` has a budget.
    pub fn has(&self, kind: Kind, key: &str) -> bool {
        self.entries
            .lock()
            .map(|e| e.contains_key(&(kind, key.to_string())))
            .unwrap_or(true)
    }

    /// Reserves `estimate` against every budget of `subjects`, all or nothing.
    pub fn reserve(
        self: &Arc<Self>,
        subjects: &[(Kind, &str)],
        estimate: i64,
    ) -> Result<Reservation, Refused> {
        let now = self.clock.now_ms();
        let mut map = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (kind, key) in subjects {
            if let Some(list) = map.get_mut(&(*kind, key.to_string())) {
                for e in list.iter_mut() {
                    e.roll(now);
                    if e.spent.saturating_add(e.reserved).saturating_add(estimate) > e.limit {
                        let left = (e.limit - e.spent - e.reserved).max(0);
                        return Err(Refused {
                            what: format!(
                                "the {} budget of {} `{key}` ({} USD{}) has {} USD left, and this request may cost up to {} USD",
                                match e.period {
                                    Period::Day => "daily",
                                    Period::Month => "monthly",
                                    Period::Total => "total",
                                },
                                match kind {
                                    Kind::Token => "token",
                                    Kind::Identity => "identity",
                                    Kind::Credential => "credential",
                                    Kind::Project => "project",
                                },
                                usd(e.limit),
                                match e.period {
                                    Period::Total => "",
                                    _ => ", resets at the period's end",
                                },
                                usd(left),
                                usd(estimate),
                            ),
                        });
                    }
                }
            }
        }
        let mut held = Vec::new();
        for (kind, key) in subjects {
            let k = (*kind, key.to_string());
            if let Some(list) = map.get_mut(&k) {
                for e in list.iter_mut() {
                    e.reserved += estimate;
                }
                held.push((k, estimate));
            }
        }
        Ok(Reservation {
            budgets: self.clone(),
            held,
            settled: false,
        })
    }

    fn settle(&self, held: &[((Kind, String), i64)], charges: &[((Kind, String), i64)]) {
        let now = self.clock.now_ms();
        let mut map = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (k, est) in held {
            if let Some(list) = map.get_mut(k) {
                for e in list.iter_mut() {
                    e.reserved = (e.reserved - est).max(0);
                }
            }
        }
        for (k, cost) in charges {
            if let Some(list) = map.get_mut(k) {
                for e in list.iter_mut() {
                    e.roll(now);
                    e.spent = e.spent.saturating_add(*cost);
                }
            }
        }
    }

    /// The state of every budget.
    pub fn status(&self) -> Vec<Status> {
        let map = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.values()
            .flatten()
            .map(|e| Status {
                id: e.id.clone(),
                spent_nanos: e.spent,
                reserved_nanos: e.reserved,
                period_start_ms: e.start,
                limit_nanos: e.limit,
            })
            .collect()
    }
}

/// Nano-dollars as an exact decimal string.
pub fn usd(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    format!("{sign}{}.{:09}", n / 1_000_000_000, n % 1_000_000_000)
}

impl Reservation {
    /// Releases the reservation and charges the real cost to each of `to` (the token, its
    /// identity and project, the credential that served).
    pub fn settle(mut self, cost: Option<i64>, to: &[(Kind, &str)]) {
        self.settled = true;
        let charges: Vec<_> = match cost.filter(|c| *c > 0) {
            Some(c) => to.iter().map(|(k, n)| ((*k, n.to_string()), c)).collect(),
            None => Vec::new(),
        };
        self.budgets.settle(&self.held, &charges);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.settled = true;
            self.budgets.settle(&self.held, &[]);
        }
    }
}

/// What to reserve for a request: input estimated from the body (one token per 3 bytes),
/// output from the request's own limit or the default.
pub fn estimate(rate: crate::pricing::Rate, input_tokens: i64, output_tokens: i64) -> i64 {
    input_tokens
        .saturating_mul(rate.input)
        .saturating_add(output_tokens.saturating_mul(rate.output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_days_and_calendar_months() {
        // 2026-02-14T12:00:00Z
        let t = 1_771_070_400_000;
        let (s, e) = Period::Day.bounds(t);
        assert_eq!((s, e - s), (1_771_027_200_000, 86_400_000));
        let (s, e) = Period::Month.bounds(t);
        assert_eq!(s, days_from_civil(2026, 2, 1) * 86_400_000);
        assert_eq!((e - s) / 86_400_000, 28);
        let (s, e) = Period::Month.bounds(days_from_civil(2024, 12, 31) * 86_400_000 + 5);
        assert_eq!(civil_from_days(s / 86_400_000), (2024, 12, 1));
        assert_eq!(civil_from_days(e / 86_400_000), (2025, 1, 1));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    fn budgets(limit: i64) -> Arc<Budgets> {
        let b = Budgets::default();
        if let Ok(mut m) = b.entries.lock() {
            m.insert(
                (Kind::Token, "t".into()),
                vec![Entry {
                    id: "b1".into(),
                    limit,
                    period: Period::Total,
                    start: 0,
                    end: i64::MAX,
                    spent: 0,
                    reserved: 0,
                }],
            );
        }
        Arc::new(b)
    }

    #[test]
    fn reservations_bound_the_spend_and_settle_to_the_real_cost() {
        let b = budgets(1000);
        let subj = [(Kind::Token, "t"), (Kind::Identity, "alice")];
        let r1 = b.reserve(&subj, 600).ok().unwrap_or_else(|| panic!("fits"));
        assert!(
            b.reserve(&subj, 600).is_err(),
            "600 + 600 > 1000 while the first is in flight"
        );
        r1.settle(Some(100), &[(Kind::Token, "t"), (Kind::Identity, "alice")]);
        let r2 = b
            .reserve(&subj, 600)
            .ok()
            .unwrap_or_else(|| panic!("100 + 600 fits"));
        drop(r2); // released, nothing charged
        let s = &b.status()[0];
        assert_eq!((s.spent_nanos, s.reserved_nanos), (100, 0));
        // A key without a budget is not limited.
        assert!(b.reserve(&[(Kind::Token, "other")], 1 << 40).is_ok());
    }

    #[test]
    fn a_daily_budget_starts_again_at_midnight_utc_by_the_injected_clock() {
        // 2026-02-14T23:59:00Z
        let day_end = 1_771_113_600_000;
        let clock = Arc::new(crate::ManualClock::at(day_end - 60_000));
        let b = Arc::new(Budgets::with_clock(clock.clone()));
        let (start, end) = Period::Day.bounds(clock.now_ms());
        if let Ok(mut m) = b.entries.lock() {
            m.insert(
                (Kind::Identity, "alice".into()),
                vec![Entry {
                    id: "b1".into(),
                    limit: 1000,
                    period: Period::Day,
                    start,
                    end,
                    spent: 0,
                    reserved: 0,
                }],
            );
        }
        let who = [(Kind::Identity, "alice")];
        let r = b.reserve(&who, 900).ok().unwrap_or_else(|| panic!("fits"));
        r.settle(Some(900), &who);
        assert!(b.reserve(&who, 200).is_err(), "900 + 200 > 1000 today");
        clock.advance(60_000);
        let r = b.reserve(&who, 200);
        assert!(r.is_ok(), "a new UTC day starts from zero");
        drop(r);
        assert_eq!(b.status()[0].period_start_ms, day_end);
        assert_eq!(b.status()[0].spent_nanos, 0);
    }
}
