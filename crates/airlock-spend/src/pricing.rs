//! What a request cost, in integer nano-dollars (10⁻⁹ USD): never floats, so totals over
//! millions of requests add up exactly. Prices come from `[pricing]` in the configuration
//! first, then the table shipped in `prices.toml`; both are written in dollars per million
//! tokens and turned into nano-dollars per token once, at start (at most three decimals per
//! million are kept).

use airlock_token::glob::Glob;
use serde::Deserialize;

/// Per-token prices in nano-dollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Uncached input token.
    pub input: i64,
    /// Input token served from the provider's cache.
    pub cached_input: i64,
    /// Output token.
    pub output: i64,
}

/// The price list, first match wins.
#[derive(Debug, Clone, Default)]
pub struct Prices {
    entries: Vec<(Glob, Rate)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Shipped {
    price: Vec<ShippedPrice>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShippedPrice {
    model: String,
    input: f64,
    cached_input: Option<f64>,
    output: f64,
}

/// Dollars per million tokens → nano-dollars per token.
pub fn nanos_per_token(usd_per_million: f64) -> Result<i64, String> {
    if !(usd_per_million.is_finite() && (0.0..=1_000_000.0).contains(&usd_per_million)) {
        return Err(format!(
            "{usd_per_million} is not a price between 0 and 1000000 dollars per million tokens"
        ));
    }
    Ok((usd_per_million * 1000.0).round() as i64)
}

impl Prices {
    /// The shipped table, after `overrides` (pattern, input, cached input, output; dollars per
    /// million). Literal override patterns come before wildcard ones.
    pub fn load(overrides: &[(String, f64, Option<f64>, f64)]) -> Result<Prices, String> {
        let mut entries = Vec::new();
        let mut push = |pattern: &str, i: f64, c: Option<f64>, o: f64| -> Result<(), String> {
            let g = Glob::new(pattern).map_err(|e| format!("pricing: {e}"))?;
            let input = nanos_per_token(i)?;
            let rate = Rate {
                input,
                cached_input: c.map(nanos_per_token).transpose()?.unwrap_or(input),
                output: nanos_per_token(o)?,
            };
            entries.push((g, rate));
            Ok(())
        };
        let mut ov: Vec<&(String, f64, Option<f64>, f64)> = overrides.iter().collect();
        ov.sort_by_key(|(p, ..)| p.contains(['*', '?']));
        for (p, i, c, o) in ov {
            push(p, *i, *c, *o)?;
        }
        let shipped: Shipped = toml::from_str(include_str!("prices.toml"))
            .map_err(|e| format!("the shipped price table is invalid: {e}"))?;
        for p in shipped.price {
            push(&p.model, p.input, p.cached_input, p.output)?;
        }
        Ok(Prices { entries })
    }

    /// The rate for a model, if it has one.
    pub fn rate(&self, model: &str) -> Option<Rate> {
        self.entries
            .iter()
            .find(|(g, _)| g.matches(model))
            .map(|(_, r)| *r)
    }

    /// The cost of a request: `input` counts every prompt token (cached ones included, as
    /// providers report it), `cached` the part served from cache. None when the model has no
    /// price or nothing was counted.
    pub fn cost_nanos(
        &self,
        model: &str,
        input: Option<i64>,
        cached: Option<i64>,
        output: Option<i64>,
    ) -> Option<i64> {
        if input.is_none() && output.is_none() {
            return None;
        }
        let r = self.rate(model)?;
        let input = input.unwrap_or(0).max(0);
        let cached = cached.unwrap_or(0).clamp(0, input);
        let output = output.unwrap_or(0).max(0);
        // Saturating: an absurd count costs the most, never nothing.
        let sum = (input - cached)
            .saturating_mul(r.input)
            .saturating_add(cached.saturating_mul(r.cached_input))
            .saturating_add(output.saturating_mul(r.output));
        Some(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_exact_integers() {
        let p = Prices::load(&[]).unwrap_or_else(|e| panic!("{e}"));
        // gpt-4o-mini: 0.15 / 0.075 / 0.60 dollars per million = 150 / 75 / 600 nanos a token.
        assert_eq!(
            p.rate("gpt-4o-mini-2024-07-18"),
            Some(Rate {
                input: 150,
                cached_input: 75,
                output: 600
            })
        );
        assert_eq!(
            p.cost_nanos("gpt-4o-mini", Some(1000), Some(200), Some(50)),
            Some(800 * 150 + 200 * 75 + 50 * 600)
        );
        // The more specific entry wins over gpt-4o*, gpt-5*, o3*.
        assert_eq!(p.rate("gpt-4o").map(|r| r.input), Some(2500));
        assert_eq!(p.rate("gpt-4o-2024-05-13").map(|r| r.input), Some(5000));
        assert_eq!(p.rate("gpt-5-pro").map(|r| r.output), Some(120_000));
        assert_eq!(p.rate("o3-pro-2025-06-10").map(|r| r.input), Some(20_000));
        assert_eq!(p.rate("o3").map(|r| r.input), Some(2000));
        // Saturates rather than overflowing into nothing.
        assert_eq!(
            p.cost_nanos("gpt-4o", Some(i64::MAX), None, None),
            Some(i64::MAX)
        );
        assert_eq!(
            p.cost_nanos("unknown-model", Some(10), None, Some(10)),
            None
        );
        assert_eq!(p.cost_nanos("gpt-4o-mini", None, None, None), None);
        // A million calls of 0.1 dollar-cent each add up to exactly what they should.
        let one = p
            .cost_nanos("gpt-4o-mini", Some(1), None, Some(1))
            .unwrap_or_default();
        assert_eq!((0..1_000_000).map(|_| one).sum::<i64>(), 750_000_000);
    }

    #[test]
    fn overrides_come_first_literal_before_glob() {
        let p = Prices::load(&[
            ("gpt-4o*".into(), 1.0, None, 2.0),
            ("gpt-4o-mini".into(), 0.001, Some(0.0), 0.002),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            p.rate("gpt-4o-mini"),
            Some(Rate {
                input: 1,
                cached_input: 0,
                output: 2
            })
        );
        assert_eq!(p.rate("gpt-4o").map(|r| r.cached_input), Some(1000));
        assert!(Prices::load(&[("x".into(), -1.0, None, 0.0)]).is_err());
        assert!(Prices::load(&[("x".into(), f64::NAN, None, 0.0)]).is_err());
    }
}
