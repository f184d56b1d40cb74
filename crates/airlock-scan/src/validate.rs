//! Is a match a real key or a placeholder? Keys are random; placeholders are not.
//!
//! A key's body (the part after its public prefix) is drawn uniformly from its alphabet, so it
//! has high entropy, mixes character classes, and has no long runs or ascending sequences.
//! Documentation examples and placeholders (`sk-xxxxxxxx`, `…EXAMPLE`, `your-key-here`) fail at
//! least one of these. The thresholds are set so that a random key fails with a probability
//! below one in a hundred thousand.

use crate::rules::{Alphabet, Rule};

// Words of five or more letters (or with a separator a random alphanumeric body lacks), so a
// random key contains one by chance about once in a million.
const PLACEHOLDER_WORDS: &[&[u8]] = &[
    b"example",
    b"placeholder",
    b"your_",
    b"your-",
    b"yourkey",
    b"yourapi",
    b"redacted",
    b"dummy",
    b"sample",
    b"insert",
    b"replace",
];

/// Whether `secret` (the whole capture, prefix included) looks like a real key of `rule`.
pub fn plausible(secret: &[u8], rule: &Rule) -> bool {
    let body = &secret[rule.prefix_len.min(secret.len())..];
    if body.len() < 16 {
        return false;
    }
    if has_placeholder_word(body) {
        return false;
    }
    // Runs and ascending sequences a random body of this alphabet shows with a probability
    // below 1e-5: with sixteen symbols a run of five turns up in about one 64-digit key in a
    // thousand, so hex bodies need longer ones.
    let hex_body = rule.alphabet == Alphabet::Hex || body.iter().all(u8::is_ascii_hexdigit);
    let (max_run, max_asc) = if hex_body { (7, 8) } else { (5, 6) };
    if longest_run(body) >= max_run || longest_ascending(body) >= max_asc {
        return false;
    }
    // An AWS access key id is 16 base32 characters after its prefix: all letters is as valid
    // as mixed (about 1 in 28 real ids has no digit), and its pattern is strict enough.
    let aws_id = rule.post == crate::rules::Post::AwsKeyId;
    let classes = classes(body);
    if classes < 2 && !aws_id {
        return false;
    }
    let h = entropy(body);
    if aws_id {
        return h >= 2.5;
    }
    // Sixteen symbols cap a hex string's entropy at 4 bits; a random one of 32 digits has
    // about 3.55, and one in ten thousand falls below 3.0 (measured over 200,000 draws: the
    // lowest was 2.86).
    let hex = rule.alphabet == Alphabet::Hex || body.iter().all(u8::is_ascii_hexdigit);
    let min = match () {
        _ if hex => 2.75,
        _ if body.len() >= 32 => 3.7,
        _ => 3.2,
    };
    h >= min
}

/// A 40-character AWS secret access key: base64 alphabet, upper and lower case and a digit or
/// symbol, random-looking, not a documentation example.
pub fn aws_secret_like(s: &[u8]) -> bool {
    let upper = s.iter().any(u8::is_ascii_uppercase);
    let lower = s.iter().any(u8::is_ascii_lowercase);
    let other = s
        .iter()
        .any(|b| b.is_ascii_digit() || *b == b'+' || *b == b'/');
    upper && lower && other && !has_placeholder_word(s) && longest_run(s) < 5 && entropy(s) >= 4.0
}

fn has_placeholder_word(body: &[u8]) -> bool {
    PLACEHOLDER_WORDS
        .iter()
        .any(|w| body.windows(w.len()).any(|win| win.eq_ignore_ascii_case(w)))
}

/// Upper, lower, digit: how many of the three occur.
fn classes(body: &[u8]) -> u8 {
    let u = body.iter().any(u8::is_ascii_uppercase) as u8;
    let l = body.iter().any(u8::is_ascii_lowercase) as u8;
    let d = body.iter().any(u8::is_ascii_digit) as u8;
    u + l + d
}

fn longest_run(body: &[u8]) -> usize {
    let mut best = 0;
    let mut run = 0;
    let mut prev = None;
    for &b in body {
        run = if Some(b) == prev { run + 1 } else { 1 };
        prev = Some(b);
        best = best.max(run);
    }
    best
}

fn longest_ascending(body: &[u8]) -> usize {
    let mut best = 1;
    let mut run = 1;
    for w in body.windows(2) {
        run = if w[1] == w[0].wrapping_add(1) {
            run + 1
        } else {
            1
        };
        best = best.max(run);
    }
    best
}

/// Shannon entropy in bits per byte.
pub fn entropy(body: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in body {
        counts[b as usize] += 1;
    }
    let n = body.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_sequences() {
        assert_eq!(longest_run(b"abccccd"), 4);
        assert_eq!(longest_ascending(b"xabcdefz"), 6);
        assert_eq!(classes(b"abc123"), 2);
        assert!(entropy(b"aaaa") < 0.01);
        assert!((entropy(b"abcd") - 2.0).abs() < 1e-9);
    }

    #[test]
    fn aws_documentation_secret_is_not_a_secret() {
        let doc = ["wJalrXUtnFEMI/K7MDENG/bPxRfiCY", "EXAMPLEKEY"].concat();
        assert!(!aws_secret_like(doc.as_bytes()));
    }
}
