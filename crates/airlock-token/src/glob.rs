//! Model and credential globs: `*` matches any run of characters, `?` one character, everything
//! else is literal. The same pattern compiles to the regular expression that a token's Datalog
//! check uses (`$m.matches(...)`) and to the matcher the router uses, so both always agree.

use regex::Regex;
use std::fmt;

/// A validated glob.
#[derive(Clone)]
pub struct Glob {
    pattern: String,
    re: Regex,
}

/// A glob was empty or held characters that cannot appear in a model name.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a valid pattern: use letters, digits, `-._:/@+`, `*` (any run) and `?` (one character)")]
pub struct GlobError(pub String);

impl Glob {
    /// Parses and validates a glob.
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        let p = pattern.trim();
        let ok = !p.is_empty()
            && p.len() <= 200
            && p.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || matches!(c, '-' | '.' | '_' | ':' | '/' | '@' | '+' | '*' | '?')
            });
        if !ok {
            return Err(GlobError(pattern.to_string()));
        }
        let re = Regex::new(&anchored(&[p])).map_err(|_| GlobError(pattern.to_string()))?;
        Ok(Glob {
            pattern: p.to_string(),
            re,
        })
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        self.re.is_match(name)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the glob matches exactly one literal name.
    pub fn is_literal(&self) -> bool {
        !self.pattern.contains(['*', '?'])
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({})", self.pattern)
    }
}

fn one(p: &str) -> String {
    let mut out = String::with_capacity(p.len() + 8);
    for c in p.chars() {
        match c {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            c => out.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    out
}

/// One anchored regular expression matching any of the (already validated) patterns.
pub fn anchored(patterns: &[&str]) -> String {
    let alts: Vec<String> = patterns.iter().map(|p| one(p)).collect();
    format!("^(?:{})$", alts.join("|"))
}

/// The inverse of [`anchored`]: the patterns an anchored expression was built from, or `None`
/// when the text is not something [`anchored`] writes. Callers compare `anchored(result)` with
/// the input to be sure of the round trip. Patterns come from untrusted token blocks, so they
/// are checked for length, alphabet and wildcard count before any is compiled.
pub fn from_anchored(re: &str) -> Option<Vec<Glob>> {
    let inner = re.strip_prefix("^(?:")?.strip_suffix(")$")?;
    let mut out = Vec::new();
    for alt in inner.split('|') {
        let mut p = String::with_capacity(alt.len());
        let mut chars = alt.chars();
        while let Some(c) = chars.next() {
            match c {
                '.' if chars.as_str().starts_with('*') => {
                    chars.next();
                    p.push('*');
                }
                '.' => p.push('?'),
                '\\' => p.push(chars.next()?),
                c => p.push(c),
            }
        }
        let wildcards = p.chars().filter(|c| matches!(c, '*' | '?')).count();
        if p.len() > MAX_UNTRUSTED_LEN || wildcards > MAX_UNTRUSTED_WILDCARDS || p != p.trim() {
            return None;
        }
        out.push(Glob::new(&p).ok()?);
    }
    Some(out)
}

/// Longest pattern accepted from an appended token block.
pub const MAX_UNTRUSTED_LEN: usize = 128;
/// Most wildcards in a pattern accepted from an appended token block.
pub const MAX_UNTRUSTED_WILDCARDS: usize = 8;

/// Parses a list of globs given as repeated flags and/or comma lists.
pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Vec<Glob>, GlobError> {
    items
        .iter()
        .flat_map(|s| {
            s.as_ref()
                .split(',')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.trim().is_empty())
        .map(|s| Glob::new(&s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        let g = Glob::new("gpt-4o*").unwrap();
        assert!(g.matches("gpt-4o") && g.matches("gpt-4o-mini"));
        assert!(!g.matches("xgpt-4o") && !g.matches("gpt-4"));
        let q = Glob::new("o?").unwrap();
        assert!(q.matches("o1") && !q.matches("o10"));
        assert!(Glob::new("a.b").unwrap().matches("a.b"));
        assert!(
            !Glob::new("a.b").unwrap().matches("axb"),
            "dots are literal"
        );
        for bad in ["", "gpt 4", "a(b)", "x|y", "[ab]", "\"quoted\""] {
            assert!(Glob::new(bad).is_err(), "{bad}");
        }
        for list in [&["gpt-4o*", "o?", "a.b+c@d/e:f_g"][..], &["*"][..]] {
            let re = anchored(list);
            let back: Vec<String> = from_anchored(&re)
                .unwrap()
                .iter()
                .map(|g| g.as_str().to_string())
                .collect();
            assert_eq!(back, list, "{re}");
        }
        assert!(
            from_anchored(&anchored(&["*?*?*?*?*?"])).is_none(),
            "too many wildcards"
        );
        assert!(
            from_anchored(&anchored(&[&"a".repeat(129)])).is_none(),
            "too long"
        );
        for bad in [
            "^(?:a)",
            "^(?:a b)$",
            "^(?:a[b])$",
            "^(?:)$",
            "^(?:a\\)$",
            "^(?:.+)$",
        ] {
            assert!(
                from_anchored(bad).is_none_or(|g| {
                    let g: Vec<&str> = g.iter().map(Glob::as_str).collect();
                    anchored(&g) != bad
                }),
                "{bad}"
            );
        }
        let l = parse_list(&["gpt-*,o*", "claude-*"]).unwrap();
        assert_eq!(l.len(), 3);
        assert!(Glob::new("gpt-4o-mini").unwrap().is_literal());
    }
}
