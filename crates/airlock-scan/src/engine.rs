//! The matcher: an Aho-Corasick prefilter over every byte, then one multi-pattern regular
//! expression (all rules at once) over the regions around the prefilter's hits only.

use crate::rules::{self, Alphabet, Post, Rule};
use crate::validate;
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex_automata::meta::Regex;
use regex_automata::util::captures::Captures;
use regex_automata::Input;

/// How far after a keyword a match may end, on top of the rule's longest secret (the context
/// between a provider's name and its key).
const WINDOW_AFTER: usize = 160;
/// How far around an AWS key id its secret may sit.
const AWS_PAIR_DISTANCE: usize = 400;

/// A match in one buffer, before it is tied to a file and deduplicated.
pub struct RawMatch {
    /// The rule (a static from the rule table).
    pub rule: &'static Rule,
    /// Byte range of the secret in the buffer.
    pub secret: (usize, usize),
    /// Byte range shown in previews (the secret, or an AWS key id for a pair).
    pub shown: (usize, usize),
}

/// Compiled rules. Cheap to share between threads.
pub struct Matcher {
    prefilter: AhoCorasick,
    /// For each prefilter keyword, how far after it a match may end.
    after: Vec<usize>,
    regex: Regex,
    rules: &'static [Rule],
}

/// Reusable per-thread state.
pub struct Scratch {
    windows: Vec<(usize, usize)>,
    caps: Captures,
}

/// A rule table that does not compile (a bug in the table; tests catch it).
#[derive(Debug, thiserror::Error)]
#[error("scanner rules do not compile: {0}")]
pub struct BuildError(String);

impl Matcher {
    /// Compiles the built-in rules.
    pub fn new() -> Result<Self, BuildError> {
        Self::with_rules(rules::all())
    }

    /// Compiles a rule table.
    pub fn with_rules(rules: &'static [Rule]) -> Result<Self, BuildError> {
        let keywords: Vec<&str> = rules
            .iter()
            .flat_map(|r| r.keywords.iter().copied())
            .collect();
        let after: Vec<usize> = rules
            .iter()
            .flat_map(|r| r.keywords.iter().map(move |_| r.max_len + WINDOW_AFTER))
            .collect();
        let prefilter = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostFirst)
            .build(&keywords)
            .map_err(|e| BuildError(e.to_string()))?;
        let patterns: Vec<String> = rules.iter().map(|r| rules::expand(r.pattern)).collect();
        let regex = Regex::builder()
            .syntax(
                regex_automata::util::syntax::Config::new()
                    .unicode(false)
                    .utf8(false),
            )
            .configure(Regex::config().utf8_empty(false))
            .build_many(&patterns)
            .map_err(|e| BuildError(e.to_string()))?;
        Ok(Matcher {
            prefilter,
            after,
            regex,
            rules,
        })
    }

    /// Fresh per-thread state.
    pub fn scratch(&self) -> Scratch {
        Scratch {
            windows: Vec::new(),
            caps: self.regex.create_captures(),
        }
    }

    /// Finds every key in `hay`, appending to `out`.
    pub fn scan(&self, hay: &[u8], s: &mut Scratch, out: &mut Vec<RawMatch>) {
        s.windows.clear();
        for m in self.prefilter.find_iter(hay) {
            let start = m.start();
            let end = (m.end() + self.after[m.pattern().as_usize()]).min(hay.len());
            match s.windows.last_mut() {
                Some(w) if start <= w.1 => w.1 = w.1.max(end),
                _ => s.windows.push((start, end)),
            }
        }
        for &(ws, we) in &s.windows {
            let mut at = ws;
            while at < we {
                let input = Input::new(hay).range(at..we);
                self.regex.search_captures(&input, &mut s.caps);
                let Some(m) = s.caps.get_match() else { break };
                at = m.end().max(at + 1);
                let Some(g) = s.caps.get_group(1) else {
                    continue;
                };
                let rule = &self.rules[m.pattern().as_usize()];
                let (a, b) = (g.start, g.end);
                if !boundary_ok(hay, a, b, rule.alphabet) {
                    // The match may hide a real one that starts inside it (e.g. a lone id
                    // glued to text): resume right after the start of this one.
                    at = m.start() + 1;
                    continue;
                }
                if !validate::plausible(&hay[a..b], rule) {
                    at = m.start() + 1;
                    continue;
                }
                // A context rule's match may cover a prefixed key that a more specific rule
                // names: look again from the secret's start (grouping keeps the better rule).
                at = g.start.max(m.start() + 1);
                match rule.post {
                    Post::None => out.push(RawMatch {
                        rule,
                        secret: (a, b),
                        shown: (a, b),
                    }),
                    Post::AwsKeyId => match aws_secret_near(hay, a, b) {
                        Some(sec) => out.push(RawMatch {
                            rule,
                            secret: sec,
                            shown: (a, b),
                        }),
                        None => out.push(RawMatch {
                            rule: &rules::AWS_KEY_ID_ALONE,
                            secret: (a, b),
                            shown: (a, b),
                        }),
                    },
                }
            }
        }
    }
}

/// A key starts where the byte before it is not part of a word (or is the `n`/`t`/`r` of an
/// escape like `\n` inside a JSON string) and ends where its alphabet ends.
fn boundary_ok(hay: &[u8], a: usize, b: usize, alphabet: Alphabet) -> bool {
    let left = match a {
        0 => true,
        _ => {
            let p = hay[a - 1];
            !p.is_ascii_alphanumeric()
                || (a >= 2 && hay[a - 2] == b'\\' && matches!(p, b'n' | b't' | b'r'))
        }
    };
    let right = b >= hay.len() || !alphabet.contains(hay[b]);
    left && right
}

/// The secret access key that goes with an AWS key id at `a..b`: a 40-character base64 word
/// within a few hundred bytes, mixed-case, that looks random.
fn aws_secret_near(hay: &[u8], a: usize, b: usize) -> Option<(usize, usize)> {
    let lo = a.saturating_sub(AWS_PAIR_DISTANCE);
    let hi = (b + AWS_PAIR_DISTANCE).min(hay.len());
    let mut best: Option<(usize, usize)> = None;
    let mut i = lo;
    while i < hi {
        if !Alphabet::Base64.contains(hay[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < hay.len() && Alphabet::Base64.contains(hay[i]) {
            i += 1;
        }
        if i - start == 40
            && (start == 0 || !hay[start - 1].is_ascii_alphanumeric() || start == lo)
            && validate::aws_secret_like(&hay[start..i])
        {
            let dist = if start > b {
                start - b
            } else {
                a.saturating_sub(i)
            };
            let better = match best {
                None => true,
                Some((bs, be)) => {
                    let bd = if bs > b { bs - b } else { a.saturating_sub(be) };
                    dist < bd
                }
            };
            if better {
                best = Some((start, i));
            }
        }
    }
    best
}
