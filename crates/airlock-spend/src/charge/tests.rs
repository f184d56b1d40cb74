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

/// One step of a request's way through its candidates.
#[derive(Debug, Clone)]
enum Step {
    Send(u8, bool),
    NotSent,
    Lost,
    Answered(bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..3, any::<bool>()).prop_map(|(c, b)| Step::Send(c, b)),
        Just(Step::NotSent),
        Just(Step::Lost),
        any::<bool>().prop_map(Step::Answered),
    ]
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

/// What the rules say, written the simple way: whether the provider may bill the request, and
/// which credential it bills last.
fn model(steps: &[Step]) -> Option<String> {
    let mut lost: Option<String> = None;
    let mut sent: Option<(String, bool)> = None;
    let mut answered: Option<Option<String>> = None;
    for s in steps {
        match s {
            Step::Send(c, b) => {
                sent = Some((format!("c{c}"), *b));
                answered = None;
            }
            Step::NotSent => {
                if answered.is_none() {
                    sent = None;
                }
            }
            Step::Lost => {
                if answered.is_none() {
                    if let Some((c, true)) = sent.take() {
                        lost = Some(c);
                    }
                    sent = None;
                }
            }
            Step::Answered(ok) => {
                if answered.is_none() {
                    if let Some((c, b)) = sent.take() {
                        answered = Some((*ok && b).then_some(c));
                    }
                }
            }
        }
    }
    match (answered, sent) {
        (Some(Some(c)), _) => Some(c),
        (None, Some((c, true))) => Some(c),
        _ => lost,
    }
}

fn run(steps: &[Step]) -> Charge {
    let mut c = estimated();
    for s in steps {
        match s {
            Step::Send(n, b) => c.sending(&format!("c{n}"), *b),
            Step::NotSent => c.not_sent(),
            Step::Lost => c.lost(),
            Step::Answered(ok) => c.answered(*ok),
        }
    }
    c
}

proptest! {
    #[test]
    fn billing_follows_the_last_attempt_that_may_bill(steps in proptest::collection::vec(step(), 0..12)) {
        let c = run(&steps);
        let expected = model(&steps);
        prop_assert_eq!(c.maybe_billed(), expected.is_some());
        prop_assert_eq!(c.billed_credential().map(str::to_string), expected);
    }

    #[test]
    fn the_charge_lies_between_the_real_cost_and_the_reservation(
        steps in proptest::collection::vec(step(), 0..12),
        end in ending(),
        tokens in tokens_within(),
    ) {
        let mut c = run(&steps);
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
        }
    }

    /// README: "only requests in flight can push spend past a limit, each by what it costs
    /// beyond its reservation". With every request's usage within its estimate, a budget is
    /// never passed, whatever order requests reserve, fail, fall back and settle in.
    #[test]
    fn a_budget_is_never_passed_by_requests_within_their_estimate(
        limit in 0i64..(8 * RESERVED),
        requests in proptest::collection::vec(
            (proptest::collection::vec(step(), 0..6), ending(), tokens_within(), any::<bool>()),
            1..24,
        ),
    ) {
        let budgets = Arc::new(Budgets::default());
        budgets.insert(Kind::Identity, "alice", limit);
        let mut open = Vec::new();
        for (steps, end, tokens, settle_now) in requests {
            let Ok(r) = budgets.reserve(&[(Kind::Identity, "alice")], RESERVED) else {
                continue;
            };
            let mut c = run(&steps);
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
