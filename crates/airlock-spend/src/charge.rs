//! What one request is charged, as a state machine. Each request owns one [`Charge`]; its fields
//! are private and change only through the transitions below, each of which is one rule:
//!
//! ```text
//!   new ──estimated──▶ reserved ──sending──▶ sent ──answered(ok)──▶ answered ──settle──▶ settled
//!                         ▲                   │                        │
//!                         │                   ├─not_sent (no connection: not billed)
//!                         └───────────────────┼─lost (timeout, broken after sending: may be billed)
//!                                             └─answered(error): the provider bills no errors
//! ```
//!
//! A fallback goes back to `reserved` for the next credential, remembering the last attempt
//! the provider may have billed (`lost`). `settle` ends it whatever state it is in, with how
//! the answer ended ([`Ending`]) and what the provider reported ([`Tokens`]):
//!
//! - the charge is the priced cost of the reported tokens, or, when the provider may have
//!   billed the request without reporting all of it, a floor: the input estimate plus, for
//!   output, what arrived (about a token an SSE event) and at least the default output per
//!   choice when the client or a broken stream cut it, the whole output estimate otherwise
//!   (no usage at all, a stream gone silent); never more than the reservation;
//! - the floor goes to the credential the request was last sent to that may have billed it;
//! - budget reservations are settled with the charge, rate-limit holds credit back the tokens
//!   not used (none when the floor applied: what was used is not known).
//!
//! Dropping a `Charge` unsettled releases its reservations without charging (the request never
//! reached a provider that could bill it).

use crate::budget::{self, Kind, Reservation};
use crate::pricing::Prices;
use crate::ratelimit::Hold;

/// What a request may use, read from its body before it is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Input tokens at most (from the body's length).
    pub input: i64,
    /// Output tokens at most (its own limit or the default, times its choices).
    pub output: i64,
    /// The output a request cut short is charged at least, per choice (the configured default).
    pub default_output: i64,
    /// The choices it asked for (`n`, `best_of`), at least 1.
    pub choices: i64,
}

/// Token counts the provider reported (absent where it reported none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Every prompt token, cached ones included.
    pub input: Option<i64>,
    /// Prompt tokens served from cache.
    pub cached: Option<i64>,
    /// Output tokens.
    pub output: Option<i64>,
}

impl Tokens {
    fn none(&self) -> bool {
        self.input.is_none() && self.output.is_none()
    }
}

/// How the answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Answered whole (or refused before or by the provider).
    Finished,
    /// Cut by the client or by a broken upstream after `events` SSE events (0 for a JSON body).
    Cut {
        /// Complete SSE events that arrived.
        events: i64,
    },
    /// The provider went silent mid-answer.
    Silent,
}

/// Who pays: the request's token, identity and project, and the credential that answered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Payers<'a> {
    /// The token's id.
    pub token: Option<&'a str>,
    /// The token's subject.
    pub identity: Option<&'a str>,
    /// The token's project.
    pub project: Option<&'a str>,
    /// The credential that answered (or was last tried).
    pub credential: Option<&'a str>,
}

/// What `settle` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The priced cost of the reported tokens (None: no price or nothing reported).
    pub cost_nanos: Option<i64>,
    /// What budgets were charged and the detector sees: the cost, or the floor when higher.
    pub charged_nanos: Option<i64>,
    /// The credential charged.
    pub credential: Option<String>,
    /// Whether the floor applied (the provider may have billed more than it reported).
    pub floored: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Reserved, no attempt in flight (before the first, or between fallbacks).
    Reserved,
    /// An attempt is on its way to `credential`; `billable` unless the endpoint is free.
    Sent { credential: String, billable: bool },
    /// The provider answered; `billed` names its credential when it may bill the answer.
    Answered { billed: Option<String> },
    /// Settled; nothing changes any more.
    Settled,
}

/// One request's charge. See the module documentation for its states.
pub struct Charge {
    estimate: Option<Estimate>,
    phase: Phase,
    /// The last finished attempt the provider may have billed (timed out, broke after sending).
    lost: Option<String>,
    budgets: Vec<Reservation>,
    holds: Vec<Hold>,
}

impl Default for Charge {
    fn default() -> Self {
        Charge::new()
    }
}

impl Charge {
    /// Nothing estimated, reserved or sent.
    pub fn new() -> Self {
        Charge {
            estimate: None,
            phase: Phase::Reserved,
            lost: None,
            budgets: Vec::new(),
            holds: Vec::new(),
        }
    }

    /// Records what the request may use.
    pub fn estimated(&mut self, e: Estimate) {
        self.estimate = Some(e);
    }

    /// What the request may use, when estimated.
    pub fn estimate(&self) -> Option<Estimate> {
        self.estimate
    }

    /// Holds the request's budget reservations (the first is charged, the rest released).
    pub fn hold_budgets(&mut self, reservations: Vec<Reservation>) {
        self.budgets = reservations;
    }

    /// Holds the request's rate-limit admissions until its tokens are known.
    pub fn hold_rates(&mut self, holds: Vec<Hold>) {
        self.holds = holds;
    }

    /// An attempt goes to `credential`; `billable` unless the endpoint is free (token
    /// counting, model lists). From here the provider may bill it.
    pub fn sending(&mut self, credential: &str, billable: bool) {
        if self.phase == Phase::Settled {
            return;
        }
        self.phase = Phase::Sent {
            credential: credential.to_string(),
            billable,
        };
    }

    /// The attempt never reached the provider (no connection): it cannot be billed.
    pub fn not_sent(&mut self) {
        if matches!(self.phase, Phase::Sent { .. }) {
            self.phase = Phase::Reserved;
        }
    }

    /// The attempt was sent but its answer was lost (a timeout, a connection broken after
    /// sending): the provider may bill it even if a fallback answers.
    pub fn lost(&mut self) {
        if !matches!(self.phase, Phase::Sent { .. }) {
            return;
        }
        if let Phase::Sent {
            credential,
            billable: true,
        } = std::mem::replace(&mut self.phase, Phase::Reserved)
        {
            self.lost = Some(credential);
        }
    }

    /// The provider answered, `ok` (a success status) or with an error, which it does not bill.
    pub fn answered(&mut self, ok: bool) {
        if let Phase::Sent {
            credential,
            billable,
        } = &self.phase
        {
            let billed = (ok && *billable).then(|| credential.clone());
            self.phase = Phase::Answered { billed };
        }
    }

    /// The credential of the attempt the provider may bill last: the one sent now or that
    /// answered, else the last one lost.
    fn billed_credential(&self) -> Option<&str> {
        match &self.phase {
            Phase::Sent {
                credential,
                billable: true,
            } => Some(credential),
            Phase::Answered { billed: Some(c) } => Some(c),
            _ => self.lost.as_deref(),
        }
    }

    /// Whether the provider may bill this request (an attempt sent and not answered with an
    /// error, now or before a fallback).
    pub fn maybe_billed(&self) -> bool {
        self.billed_credential().is_some()
    }

    /// Ends the charge: prices the reported tokens, applies the floor where the provider may
    /// have billed more than it reported, settles the budget reservations and credits the rate
    /// limits. Only the first call does anything.
    pub fn settle(
        &mut self,
        ending: Ending,
        model: Option<&str>,
        tokens: Tokens,
        prices: &Prices,
        payers: Payers<'_>,
    ) -> Settlement {
        let decided = self.decide(ending, model, tokens, prices, payers);
        if self.phase == Phase::Settled {
            return decided;
        }
        self.phase = Phase::Settled;
        let mut held = std::mem::take(&mut self.budgets).into_iter();
        if let Some(main) = held.next() {
            let to: Vec<(Kind, &str)> = [
                (Kind::Token, payers.token),
                (Kind::Identity, payers.identity),
                (Kind::Project, payers.project),
                (Kind::Credential, decided.credential.as_deref()),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
            main.settle(decided.charged_nanos, &to);
        }
        drop(held);
        let used = match (tokens.input, tokens.output) {
            _ if decided.floored => None,
            (None, None) => Some(0),
            (i, o) => Some(i.unwrap_or(0).saturating_add(o.unwrap_or(0))),
        };
        for h in std::mem::take(&mut self.holds) {
            h.settle(used);
        }
        decided
    }

    /// The money decision alone, without touching budgets or limits.
    fn decide(
        &self,
        ending: Ending,
        model: Option<&str>,
        tokens: Tokens,
        prices: &Prices,
        payers: Payers<'_>,
    ) -> Settlement {
        let cost =
            model.and_then(|m| prices.cost_nanos(m, tokens.input, tokens.cached, tokens.output));
        // Output charged beyond what was reported, by how the answer ended.
        let output = self.estimate.and_then(|e| {
            let per_choice = e.default_output.saturating_mul(e.choices.max(1));
            match ending {
                Ending::Cut { events } => Some(events.max(per_choice)),
                Ending::Silent => Some(i64::MAX),
                Ending::Finished if tokens.none() => Some(i64::MAX),
                Ending::Finished => None,
            }
        });
        let floor = output.filter(|_| self.maybe_billed()).and_then(|out| {
            let e = self.estimate?;
            let rate = prices.rate(model?)?;
            Some(budget::estimate(rate, e.input, e.output.min(out)))
        });
        let charged = match floor {
            Some(f) => Some(f.max(cost.unwrap_or(0))),
            None => cost,
        };
        let credential = match (floor, self.billed_credential()) {
            (Some(_), Some(c)) => Some(c.to_string()),
            _ => payers.credential.map(str::to_string),
        };
        Settlement {
            cost_nanos: cost,
            charged_nanos: charged,
            credential,
            floored: floor.is_some(),
        }
    }
}

#[cfg(test)]
mod tests;
