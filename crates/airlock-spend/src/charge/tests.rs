//! Each transition's rule on its own, then the README's overspend bound as properties over
//! arbitrary sequences of attempts, endings and reported usage.

use super::*;
use crate::budget::Budgets;
use proptest::prelude::*;
use std::sync::Arc;

/// 1 000 nano-dollars an input token, 500 a cached one, 4 000 an output token.
fn prices() -> Prices {
    Prices::load(&[("m".into(), 1.0, Some(0.5), 4.0)]).unwrap_or_else(|e| panic!("{e}"))
}

const EST: Estimate = Estimate {
    input: 100,
    output: 1000,
    default_output: 50,
    choices: 2,
};

/// The reservation of `EST` at `prices()`.
const RESERVED: i64 = 100 * 1000 + 1000 * 4000;

fn payers() -> Payers<'static> {
    Payers {
        token: Some("tok"),
        identity: Some("alice"),
        project: None,
        credential: Some("answered"),
    }
}

fn settle(c: &mut Charge, ending: Ending, tokens: Tokens) -> Settlement {
    c.settle(ending, Some("m"), tokens, &prices(), payers())
}

fn reported(input: i64, output: i64) -> Tokens {
    Tokens {
        input: Some(input),
        cached: None,
        output: Some(output),
    }
}

fn estimated() -> Charge {
    let mut c = Charge::new();
    c.estimated(EST);
    c
}

#[test]
fn an_answer_with_usage_is_charged_its_priced_cost() {
    let mut c = estimated();
    c.sending("a", true);
    c.answered(true);
    let s = settle(&mut c, Ending::Finished, reported(10, 20));
    assert_eq!(s.cost_nanos, Some(10 * 1000 + 20 * 4000));
    assert_eq!(s.charged_nanos, s.cost_nanos);
    assert!(!s.floored);
    assert_eq!(s.credential.as_deref(), Some("answered"));
}

#[test]
fn an_answer_without_usage_is_charged_its_whole_reservation() {
    let mut c = estimated();
    c.sending("a", true);
    c.answered(true);
    let s = settle(&mut c, Ending::Finished, Tokens::default());
    assert_eq!(s.cost_nanos, None);
    assert_eq!(s.charged_nanos, Some(RESERVED));
    assert_eq!(s.credential.as_deref(), Some("a"));
}

#[test]
fn a_cut_is_charged_input_and_what_arrived_at_least_the_default_per_choice() {
    let mut c = estimated();
    c.sending("a", true);
    c.answered(true);
    let s = settle(&mut c, Ending::Cut { events: 3 }, Tokens::default());
    assert_eq!(s.charged_nanos, Some(100 * 1000 + 50 * 2 * 4000));
    let mut c = estimated();
    c.sending("a", true);
    c.answered(true);
    let s = settle(&mut c, Ending::Cut { events: 700 }, Tokens::default());
    assert_eq!(s.charged_nanos, Some(100 * 1000 + 700 * 4000));
    // Never more than reserved, however many events arrived.
    let mut c = estimated();
    c.sending("a", true);
    c.answered(true);
    let s = settle(&mut c, Ending::Cut { events: 1 << 40 }, Tokens::default());
    assert_eq!(s.charged_nanos, Some(RESERVED));
}

#[test]
fn a_stream_gone_silent_is_charged_its_reservation_even_with_partial_usage() {
    let mut c = estimated();
    c.sending("a", true);
    c.answered(true);
    let s = settle(&mut c, Ending::Silent, reported(100, 1));
    assert_eq!(s.charged_nanos, Some(RESERVED));
    assert!(s.floored);
}

#[test]
fn an_error_answer_is_not_billed() {
    let mut c = estimated();
    c.sending("a", true);
    c.answered(false);
    assert!(!c.maybe_billed());
    let s = settle(&mut c, Ending::Finished, Tokens::default());
    assert_eq!(s.charged_nanos, None);
}

#[test]
fn a_connection_that_never_opened_is_not_billed() {
    let mut c = estimated();
    c.sending("a", true);
    c.not_sent();
    assert!(!c.maybe_billed());
    assert_eq!(
        settle(&mut c, Ending::Finished, Tokens::default()).charged_nanos,
        None
    );
}

#[test]
fn free_endpoints_are_never_billed() {
    let mut c = estimated();
    c.sending("a", false);
    c.answered(true);
    assert!(!c.maybe_billed());
    assert_eq!(
        settle(&mut c, Ending::Finished, Tokens::default()).charged_nanos,
        None
    );
}

#[test]
fn a_timeout_before_a_fallback_stays_billable_and_is_charged_to_its_credential() {
    let mut c = estimated();
    c.sending("slow", true);
    c.lost();
    c.sending("down", true);
    c.not_sent();
    assert!(
        c.maybe_billed(),
        "the provider may bill the timed-out attempt"
    );
    c.sending("failing", true);
    c.answered(false);
    let s = settle(&mut c, Ending::Finished, Tokens::default());
    assert_eq!(s.charged_nanos, Some(RESERVED));
    assert_eq!(s.credential.as_deref(), Some("slow"));
}

#[test]
fn the_last_attempt_that_may_bill_is_the_one_charged() {
    let mut c = estimated();
    c.sending("slow", true);
    c.lost();
    c.sending("ok", true);
    c.answered(true);
    let s = settle(&mut c, Ending::Cut { events: 0 }, Tokens::default());
    assert_eq!(s.credential.as_deref(), Some("ok"));
}

#[test]
fn settling_twice_charges_once() {
    let budgets = Arc::new(Budgets::default());
    budgets.insert(Kind::Token, "tok", 10 * RESERVED);
    let mut c = estimated();
    let r = budgets
        .reserve(&[(Kind::Token, "tok")], RESERVED)
        .ok()
        .unwrap_or_else(|| panic!("fits"));
    c.hold_budgets(vec![r]);
    c.sending("a", true);
    c.answered(true);
    settle(&mut c, Ending::Finished, reported(10, 10));
    settle(&mut c, Ending::Finished, reported(10, 10));
    c.sending("b", true);
    assert_eq!(budgets.status()[0].spent_nanos, 10 * 1000 + 10 * 4000);
    assert_eq!(budgets.status()[0].reserved_nanos, 0);
}

#[test]
fn dropping_an_unsettled_charge_releases_its_reservation() {
    let budgets = Arc::new(Budgets::default());
    budgets.insert(Kind::Token, "tok", RESERVED);
    let mut c = estimated();
    let r = budgets
        .reserve(&[(Kind::Token, "tok")], RESERVED)
        .ok()
        .unwrap_or_else(|| panic!("fits"));
    c.hold_budgets(vec![r]);
    assert_eq!(budgets.status()[0].reserved_nanos, RESERVED);
    drop(c);
    assert_eq!(budgets.status()[0].reserved_nanos, 0);
    assert_eq!(budgets.status()[0].spent_nanos, 0);
}

/// How one attempt at a provider ended, as the proxy's fallback loop sees it.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// No answer within the upstream timeout.
    Timeout,
    /// No connection.
    ConnectError,
    /// The connection broke after the request was sent.
    Broken,
    /// The provider answered, with a success status or not.
    Answered(bool),
}

/// A request: whether its endpoint is billable, and its attempts in order (credential c0, c1…).
#[derive(Debug, Clone)]
struct Attempts {
    billable: bool,
    outcomes: Vec<Outcome>,
}

fn attempts() -> impl Strategy<Value = Attempts> {
    let outcome = prop_oneof![
        Just(Outcome::Timeout),
        Just(Outcome::ConnectError),
        Just(Outcome::Broken),
        any::<bool>().prop_map(Outcome::Answered),
    ];
    (any::<bool>(), proptest::collection::vec(outcome, 0..6)).prop_map(
        |(billable, mut outcomes)| {
            // A success ends the loop.
            if let Some(i) = outcomes
                .iter()
                .position(|o| matches!(o, Outcome::Answered(true)))
            {
                outcomes.truncate(i + 1);
            }
            Attempts { billable, outcomes }
        },
    )
}

/// The rules as the proxy applied them before `Charge` existed (flags on the request's record:
/// `maybe_billed`, `billed_before`, `billed_credential`, restored from `billed_earlier`), kept
/// here as the oracle: (whether the provider may bill it, the credential billed last).
fn before_charge(a: &Attempts) -> (bool, Option<String>) {
    let mut maybe_billed = false;
    let mut billed_before = false;
    let mut billed_credential: Option<String> = None;
    for (i, o) in a.outcomes.iter().enumerate() {
        let name = format!("c{i}");
        maybe_billed = billed_before || a.billable;
        let billed_earlier = if a.billable {
            billed_credential.replace(name)
        } else {
            billed_credential.clone()
        };
        match o {
            Outcome::Timeout | Outcome::Broken => billed_before = maybe_billed,
            Outcome::ConnectError => {
                maybe_billed = billed_before;
                billed_credential = billed_earlier;
            }
            Outcome::Answered(ok) => {
                let billable = *ok && a.billable;
                maybe_billed = billed_before || billable;
                if !billable {
                    billed_credential = billed_earlier;
                }
            }
        }
    }
    // The old record charged the floor to `billed_credential` only when it was billed.
    (maybe_billed, billed_credential.filter(|_| maybe_billed))
}

fn run(a: &Attempts) -> Charge {
    let mut c = estimated();
    for (i, o) in a.outcomes.iter().enumerate() {
        c.sending(&format!("c{i}"), a.billable);
        match o {
            Outcome::Timeout | Outcome::Broken => c.lost(),
            Outcome::ConnectError => c.not_sent(),
            Outcome::Answered(ok) => c.answered(*ok),
        }
    }
    c
}

fn ending() -> impl Strategy<Value = Ending> {
    prop_oneof![
        Just(Ending::Finished),
        Just(Ending::Silent),
        (0i64..5000).prop_map(|events| Ending::Cut { events }),
    ]
}

/// Usage the provider may report, within the request's estimate.
fn tokens_within() -> impl Strategy<Value = Tokens> {
    (
        proptest::option::of(0i64..=EST.input),
        proptest::option::of(0i64..=EST.output),
    )
        .prop_flat_map(|(input, output)| {
            let most = input.unwrap_or(0);
            (Just(input), proptest::option::of(0..=most), Just(output))
        })
        .prop_map(|(input, cached, output)| Tokens {
            input,
            cached,
            output,
        })
}

proptest! {
    #[test]
    fn billing_follows_the_rules_the_proxy_applied_before(a in attempts()) {
        let c = run(&a);
        let (billed, credential) = before_charge(&a);
        prop_assert_eq!(c.maybe_billed(), billed);
        prop_assert_eq!(c.billed_credential().map(str::to_string), credential);
    }

    #[test]
    fn the_charge_lies_between_the_real_cost_and_the_reservation(
        a in attempts(),
        end in ending(),
        tokens in tokens_within(),
    ) {
        let mut c = run(&a);
        let billed = c.maybe_billed();
        let last = c.billed_credential().map(str::to_string);
        let s = settle(&mut c, end, tokens);
        let charged = s.charged_nanos.unwrap_or(0);
        // Never less than what the provider reported, never more than reserved when it
        // reported no more than the estimate.
        prop_assert!(charged >= s.cost_nanos.unwrap_or(0));
        prop_assert!(charged <= RESERVED);
        if !billed {
            // Nothing the provider may bill: only what it reported.
            prop_assert_eq!(s.charged_nanos, s.cost_nanos);
            prop_assert!(!s.floored);
        }
        if billed && tokens.input.is_none() && tokens.output.is_none() {
            // Billed without a word on usage: at least the input and the default output.
            let least = match end {
                Ending::Cut { events } => {
                    EST.input * 1000 + events.clamp(EST.default_output * EST.choices, EST.output) * 4000
                }
                _ => RESERVED,
            };
            prop_assert_eq!(charged, least);
        }
        if s.floored {
            prop_assert_eq!(s.credential, last);
        } else {
            prop_assert_eq!(s.credential.as_deref(), payers().credential);
        }
    }

    /// README: "only requests in flight can push spend past a limit, each by what it costs
    /// beyond its reservation". With every request's usage within its estimate, a budget is
    /// never passed, whatever order requests reserve, fail, fall back and settle in.
    #[test]
    fn a_budget_is_never_passed_by_requests_within_their_estimate(
        limit in 0i64..(8 * RESERVED),
        requests in proptest::collection::vec(
            (attempts(), ending(), tokens_within(), any::<bool>()),
            1..24,
        ),
    ) {
        let budgets = Arc::new(Budgets::default());
        budgets.insert(Kind::Identity, "alice", limit);
        let mut open = Vec::new();
        for (a, end, tokens, settle_now) in requests {
            let Ok(r) = budgets.reserve(&[(Kind::Identity, "alice")], RESERVED) else {
                continue;
            };
            let mut c = run(&a);
            c.hold_budgets(vec![r]);
            if settle_now {
                settle(&mut c, end, tokens);
            } else {
                open.push((c, end, tokens));
            }
            let st = &budgets.status()[0];
            prop_assert!(st.spent_nanos + st.reserved_nanos <= limit);
        }
        for (mut c, end, tokens) in open {
            settle(&mut c, end, tokens);
        }
        let st = &budgets.status()[0];
        prop_assert!(st.spent_nanos <= limit);
        prop_assert_eq!(st.reserved_nanos, 0);
    }
}

/// The tokens-per-minute limit of `tpm` on token `tok`.
fn rate_limited(tpm: i64) -> Arc<crate::ratelimit::RateLimits> {
    let l = Arc::new(crate::ratelimit::RateLimits::default());
    l.insert(Kind::Token, "tok", None, Some(tpm));
    l
}

#[test]
fn rate_limits_get_back_what_a_reported_answer_did_not_use() {
    let limits = rate_limited(1000);
    let who = [(Kind::Token, "tok")];
    let (hold, _) = limits
        .admit(&who, 600)
        .ok()
        .unwrap_or_else(|| panic!("fits"));
    let mut c = estimated();
    c.hold_rates(hold.into_iter().collect());
    c.sending("a", true);
    c.answered(true);
    settle(&mut c, Ending::Finished, reported(50, 50));
    assert!(
        limits.admit(&who, 600).is_ok(),
        "100 used of 600: 100 + 600 fits in 1000"
    );
}

#[test]
fn rate_limits_keep_the_whole_estimate_when_the_floor_applies() {
    for end in [Ending::Silent, Ending::Cut { events: 3 }, Ending::Finished] {
        let limits = rate_limited(1000);
        let who = [(Kind::Token, "tok")];
        let (hold, _) = limits
            .admit(&who, 600)
            .ok()
            .unwrap_or_else(|| panic!("fits"));
        let mut c = estimated();
        c.hold_rates(hold.into_iter().collect());
        c.sending("a", true);
        c.answered(true);
        // Nothing reported (Finished) or cut short: what was used is not known.
        let s = settle(&mut c, end, Tokens::default());
        assert!(s.floored, "{end:?}");
        assert!(
            limits.admit(&who, 600).is_err(),
            "{end:?}: nothing is credited back, 600 + 600 > 1000"
        );
    }
}
