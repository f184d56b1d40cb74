//! Anomaly detection: a stolen key shows up while it is being used, not in next month's bill.
//!
//! Why one file: one detector: the statistics, the per-subject state and the checks that read it.
//!
//! Every finished request that airlock forwarded to a provider is observed twice, once for the
//! credential that served it and once for the token's identity (its subject); requests airlock
//! refused itself (bad or revoked tokens, scope, budgets, rate limits, unknown models) are not,
//! so they can neither train nor trip the detector. A request counts in the bucket of the
//! moment it finishes (a long stream cannot slip into a bucket that is already past). For each
//! of these subjects the detector keeps, in memory:
//!
//! - request and spend tallies per time bucket (`[anomaly] bucket`, default 5 minutes) over the
//!   baseline window (`baseline_days`, default 7). The bucket being filled is compared with the
//!   subject's own active buckets in the window by a robust z-score, `0.6745 · (x − median) /
//!   MAD` (Iglewicz and Hoaglin's modified z-score; when the MAD is zero, the mean absolute
//!   deviation scaled by 1.2533 stands in). The spread is never taken below the noise of a
//!   count: √median requests (a Poisson count with mean m has standard deviation √m), and for
//!   spend the same relative share of the median; only a baseline of zero (a dormant key)
//!   makes any rise count. Without that floor a perfectly regular key (the same 72 requests
//!   every day) would alarm on its 73rd. The bucket alarms when z ≥ `z_threshold` (3.5) and
//!   its value is at least an absolute floor (`min_requests`, `min_spend_usd`), so that a quiet
//!   key does not alarm on one request. The baseline is "how busy is it when it is busy", so a key used in bursts a few
//!   hours a day is not a spike every day; a key with no activity in the window has no
//!   baseline, and anything over the floor is a spike (a dormant key waking up).
//! - what it has been seen with: models, client address ranges (/24 for IPv4, /48 for IPv6),
//!   countries (with a MaxMind GeoIP2/GeoLite2 Country or City file in `geoip`), hours of the
//!   day (UTC). The first sight of a new one alarms.
//!
//! A subject younger than `learning_hours` learns silently (a new credential or identity has
//! no history to be compared with). A credential's age counts from its creation, so a key that
//! sat unused and is then used in bulk alarms at once. Each alarm fires once per kind and
//! bucket (spikes) or once per new value (first sights).
//!
//! The history is rebuilt from the usage table when the server starts, so a restart neither
//! forgets the baseline nor takes every known address for a new one.
//!
//! An alarm is an `anomaly.detected` audit record, a count in `airlock_anomalies_total`, and a
//! webhook (the gateway's `alarms` module). With `suspend_credential` naming its kind, an alarm about a
//! credential suspends it (`airlock credential resume NAME` lifts it); with `revoke_token`
//! naming it, the token whose request raised the alarm is revoked. A subject raises at most
//! `MAX_FIRST_SIGHTS` first-sight alarms per bucket (the rest are learnt silently and counted).
//! Observation runs when a request's record is taken, after its response; the hot path pays a
//! map lookup and two additions under one mutex.

use airlock_store::UsageRow;
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::mpsc;

/// What kind of subject an anomaly is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    /// A provider credential (by name).
    Credential,
    /// A token subject (a person, a service account, an OIDC workload).
    Identity,
}

impl SubjectKind {
    /// Its name in alerts, metrics and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            SubjectKind::Credential => "credential",
            SubjectKind::Identity => "identity",
        }
    }
}

/// What was anomalous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Requests in a bucket far above the subject's baseline.
    RateSpike,
    /// Spend in a bucket far above the subject's baseline.
    SpendSpike,
    /// A model the subject never used.
    NewModel,
    /// A client address range the subject was never used from.
    NewIpRange,
    /// A country the subject was never used from (needs a GeoIP file).
    NewCountry,
    /// An hour of the day (UTC) the subject was never used in.
    NewHour,
}

impl Kind {
    /// Every kind, in metric order.
    pub const ALL: [Kind; 6] = [
        Kind::RateSpike,
        Kind::SpendSpike,
        Kind::NewModel,
        Kind::NewIpRange,
        Kind::NewCountry,
        Kind::NewHour,
    ];

    /// Its name in configuration, alerts, metrics and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Kind::RateSpike => "rate_spike",
            Kind::SpendSpike => "spend_spike",
            Kind::NewModel => "new_model",
            Kind::NewIpRange => "new_ip_range",
            Kind::NewCountry => "new_country",
            Kind::NewHour => "new_hour",
        }
    }

    /// Parses a configured name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The detector's settings (from `[anomaly]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bucket length, milliseconds.
    pub bucket_ms: i64,
    /// Buckets in the baseline window.
    pub baseline_buckets: i64,
    /// Modified z-score at or above which a bucket alarms.
    pub z_threshold: f64,
    /// A bucket with fewer requests never raises a rate alarm.
    pub min_requests: u64,
    /// A bucket with less spend never raises a spend alarm (nano-dollars).
    pub min_spend_nanos: i64,
    /// A subject younger than this raises nothing.
    pub learning_ms: i64,
    /// IPv4 range prefix length.
    pub v4_prefix: u8,
    /// IPv6 range prefix length.
    pub v6_prefix: u8,
    /// Kinds watched.
    pub watch: HashSet<Kind>,
    /// Kinds that suspend the credential an alarm is about.
    pub suspend_credential: HashSet<Kind>,
    /// First-sight kinds that revoke the token whose request raised the alarm.
    pub revoke_token: HashSet<Kind>,
    /// A spike kind alarms at most once per this long per subject (buckets).
    pub cooldown_ms: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bucket_ms: 300_000,
            baseline_buckets: 7 * 288,
            z_threshold: 3.5,
            min_requests: 20,
            min_spend_nanos: 1_000_000_000,
            learning_ms: 24 * 3_600_000,
            v4_prefix: 24,
            v6_prefix: 48,
            watch: Kind::ALL.into_iter().collect(),
            suspend_credential: HashSet::new(),
            revoke_token: HashSet::new(),
            cooldown_ms: 3_600_000,
        }
    }
}

/// Identities tracked at most (credentials always are); beyond it new ones are not watched and
/// `airlock_anomaly_untracked_total` counts them. Identities idle for a whole window are
/// forgotten.
const MAX_IDENTITIES: usize = 50_000;
/// Idle identities whose first sight is remembered, at most.
const MAX_DORMANT: usize = 1_000_000;
/// Values remembered per dimension and subject; past it, no new-value alarms for that one.
const MAX_SEEN: usize = 256;
/// First-sight alarms per subject and bucket at most.
const MAX_FIRST_SIGHTS: u32 = 10;

/// One alarm.
#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    /// What was anomalous.
    pub kind: Kind,
    /// Spikes: the current bucket, or today.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// Credential or identity.
    pub subject_kind: SubjectKind,
    /// Its name.
    pub subject: String,
    /// When (unix ms, detector clock).
    pub at_ms: i64,
    /// Start of the bucket it happened in.
    pub bucket_start_ms: i64,
    /// Spikes: the bucket's value so far (requests, or USD for spend).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed: Option<f64>,
    /// Spikes: the baseline's median.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median: Option<f64>,
    /// Spikes: the baseline's median absolute deviation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mad: Option<f64>,
    /// Spikes: the least spread the baseline was taken to have (a count's noise, see the
    /// module's documentation); the z-score divides by the larger of this and the MAD's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise: Option<f64>,
    /// Spikes: the modified z-score (absent when infinite: a baseline of zero, a dormant key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub z: Option<f64>,
    /// First sights: the new value (model, range, country, hour).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The request that raised it.
    pub request_id: String,
    /// Its client address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// Its model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The credential that served it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The token's identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// Whether the policy suspends the credential it is about.
    pub suspend_credential: bool,
    /// Whether the policy revokes the token that raised it.
    pub revoke_token: bool,
}

impl Anomaly {
    /// One line for the audit record and the log.
    pub fn describe(&self) -> String {
        let what = match self.kind {
            Kind::RateSpike | Kind::SpendSpike => {
                let unit = if self.kind == Kind::RateSpike {
                    "requests"
                } else {
                    "USD"
                };
                let when = if self.window == Some(Window::Day) {
                    let day = self.at_ms.div_euclid(DAY_MS) * DAY_MS;
                    format!(
                        "today (UTC, from {}), against whole days:",
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH
                                + std::time::Duration::from_millis(day.max(0) as u64)
                        )
                    )
                } else {
                    format!(
                        "in the bucket from {}, against busy buckets:",
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH
                                + std::time::Duration::from_millis(
                                    self.bucket_start_ms.max(0) as u64
                                )
                        )
                    )
                };
                format!(
                    "{} {} {when} a median of {} (MAD {}, noise floor {}, z {})",
                    fmt_num(self.observed.unwrap_or(0.0)),
                    unit,
                    fmt_num(self.median.unwrap_or(0.0)),
                    fmt_num(self.mad.unwrap_or(0.0)),
                    fmt_num(self.noise.unwrap_or(0.0)),
                    self.z.map(fmt_num).unwrap_or_else(|| "unbounded".into())
                )
            }
            _ => format!("first use with {}", self.value.as_deref().unwrap_or("?")),
        };
        format!(
            "{} on {} {}: {what}",
            self.kind.name(),
            self.subject_kind.name(),
            self.subject
        )
    }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

/// A baseline's centre and spread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// Median.
    pub median: f64,
    /// Median absolute deviation from the median.
    pub mad: f64,
    /// Mean absolute deviation from the median (stands in when the MAD is zero).
    pub mean_ad: f64,
    /// The least spread the baseline is taken to have: the noise of a count (see the top).
    pub noise: f64,
}

impl Stat {
    /// The statistics of `values` (sorted in place).
    pub fn of(values: &mut [f64]) -> Stat {
        if values.is_empty() {
            return Stat {
                median: 0.0,
                mad: 0.0,
                mean_ad: 0.0,
                noise: 0.0,
            };
        }
        values.sort_by(f64::total_cmp);
        let median = median_sorted(values);
        let mut dev: Vec<f64> = values.iter().map(|v| (v - median).abs()).collect();
        let mean_ad = dev.iter().sum::<f64>() / dev.len() as f64;
        dev.sort_by(f64::total_cmp);
        Stat {
            median,
            mad: median_sorted(&dev),
            mean_ad,
            noise: 0.0,
        }
    }

    /// The same statistics with a spread of at least `noise`.
    fn with_noise(self, noise: f64) -> Stat {
        Stat { noise, ..self }
    }

    /// The modified z-score of `x`; `None` for unbounded (a baseline of no spread and no
    /// noise, and `x` above it).
    pub fn z(&self, x: f64) -> Option<f64> {
        let robust = if self.mad > 0.0 {
            self.mad / 0.6745
        } else {
            1.253_314 * self.mean_ad
        };
        let scale = robust.max(self.noise);
        if scale > 0.0 {
            Some((x - self.median) / scale)
        } else if x > self.median {
            None
        } else {
            Some(0.0)
        }
    }

    /// The noise floors of a window's request and spend statistics: √median requests, and
    /// the same share of the median spend.
    fn counted(requests: Stat, cost: Stat) -> (Stat, Stat) {
        let share = if requests.median > 0.0 {
            1.0 / requests.median.sqrt()
        } else {
            0.0
        };
        (
            requests.with_noise(requests.median.sqrt()),
            cost.with_noise(cost.median * share),
        )
    }
}

fn median_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[derive(Default, Clone, Copy)]
struct Tally {
    requests: u64,
    cost: i64,
}

#[derive(Clone, Copy)]
struct Baseline {
    /// Busy buckets of the window, leaving out the last day.
    requests: Stat,
    cost: Stat,
    /// How many of those whole days had traffic.
    active_days: usize,
    /// Whole UTC days of the window since the subject exists, idle ones as zero.
    day_requests: Stat,
    day_cost: Stat,
    /// Today's tally before the current bucket.
    today: Tally,
}

const DAY_MS: i64 = 86_400_000;

struct Subject {
    /// Since when the subject exists (credential creation, first use of an identity).
    first_ms: i64,
    /// Tallies per bucket index, ascending, within the baseline window and the current bucket.
    buckets: VecDeque<(i64, Tally)>,
    /// The baseline of a bucket, computed once when the bucket starts.
    baseline: Option<(i64, Baseline)>,
    /// The bucket each spike kind last alarmed in, then the day each daily kind did.
    alarmed: [i64; 4],
    /// The values they alarmed at.
    alarmed_value: [f64; 4],
    seen: [HashSet<String>; 3],
    hours: u32,
    /// First-sight alarms raised in a bucket: (bucket, count).
    sights: (i64, u32),
    /// First sights alarm from this time on (after learning; again after a long absence,
    /// whose first sights were forgotten).
    sights_from: i64,
}

impl Subject {
    fn new(first_ms: i64) -> Self {
        Subject {
            first_ms,
            buckets: VecDeque::new(),
            baseline: None,
            alarmed: [i64::MIN; 4],
            alarmed_value: [0.0; 4],
            seen: Default::default(),
            hours: 0,
            sights: (i64::MIN, 0),
            sights_from: i64::MIN,
        }
    }

    fn add(&mut self, b: i64, requests: u64, cost: i64, window: i64) {
        match self.buckets.back_mut() {
            Some((last, t)) if *last == b => {
                t.requests += requests;
                t.cost = t.cost.saturating_add(cost);
            }
            Some((last, _)) if *last > b => {
                // Out of order (rebuild, or a clock step back): insert in place.
                let at = self.buckets.partition_point(|(i, _)| *i < b);
                match self.buckets.get_mut(at) {
                    Some((i, t)) if *i == b => {
                        t.requests += requests;
                        t.cost = t.cost.saturating_add(cost);
                    }
                    _ => self.buckets.insert(at, (b, Tally { requests, cost })),
                }
            }
            _ => self.buckets.push_back((b, Tally { requests, cost })),
        }
        let newest = self.buckets.back().map(|(i, _)| *i).unwrap_or(b);
        while self
            .buckets
            .front()
            .is_some_and(|(i, _)| *i < newest - window)
        {
            self.buckets.pop_front();
        }
    }

    fn baseline(&mut self, b: i64, s: &Settings) -> Baseline {
        if let Some((at, base)) = self.baseline {
            if at == b {
                return base;
            }
        }
        // Busy buckets of the window, except the last day's: what happens today cannot raise
        // the bar it is measured against.
        let guard = (DAY_MS + s.bucket_ms - 1) / s.bucket_ms;
        let from = b - s.baseline_buckets;
        let (mut req, mut cost): (Vec<f64>, Vec<f64>) = self
            .buckets
            .iter()
            .filter(|(i, _)| *i >= from && *i < b - guard)
            .map(|(_, t)| (t.requests as f64, t.cost as f64))
            .unzip();
        // Whole days since the subject exists (at most the window's), idle ones as zero:
        // running all day at a busy bucket's pace shows here.
        let today = (b * s.bucket_ms).div_euclid(DAY_MS);
        let days = (s.baseline_buckets * s.bucket_ms / DAY_MS).max(1);
        // Its first day is partial: whole days only.
        let first_day = self.first_ms.div_euclid(DAY_MS) + 1;
        // The oldest day of the window is being trimmed: whole days only.
        let day0 = (today - days + 1).max(first_day);
        let n = (today - day0).max(0) as usize;
        let (mut day_req, mut day_cost) = (vec![0.0; n], vec![0.0; n]);
        let mut now = Tally::default();
        for (i, t) in &self.buckets {
            let d = (*i * s.bucket_ms).div_euclid(DAY_MS);
            if d >= day0 && d < today {
                day_req[(d - day0) as usize] += t.requests as f64;
                day_cost[(d - day0) as usize] += t.cost as f64;
            } else if d == today && *i < b {
                now.requests += t.requests;
                now.cost = now.cost.saturating_add(t.cost);
            }
        }
        let active_days = day_req.iter().filter(|v| **v > 0.0).count();
        let (requests, cost) = Stat::counted(Stat::of(&mut req), Stat::of(&mut cost));
        let (day_requests, day_cost) =
            Stat::counted(Stat::of(&mut day_req), Stat::of(&mut day_cost));
        let base = Baseline {
            requests,
            cost,
            active_days,
            day_requests,
            day_cost,
            today: now,
        };
        self.baseline = Some((b, base));
        base
    }

    fn current(&self, b: i64) -> Tally {
        let at = self.buckets.partition_point(|(i, _)| *i < b);
        match self.buckets.get(at) {
            Some((i, t)) if *i == b => *t,
            _ => Tally::default(),
        }
    }

    fn newest(&self) -> Option<i64> {
        self.buckets.back().map(|(i, _)| *i)
    }

    /// Remembers `v` in dimension `d`; true when it is new (and there was room).
    fn first_sight(&mut self, d: usize, v: &str) -> bool {
        let set = &mut self.seen[d];
        if set.contains(v) || set.len() >= MAX_SEEN {
            return false;
        }
        set.insert(v.to_string());
        true
    }
}

/// What one request brings to the detector.
struct Obs<'a> {
    now: i64,
    cost: i64,
    model: Option<&'a str>,
    range: Option<String>,
    country: Option<String>,
    hour: u32,
}

/// Which tally a spike is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// The current bucket against busy buckets.
    Bucket,
    /// Today (UTC) against whole days.
    Day,
}

/// (kind, window of a spike, observed value, baseline, new value, whether its policy may act).
type Alarm = (
    Kind,
    Option<Window>,
    Option<f64>,
    Option<Stat>,
    Option<String>,
    bool,
);

/// The detector.
pub struct Detector {
    settings: Settings,
    subjects: Mutex<HashMap<(SubjectKind, String), Subject>>,
    geo: Option<maxminddb::Reader<Vec<u8>>>,
    /// Where request times come from.
    clock: std::sync::Arc<dyn crate::Clock>,
    /// Added to request times (the test clock; 0 unless `AIRLOCK_TEST_CLOCK=1`).
    offset_ms: AtomicI64,
    /// Whether the test clock may be moved.
    pub test_clock: bool,
    tx: mpsc::Sender<Anomaly>,
    /// Alarms dropped because the alert queue was full.
    pub dropped: AtomicU64,
    /// Identities not watched because `MAX_IDENTITIES` were.
    pub untracked: AtomicU64,
    /// First-sight alarms not raised because their subject had raised `MAX_FIRST_SIGHTS` in
    /// the bucket.
    pub suppressed: AtomicU64,
    /// The bucket idle identities were last swept in.
    swept: AtomicI64,
    /// Identities not watched now, with when they were first seen.
    dormant: Mutex<HashMap<String, i64>>,
    /// Alarms raised, by kind and subject kind.
    pub raised: [[AtomicU64; 2]; 6],
    /// Webhook deliveries.
    pub deliveries: std::sync::Arc<Deliveries>,
}

/// A subject seen with a model, a client address and an hour of the day.
pub type Seen = (
    SubjectKind,
    String,
    Option<String>,
    Option<String>,
    Option<u32>,
);

/// What the detector learns from the usage table at start.
#[derive(Default)]
pub struct History {
    /// Credentials and their creation times.
    pub credentials: Vec<(String, i64)>,
    /// (subject kind, name, first use).
    pub firsts: Vec<(SubjectKind, String, i64)>,
    /// (subject kind, name, bucket index, requests, cost).
    pub tallies: Vec<(SubjectKind, String, i64, u64, i64)>,
    /// (subject kind, name, model, client ip, hour of day).
    pub seen: Vec<Seen>,
}

impl Detector {
    /// A detector reading `clock` and sending its alarms to `tx`.
    pub fn new(
        settings: Settings,
        geo: Option<maxminddb::Reader<Vec<u8>>>,
        test_clock: bool,
        tx: mpsc::Sender<Anomaly>,
        clock: std::sync::Arc<dyn crate::Clock>,
    ) -> Self {
        Detector {
            settings,
            clock,
            subjects: Mutex::new(HashMap::new()),
            geo,
            offset_ms: AtomicI64::new(0),
            test_clock,
            tx,
            dropped: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            swept: AtomicI64::new(i64::MIN),
            dormant: Mutex::new(HashMap::new()),
            raised: Default::default(),
            deliveries: Default::default(),
        }
    }

    /// Moves the detector's clock forward (tests: a week of traffic without waiting a week).
    pub fn advance(&self, ms: i64) -> i64 {
        self.offset_ms.fetch_add(ms, Ordering::SeqCst) + ms
    }

    /// The detector's clock offset.
    pub fn offset(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }

    /// A credential added while serving: its age counts from its creation.
    pub fn credential_added(&self, name: &str, created_ms: i64) {
        if let Ok(mut map) = self.subjects.lock() {
            map.entry((SubjectKind::Credential, name.to_string()))
                .or_insert_with(|| Subject::new(created_ms));
        }
    }

    /// Loads what the usage table says about the subjects (at start, before serving).
    pub fn learn(&self, h: History) {
        let s = &self.settings;
        let Ok(mut map) = self.subjects.lock() else {
            return;
        };
        for (name, created) in h.credentials {
            map.entry((SubjectKind::Credential, name))
                .or_insert_with(|| Subject::new(created));
        }
        // Identities start dormant with their first sight; those with history in the window
        // are watched (up to the cap).
        let mut dormant = self.dormant.lock().unwrap_or_else(|e| e.into_inner());
        for (kind, name, first) in h.firsts {
            match kind {
                SubjectKind::Identity => {
                    let e = dormant.entry(name).or_insert(first);
                    *e = (*e).min(first);
                }
                SubjectKind::Credential => {
                    let e = map
                        .entry((kind, name))
                        .or_insert_with(|| Subject::new(first));
                    e.first_ms = e.first_ms.min(first);
                }
            }
        }
        let mut identities = map
            .keys()
            .filter(|(k, _)| *k == SubjectKind::Identity)
            .count();
        for (kind, name, b, requests, cost) in h.tallies {
            let key = (kind, name);
            if kind == SubjectKind::Identity && !map.contains_key(&key) {
                if identities >= MAX_IDENTITIES {
                    continue;
                }
                identities += 1;
                let first = dormant.remove(&key.1).unwrap_or(b * s.bucket_ms);
                map.insert(key.clone(), Subject::new(first));
            }
            if let Some(e) = map.get_mut(&key) {
                e.add(b, requests, cost, s.baseline_buckets);
            }
        }
        drop(dormant);
        for (kind, name, model, ip, hour) in h.seen {
            let range = ip.as_deref().and_then(|ip| self.range(ip));
            let country = ip.as_deref().and_then(|ip| self.country(ip));
            if let Some(e) = map.get_mut(&(kind, name)) {
                if let Some(m) = model {
                    e.first_sight(0, &m);
                }
                if let Some(r) = range {
                    e.first_sight(1, &r);
                }
                if let Some(c) = country {
                    e.first_sight(2, &c);
                }
                if let Some(h) = hour {
                    e.hours |= 1 << (h % 24);
                }
            }
        }
    }

    fn range(&self, ip: &str) -> Option<String> {
        let ip: IpAddr = ip.parse().ok()?;
        Some(mask(ip, self.settings.v4_prefix, self.settings.v6_prefix))
    }

    fn country(&self, ip: &str) -> Option<String> {
        let geo = self.geo.as_ref()?;
        let ip: IpAddr = ip.parse().ok()?;
        let found = geo.lookup(ip).ok()?;
        let c: maxminddb::geoip2::Country = found.decode().ok()??;
        c.country.iso_code.map(str::to_string)
    }

    /// Observes a finished request (called once, when its record is taken). `cost` is what
    /// it is charged: its priced cost, or its estimate when the provider reported no usage.
    /// Only requests airlock forwarded count.
    pub fn observe(&self, row: &UsageRow, cost: Option<i64>) {
        let now = self
            .clock
            .now_ms()
            .saturating_add(self.offset_ms.load(Ordering::Relaxed));
        self.observe_at(row, cost, now);
    }

    fn observe_at(&self, row: &UsageRow, cost: Option<i64>, now: i64) {
        if row.token_id.is_none() || row.attempts == 0 {
            return;
        }
        let ip = row.client_ip.as_deref();
        let obs = Obs {
            now,
            cost: cost.unwrap_or(0).max(0),
            // A model is known once a provider accepted a request for it: names the provider
            // refused cannot fill the set or raise alarms.
            model: row
                .model
                .as_deref()
                .filter(|_| (200..400).contains(&row.status)),
            range: ip.and_then(|ip| self.range(ip)),
            country: ip.and_then(|ip| self.country(ip)),
            hour: (now.div_euclid(3_600_000) % 24) as u32,
        };
        let mut alarms = Vec::new();
        {
            let Ok(mut map) = self.subjects.lock() else {
                return;
            };
            self.sweep(&mut map, now);
            for (kind, name) in [
                (SubjectKind::Credential, row.credential.as_deref()),
                (SubjectKind::Identity, row.subject.as_deref()),
            ] {
                let Some(name) = name else { continue };
                let key = (kind, name.to_string());
                if kind == SubjectKind::Identity
                    && !map.contains_key(&key)
                    && map.len() >= MAX_IDENTITIES
                {
                    self.untracked.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let subject = map.entry(key).or_insert_with(|| {
                    let back = match kind {
                        SubjectKind::Identity => {
                            self.dormant.lock().ok().and_then(|mut d| d.remove(name))
                        }
                        SubjectKind::Credential => None,
                    };
                    let mut s = Subject::new(back.unwrap_or(now));
                    if back.is_some() {
                        // Back after a long absence: not a newcomer for spikes, but what it
                        // was seen with is forgotten, so first sights learn again.
                        s.sights_from = now.saturating_add(self.settings.learning_ms);
                    }
                    s
                });
                for (k, window, observed, stat, value, acting) in self.check(subject, &obs) {
                    alarms.push(Anomaly {
                        kind: k,
                        window,
                        subject_kind: kind,
                        subject: name.to_string(),
                        at_ms: now,
                        bucket_start_ms: now.div_euclid(self.settings.bucket_ms)
                            * self.settings.bucket_ms,
                        observed,
                        median: stat.map(|s| s.median),
                        mad: stat.map(|s| s.mad),
                        noise: stat.map(|s| s.noise),
                        z: stat.and_then(|s| observed.and_then(|x| s.z(x))),
                        value,
                        request_id: row.request_id.clone(),
                        client_ip: row.client_ip.clone(),
                        model: row.model.clone(),
                        credential: row.credential.clone(),
                        identity: row.subject.clone(),
                        token_id: row.token_id.clone(),
                        suspend_credential: acting
                            && kind == SubjectKind::Credential
                            && self.settings.suspend_credential.contains(&k),
                        // Only first sights: there the request itself is the anomaly. A spike
                        // is many requests, often of many tokens; none of them is it.
                        revoke_token: acting
                            && self.settings.revoke_token.contains(&k)
                            && window.is_none(),
                    });
                }
            }
        }
        for a in alarms {
            self.raised[a.kind.index()][a.subject_kind as usize].fetch_add(1, Ordering::Relaxed);
            if self.tx.try_send(a).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Once per bucket: forgets identities idle for a whole window (credentials stay).
    fn sweep(&self, map: &mut HashMap<(SubjectKind, String), Subject>, now: i64) {
        let s = &self.settings;
        let b = now.div_euclid(s.bucket_ms);
        if self.swept.swap(b, Ordering::Relaxed) == b {
            return;
        }
        let mut gone = Vec::new();
        map.retain(|(kind, name), subject| {
            let keep = *kind == SubjectKind::Credential
                || subject
                    .newest()
                    .is_some_and(|n| n >= b - s.baseline_buckets);
            if !keep {
                gone.push((name.clone(), subject.first_ms));
            }
            keep
        });
        // An idle identity keeps when it was first seen: when it comes back it is no
        // newcomer (no learning period), and its empty history makes a burst a spike.
        if let Ok(mut dormant) = self.dormant.lock() {
            for (name, first) in gone {
                if dormant.len() < MAX_DORMANT {
                    dormant.insert(name, first);
                }
            }
        }
    }

    /// Counts one request against a subject; returns its alarms.
    fn check(&self, subject: &mut Subject, o: &Obs<'_>) -> Vec<Alarm> {
        let s = &self.settings;
        let b = o.now.div_euclid(s.bucket_ms);
        let base = subject.baseline(b, s);
        subject.add(b, 1, o.cost, s.baseline_buckets);
        let mut out = Vec::new();
        let learnt = o.now.saturating_sub(subject.first_ms) >= s.learning_ms;
        // Spikes are judged against history older than a day (see `baseline`), so a new
        // subject learns a day longer for them. Days are judged only for subjects busy on
        // most days (at least four whole days with traffic): a weekly job or a weekend-only
        // key has no daily norm to break.
        let spikes_learnt =
            o.now.saturating_sub(subject.first_ms) >= s.learning_ms.saturating_add(DAY_MS);
        let days_learnt = base.active_days >= 4;
        let cooldown = (s.cooldown_ms / s.bucket_ms).max(1);
        if learnt && spikes_learnt {
            let t = subject.current(b);
            let day = o.now.div_euclid(DAY_MS);
            let d_req = base.today.requests + t.requests;
            let d_cost = base.today.cost.saturating_add(t.cost);
            let spikes = [
                (
                    Kind::RateSpike,
                    Window::Bucket,
                    t.requests as f64,
                    base.requests,
                    t.requests >= s.min_requests,
                    1.0,
                    b,
                ),
                (
                    Kind::SpendSpike,
                    Window::Bucket,
                    t.cost as f64,
                    base.cost,
                    t.cost >= s.min_spend_nanos,
                    1e-9,
                    b,
                ),
                (
                    Kind::RateSpike,
                    Window::Day,
                    d_req as f64,
                    base.day_requests,
                    d_req >= s.min_requests,
                    1.0,
                    day,
                ),
                (
                    Kind::SpendSpike,
                    Window::Day,
                    d_cost as f64,
                    base.day_cost,
                    d_cost >= s.min_spend_nanos,
                    1e-9,
                    day,
                ),
            ];
            for (i, (kind, window, x, stat, over_floor, unit, at)) in spikes.into_iter().enumerate()
            {
                // Once a day for days; for buckets, once per cooldown (a new level is one
                // alarm an hour, not one a bucket, until the baseline has caught up).
                // Once per bucket and day; within the cooldown a later bucket alarms again only
                // at twice the last alarm's size (a decoy does not hide the real thing).
                // A bucket alarms once; a later bucket within the cooldown, and the same day,
                // alarm again only at twice the last alarm's size (a decoy hides nothing).
                let twice = x >= 2.0 * subject.alarmed_value[i];
                let quiet = match window {
                    Window::Day => subject.alarmed[i] == at && !twice,
                    Window::Bucket => {
                        subject.alarmed[i] == at
                            || (at.saturating_sub(subject.alarmed[i]) < cooldown && !twice)
                    }
                };
                if !s.watch.contains(&kind) || !over_floor || quiet {
                    continue;
                }
                if window == Window::Day && !days_learnt {
                    continue;
                }
                if stat.z(x).is_none_or(|z| z >= s.z_threshold) {
                    subject.alarmed[i] = at;
                    let scaled = Stat {
                        median: stat.median * unit,
                        mad: stat.mad * unit,
                        mean_ad: stat.mean_ad * unit,
                        noise: stat.noise * unit,
                    };
                    subject.alarmed_value[i] = x;
                    out.push((kind, Some(window), Some(x * unit), Some(scaled), None, true));
                }
            }
        }
        let dims = [
            (Kind::NewModel, 0, o.model.map(str::to_string)),
            (Kind::NewIpRange, 1, o.range.clone()),
            (Kind::NewCountry, 2, o.country.clone()),
        ];
        let mut sights = Vec::new();
        for (kind, d, v) in dims {
            let Some(v) = v else { continue };
            if !subject.seen[d].contains(&v) && subject.seen[d].len() < MAX_SEEN {
                sights.push((kind, Some(d), v));
            }
        }
        let bit = 1u32 << o.hour;
        if subject.hours & bit == 0 {
            sights.push((Kind::NewHour, None, format!("{:02}:00 UTC", o.hour)));
        }
        // An identity back after a long absence relearns what it is seen with: its first
        // sights alarm (someone may be using a forgotten key), but act on nothing until then.
        let acting = o.now >= subject.sights_from;
        for (kind, d, v) in sights {
            let alarm = learnt && s.watch.contains(&kind);
            if alarm {
                if subject.sights.0 != b {
                    subject.sights = (b, 0);
                }
                if subject.sights.1 >= MAX_FIRST_SIGHTS {
                    // Not remembered either: it alarms when the subject next has room.
                    self.suppressed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                subject.sights.1 += 1;
            }
            match d {
                Some(d) => {
                    subject.first_sight(d, &v);
                }
                None => subject.hours |= bit,
            }
            if alarm {
                out.push((kind, None, None, None, Some(v), acting));
            }
        }
        out
    }
}

/// Delivery counts for `/metrics`.
#[derive(Default)]
pub struct Deliveries {
    /// Alerts the receiver accepted (2xx).
    pub delivered: AtomicU64,
    /// Alerts given up on after every attempt.
    pub failed: AtomicU64,
}

/// Opens a MaxMind GeoIP2 / GeoLite2 Country or City file.
pub fn open_geoip(path: &std::path::Path) -> Result<maxminddb::Reader<Vec<u8>>, String> {
    maxminddb::Reader::open_readfile(path).map_err(|e| e.to_string())
}

/// `ip`'s range: the address with its host bits cleared, in CIDR notation.
pub fn mask(ip: IpAddr, v4: u8, v6: u8) -> String {
    match ip {
        IpAddr::V4(a) => {
            let p = v4.min(32);
            let bits = u32::from(a) & u32::MAX.checked_shl(32 - u32::from(p)).unwrap_or(0);
            format!("{}/{p}", std::net::Ipv4Addr::from(bits))
        }
        IpAddr::V6(a) => {
            if let Some(mapped) = a.to_ipv4_mapped() {
                return mask(IpAddr::V4(mapped), v4, v6);
            }
            let p = v6.min(128);
            let bits = u128::from(a) & u128::MAX.checked_shl(128 - u32::from(p)).unwrap_or(0);
            format!("{}/{p}", std::net::Ipv6Addr::from(bits))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ts: i64, cred: &str, subject: &str, ip: &str, model: &str, cost: i64) -> UsageRow {
        UsageRow {
            ts,
            request_id: format!("r{ts}"),
            token_id: Some("t1".into()),
            subject: Some(subject.into()),
            credential: Some(cred.into()),
            model: Some(model.into()),
            client_ip: Some(ip.into()),
            cost_nanos: Some(cost),
            attempts: 1,
            status: 200,
            ..Default::default()
        }
    }

    /// Observes a row at its own time.
    fn see(d: &Detector, r: UsageRow) {
        let (ts, cost) = (r.ts, r.cost_nanos);
        d.observe_at(&r, cost, ts);
    }

    const H: i64 = 3_600_000;

    fn detector(tune: impl FnOnce(&mut Settings)) -> (Detector, mpsc::Receiver<Anomaly>) {
        let mut s = Settings {
            bucket_ms: H,
            baseline_buckets: 7 * 24,
            ..Default::default()
        };
        tune(&mut s);
        let (tx, rx) = mpsc::channel(10_000);
        (
            Detector::new(s, None, false, tx, std::sync::Arc::new(crate::SystemClock)),
            rx,
        )
    }

    fn drain(rx: &mut mpsc::Receiver<Anomaly>) -> Vec<Anomaly> {
        let mut v = Vec::new();
        while let Ok(a) = rx.try_recv() {
            v.push(a);
        }
        v
    }

    /// A week of 2–6 requests an hour at one address: nothing alarms.
    fn normal_week(d: &Detector, start: i64) -> i64 {
        let mut t = start;
        for h in 0..7 * 24 {
            for i in 0..(2 + (h * 7 % 5)) {
                see(
                    d,
                    row(t + i * 1000, "c", "svc", "10.0.0.7", "gpt-4o-mini", 30_000),
                );
            }
            t += H;
        }
        t
    }

    #[test]
    fn stats_match_hand_computed_values() {
        let mut v = vec![1.0, 2.0, 3.0, 4.0, 100.0];
        let s = Stat::of(&mut v);
        assert_eq!(s.median, 3.0);
        assert_eq!(s.mad, 1.0);
        let z = s.z(10.0).unwrap();
        assert!((z - 0.6745 * 7.0).abs() < 1e-9);
        let mut flat = vec![0.0; 10];
        let f = Stat::of(&mut flat);
        assert_eq!(f.z(1.0), None);
        assert_eq!(f.z(0.0), Some(0.0));
        // MAD zero but not flat: the mean absolute deviation stands in.
        let mut mostly = vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 4.0];
        let m = Stat::of(&mut mostly);
        assert_eq!(m.mad, 0.0);
        assert!(m.z(8.0).unwrap() > 0.0);
        // A count's noise is the least spread: 73 against a flat 72 is ordinary, 3 against
        // a flat 0 is not (a dormant key has no noise).
        let mut regular = vec![72.0; 7];
        let (r, _) = Stat::counted(Stat::of(&mut regular), Stat::of(&mut [0.0; 7]));
        assert!((r.z(73.0).unwrap() - 1.0 / 72f64.sqrt()).abs() < 1e-9);
        assert!(r.z(72.0 + 4.0 * 72f64.sqrt()).unwrap() > 3.5);
        assert_eq!(f.with_noise(0.0).z(3.0), None);
    }

    #[test]
    fn a_perfectly_regular_key_is_quiet_one_request_past_its_daily_count() {
        // The same 72 requests every day (2, 3, 4 an hour in turn) for a week: the daily
        // baseline has no spread at all, so only the noise floor keeps request 73 quiet.
        let (d, mut rx) = detector(|s| s.min_requests = 15);
        let start = 1_700_000_000_000 / (24 * H) * (24 * H);
        let mut t = start;
        for h in 0..9 * 24 {
            for i in 0..(2 + h % 3) {
                see(&d, row(t + i * 1000, "c", "s", "10.0.0.1", "m", 1));
            }
            t += H;
        }
        see(&d, row(t - 1, "c", "s", "10.0.0.1", "m", 1));
        let a = drain(&mut rx);
        assert!(a.is_empty(), "{a:?}");
        // A doubled day still alarms.
        for i in 0..72 {
            see(
                &d,
                row(t - 600_000 + i * 1000, "c", "s", "10.0.0.1", "m", 1),
            );
        }
        let a = drain(&mut rx);
        assert!(
            a.iter()
                .any(|a| a.kind == Kind::RateSpike && a.window == Some(Window::Day)),
            "{a:?}"
        );
    }

    #[test]
    fn a_normal_week_is_quiet_and_a_burst_from_a_new_range_alarms_at_once() {
        let (d, mut rx) = detector(|_| {});
        let t = normal_week(&d, 1_700_000_000_000 / H * H);
        assert!(drain(&mut rx).is_empty(), "the normal week raised alarms");
        // The burst, from elsewhere: the first request is a new range, the rate alarm comes
        // as soon as the bucket passes the floor and the threshold, and only once.
        for i in 0..60 {
            see(
                &d,
                row(
                    t + i * 100,
                    "c",
                    "svc",
                    "198.51.100.9",
                    "gpt-4o-mini",
                    30_000,
                ),
            );
        }
        let a = drain(&mut rx);
        let kinds: Vec<_> = a.iter().map(|a| (a.kind, a.subject_kind)).collect();
        assert!(kinds.contains(&(Kind::NewIpRange, SubjectKind::Credential)));
        assert!(kinds.contains(&(Kind::NewIpRange, SubjectKind::Identity)));
        let rate: Vec<_> = a
            .iter()
            .filter(|a| {
                a.kind == Kind::RateSpike
                    && a.subject_kind == SubjectKind::Credential
                    && a.window == Some(Window::Bucket)
            })
            .collect();
        assert_eq!(rate.len(), 1, "{kinds:?}");
        assert_eq!(rate[0].observed, Some(20.0), "alarms at the floor");
        assert!(rate[0].z.is_none_or(|z| z >= 3.5));
        let range = a.iter().find(|a| a.kind == Kind::NewIpRange).unwrap();
        assert_eq!(range.value.as_deref(), Some("198.51.100.0/24"));
    }

    #[test]
    fn the_floor_keeps_a_quiet_key_quiet() {
        let (d, mut rx) = detector(|_| {});
        let start = 1_700_000_000_000 / H * H;
        // One request a day for a week, then 5 in one hour: far above a zero median, but
        // under the floor of 20.
        for day in 0..8 {
            see(&d, row(start + day * 24 * H, "c", "s", "10.0.0.1", "m", 10));
        }
        let t = start + 8 * 24 * H;
        for i in 0..5 {
            see(&d, row(t + i, "c", "s", "10.0.0.1", "m", 10));
        }
        assert!(drain(&mut rx)
            .iter()
            .all(|a| a.kind != Kind::RateSpike && a.kind != Kind::SpendSpike));
    }

    #[test]
    fn spend_spikes_alarm_above_their_floor_and_learning_is_silent() {
        let (d, mut rx) = detector(|s| s.min_spend_nanos = 500_000_000);
        let start = 1_700_000_000_000 / H * H;
        // Learning: a brand-new subject with a big first hour says nothing.
        for i in 0..50 {
            see(&d, row(start + i, "c", "s", "10.0.0.1", "m", 100_000_000));
        }
        assert!(drain(&mut rx).is_empty());
        let t = normal_week(&d, start + H);
        drain(&mut rx);
        // Ten requests at 0.1 USD each: few requests, but 1 USD against a tiny median.
        for i in 0..10 {
            see(
                &d,
                row(t + i, "c", "svc", "10.0.0.7", "gpt-4o-mini", 100_000_000),
            );
        }
        let a = drain(&mut rx);
        let spend: Vec<_> = a
            .iter()
            .filter(|a| a.kind == Kind::SpendSpike && a.subject_kind == SubjectKind::Credential)
            .collect();
        // The bucket, and the day it belongs to.
        assert_eq!(spend.len(), 2, "{a:?}");
        assert_eq!(spend[0].window, Some(Window::Bucket));
        assert_eq!(spend[1].window, Some(Window::Day));
        assert!(spend[0].observed.unwrap() >= 0.5);
        assert!(!a.iter().any(|a| a.kind == Kind::RateSpike));
    }

    #[test]
    fn first_sights_of_models_and_hours_after_learning() {
        let (d, mut rx) = detector(|s| {
            s.suspend_credential = [Kind::NewModel].into_iter().collect();
            s.revoke_token = [Kind::NewHour].into_iter().collect();
        });
        // Midnight UTC.
        let start = 1_700_000_000_000 / (24 * H) * (24 * H);
        // Nine to five for eight days.
        for day in 0..8 {
            for h in 9..17 {
                see(
                    &d,
                    row(start + day * 24 * H + h * H, "c", "s", "10.0.0.1", "m", 1),
                );
            }
        }
        assert!(drain(&mut rx).is_empty());
        let night = start + 9 * 24 * H + 3 * H;
        see(&d, row(night, "c", "s", "10.0.0.1", "other", 1));
        let a = drain(&mut rx);
        let got: HashSet<_> = a.iter().map(|a| (a.kind, a.subject_kind)).collect();
        assert!(got.contains(&(Kind::NewModel, SubjectKind::Credential)));
        assert!(got.contains(&(Kind::NewHour, SubjectKind::Identity)));
        let m = a
            .iter()
            .find(|a| a.kind == Kind::NewModel && a.subject_kind == SubjectKind::Credential)
            .unwrap();
        assert!(m.suspend_credential && !m.revoke_token);
        // An alarm about an identity never suspends a credential.
        assert!(a.iter().any(|a| a.kind == Kind::NewModel
            && a.subject_kind == SubjectKind::Identity
            && !a.suspend_credential));
        assert_eq!(m.value.as_deref(), Some("other"));
        let h = a.iter().find(|a| a.kind == Kind::NewHour).unwrap();
        assert!(!h.suspend_credential && h.revoke_token);
        assert_eq!(h.value.as_deref(), Some("03:00 UTC"));
        // Seen once, known after.
        see(&d, row(night + 1, "c", "s", "10.0.0.1", "other", 1));
        assert!(drain(&mut rx).is_empty());
    }

    #[test]
    fn a_dormant_credential_that_wakes_up_is_a_spike() {
        let (d, mut rx) = detector(|_| {});
        let start = 1_700_000_000_000 / H * H;
        d.learn(History {
            credentials: vec![("old".into(), start)],
            ..Default::default()
        });
        let t = start + 30 * 24 * H;
        for i in 0..25 {
            see(&d, row(t + i, "old", "someone", "10.0.0.1", "m", 1));
        }
        let a = drain(&mut rx);
        assert!(a
            .iter()
            .any(|a| a.kind == Kind::RateSpike && a.subject_kind == SubjectKind::Credential));
        // The identity is new, so it is still learning.
        assert!(!a.iter().any(|a| a.subject_kind == SubjectKind::Identity));
    }

    #[test]
    fn history_from_the_store_is_a_baseline() {
        let (d, mut rx) = detector(|_| {});
        let start = 1_700_000_000_000 / H * H;
        let b0 = start / H;
        let mut h = History {
            credentials: vec![("c".into(), start)],
            ..Default::default()
        };
        for i in 0..7 * 24 {
            h.tallies
                .push((SubjectKind::Credential, "c".into(), b0 + i, 40, 0));
        }
        h.seen.push((
            SubjectKind::Credential,
            "c".into(),
            Some("m".into()),
            Some("10.0.0.1".into()),
            Some(0),
        ));
        d.learn(h);
        // 30 requests in an hour is normal for this key (40 an hour): no rate alarm, and the
        // known range and model are not new.
        let t = start + 7 * 24 * H;
        for i in 0..30 {
            see(&d, row(t + i, "c", "x", "10.0.0.2", "m", 0));
        }
        let a = drain(&mut rx);
        assert!(
            !a.iter().any(|a| a.subject_kind == SubjectKind::Credential
                && matches!(a.kind, Kind::RateSpike | Kind::NewIpRange | Kind::NewModel)),
            "{a:?}"
        );
    }

    #[test]
    fn a_bursty_user_is_its_own_normal() {
        // Two busy hours a day, 30 requests each, idle otherwise: not a spike every day.
        let (d, mut rx) = detector(|_| {});
        let start = 1_700_000_000_000 / (24 * H) * (24 * H);
        for day in 0..10 {
            for h in [10, 15] {
                for i in 0..30 {
                    see(
                        &d,
                        row(
                            start + day * 24 * H + h * H + i,
                            "c",
                            "s",
                            "10.0.0.1",
                            "m",
                            1,
                        ),
                    );
                }
            }
        }
        let a = drain(&mut rx);
        assert!(!a.iter().any(|a| a.kind == Kind::RateSpike), "{a:?}");
        // Ten times the usual hour is.
        let t = start + 10 * 24 * H + 10 * H;
        for i in 0..300 {
            see(&d, row(t + i, "c", "s", "10.0.0.1", "m", 1));
        }
        assert!(drain(&mut rx).iter().any(|a| a.kind == Kind::RateSpike));
    }

    #[test]
    fn refusals_and_refused_models_neither_train_nor_trip() {
        let (d, mut rx) = detector(|_| {});
        let start = 1_700_000_000_000 / H * H;
        let t = normal_week(&d, start);
        drain(&mut rx);
        // 500 requests airlock refused itself (a revoked token, scope, budget): nothing.
        for i in 0..500 {
            let mut r = row(t + i, "c", "svc", "203.0.113.5", "gpt-4o-mini", 0);
            r.attempts = 0;
            r.status = 401;
            see(&d, r);
        }
        assert!(drain(&mut rx).is_empty());
        // Made-up model names the provider refused: no new_model alarms, and at most
        // MAX_FIRST_SIGHTS first sights per subject and bucket whatever comes.
        for i in 0..30 {
            let mut r = row(t + i, "c", "svc", "10.0.0.7", &format!("bogus-{i}"), 0);
            r.status = 404;
            see(&d, r);
        }
        assert!(drain(&mut rx).iter().all(|a| a.kind != Kind::NewModel));
        for i in 0..30 {
            see(
                &d,
                row(t + H + i, "c", "svc", "10.0.0.7", &format!("real-{i}"), 0),
            );
        }
        let sights = drain(&mut rx)
            .iter()
            .filter(|a| a.kind == Kind::NewModel && a.subject_kind == SubjectKind::Credential)
            .count();
        assert_eq!(sights, MAX_FIRST_SIGHTS as usize);
        assert!(d.suppressed.load(Ordering::Relaxed) >= 20);
    }

    #[test]
    fn today_cannot_raise_its_own_bar_and_idle_time_counts() {
        // A dormant credential (created a month ago, never used): seeding a few quiet buckets
        // under the floor does not make a large one normal.
        let (d, mut rx) = detector(|_| {});
        let start = 1_700_000_000_000 / (24 * H) * (24 * H);
        d.learn(History {
            credentials: vec![("old".into(), start)],
            ..Default::default()
        });
        let t = start + 30 * 24 * H;
        for (h, n) in [(0, 1), (1, 19), (2, 19), (3, 19)] {
            for i in 0..n {
                see(&d, row(t + h * H + i, "old", "x", "10.0.0.1", "m", 1));
            }
        }
        for i in 0..60 {
            see(&d, row(t + 4 * H + i, "old", "x", "10.0.0.1", "m", 1));
        }
        let a = drain(&mut rx);
        assert!(
            a.iter().any(|a| a.kind == Kind::RateSpike
                && a.subject_kind == SubjectKind::Credential
                && a.window == Some(Window::Bucket)),
            "{a:?}"
        );
        // Running all day at an ordinary busy hour's pace is a daily spike.
        let (d, mut rx) = detector(|_| {});
        for day in 0..8 {
            for i in 0..30 {
                see(
                    &d,
                    row(
                        start + day * 24 * H + 10 * H + i,
                        "c",
                        "s",
                        "10.0.0.1",
                        "m",
                        1,
                    ),
                );
            }
        }
        let day8 = start + 8 * 24 * H;
        for h in 0..24 {
            for i in 0..30 {
                see(&d, row(day8 + h * H + i, "c", "s", "10.0.0.1", "m", 1));
            }
        }
        let a = drain(&mut rx);
        assert!(
            !a.iter().any(|a| a.window == Some(Window::Bucket)),
            "each hour is ordinary: {a:?}"
        );
        assert!(a
            .iter()
            .any(|a| a.kind == Kind::RateSpike && a.window == Some(Window::Day)));
    }

    #[test]
    fn a_weekly_job_and_a_returning_user_are_not_anomalies() {
        let (d, mut rx) = detector(|s| s.baseline_buckets = 8 * 24);
        let start = 1_700_000_000_000 / (24 * H) * (24 * H);
        // 200 requests once a week, a few hours later or earlier each time.
        for week in 0..6 {
            let at = start + week * 7 * 24 * H + (3 + (week % 3) * 2) * H;
            for i in 0..200 {
                see(
                    &d,
                    row(at + i * 1000, "batch", "sa:nightly", "10.0.0.1", "m", 1),
                );
            }
        }
        let a = drain(&mut rx);
        assert!(
            !a.iter()
                .any(|a| matches!(a.kind, Kind::RateSpike | Kind::SpendSpike)),
            "{a:?}"
        );
        // An identity back after two weeks away (forgotten meanwhile): spikes are judged at
        // once, first sights learn again before they alarm.
        let (d, mut rx) = detector(|s| s.revoke_token = [Kind::NewIpRange].into_iter().collect());
        for h in 0..48 {
            see(&d, row(start + h * H, "c", "alice", "10.0.0.1", "m", 1));
        }
        let back = start + 16 * 24 * H;
        see(&d, row(back, "c", "bob", "10.0.0.1", "m", 1)); // moves the sweep along
        see(&d, row(back + 1, "c", "alice", "192.0.2.1", "other", 1));
        // Her own first sights are reported, but act on nothing while she relearns.
        let a = drain(&mut rx);
        let hers: Vec<_> = a
            .iter()
            .filter(|a| a.subject_kind == SubjectKind::Identity && a.subject == "alice")
            .collect();
        assert!(hers.iter().any(|a| a.kind == Kind::NewIpRange), "{a:?}");
        assert!(hers.iter().all(|a| !a.revoke_token), "{a:?}");
        for i in 0..30 {
            see(
                &d,
                row(back + 10 + i, "c", "alice", "192.0.2.1", "other", 1),
            );
        }
        assert!(drain(&mut rx).iter().any(|a| a.subject == "alice"
            && a.kind == Kind::RateSpike
            && a.window == Some(Window::Bucket)));
    }

    #[test]
    fn a_decoy_does_not_hide_a_bigger_spike_in_the_cooldown() {
        let (d, mut rx) = detector(|s| s.cooldown_ms = 6 * H);
        let start = 1_700_000_000_000 / H * H;
        let t = normal_week(&d, start);
        drain(&mut rx);
        let burst = |at: i64, n: i64| {
            for i in 0..n {
                see(&d, row(at + i, "c", "svc", "10.0.0.7", "gpt-4o-mini", 1));
            }
        };
        let credential_bucket_spikes = |a: Vec<Anomaly>| {
            a.into_iter()
                .filter(|a| {
                    a.kind == Kind::RateSpike
                        && a.subject_kind == SubjectKind::Credential
                        && a.window == Some(Window::Bucket)
                })
                .count()
        };
        burst(t, 20);
        assert_eq!(credential_bucket_spikes(drain(&mut rx)), 1, "the decoy");
        burst(t + H, 30);
        assert_eq!(credential_bucket_spikes(drain(&mut rx)), 0, "cooling down");
        burst(t + 2 * H, 45);
        assert_eq!(
            credential_bucket_spikes(drain(&mut rx)),
            1,
            "twice the decoy"
        );
    }

    #[test]
    fn masks() {
        let m = |s: &str| mask(s.parse().unwrap(), 24, 48);
        assert_eq!(m("203.0.113.77"), "203.0.113.0/24");
        assert_eq!(m("2001:db8:1:2:3::1"), "2001:db8:1::/48");
        assert_eq!(m("::ffff:203.0.113.77"), "203.0.113.0/24");
        assert_eq!(mask("10.1.2.3".parse().unwrap(), 0, 0), "0.0.0.0/0");
    }
}
