//! Output: text for people, JSON for programs, SARIF 2.1.0 for code-scanning services.
//!
//! Every format is built from the redacted preview and the fingerprint; none has access to
//! anything else of the secret.

use crate::rules::{self, Confidence};
use crate::{Finding, Location, Report};
use serde_json::{json, Value};
use std::fmt::Write;

fn location_json(l: &Location) -> Value {
    json!({
        "path": l.path,
        "line": l.line,
        "column": l.column,
        "commit": l.commit.as_ref().map(|c| c.id.clone()),
        "author": l.commit.as_ref().map(|c| c.author.clone()),
        "commit_time": l.commit.as_ref().map(|c| c.time),
    })
}

/// One finding as JSON.
pub fn finding_json(f: &Finding) -> Value {
    let first = &f.locations[0];
    json!({
        "rule_id": f.rule.id,
        "provider": f.rule.provider,
        "confidence": f.rule.confidence,
        "description": f.rule.description,
        "path": first.path,
        "line": first.line,
        "column": first.column,
        "commit": first.commit.as_ref().map(|c| c.id.clone()),
        "author": first.commit.as_ref().map(|c| c.author.clone()),
        "commit_time": first.commit.as_ref().map(|c| c.time),
        "in_head": f.in_head,
        "redacted": f.redacted,
        "fingerprint": f.fingerprint,
        "credential": f.credential,
        "occurrences": f.locations.len(),
        "locations": f.locations.iter().map(location_json).collect::<Vec<_>>(),
    })
}

/// The whole report as one JSON object: `findings` and `stats`.
pub fn json(r: &Report) -> Value {
    json!({
        "findings": r.findings.iter().map(finding_json).collect::<Vec<_>>(),
        "stats": r.stats,
    })
}

fn short(id: &str) -> &str {
    &id[..id.len().min(10)]
}

fn place(l: &Location) -> String {
    match &l.commit {
        None => format!("{}:{}:{}", l.path, l.line, l.column),
        Some(c) => format!(
            "{}:{}:{} in commit {} ({}, {})",
            l.path,
            l.line,
            l.column,
            short(&c.id),
            c.author,
            date(c.time)
        ),
    }
}

/// `YYYY-MM-DD` of a unix time (UTC).
fn date(t: i64) -> String {
    // Civil-from-days (Howard Hinnant's algorithm), to avoid a date dependency.
    let z = t.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{:04}-{:02}-{:02}", if m <= 2 { y + 1 } else { y }, m, d)
}

/// Text for a terminal or a log.
pub fn text(r: &Report, show_low: bool) -> String {
    let mut s = String::new();
    let mut low_hidden = 0;
    for f in &r.findings {
        if f.rule.confidence == Confidence::Low && !show_low {
            low_hidden += 1;
            continue;
        }
        let tier = match f.rule.confidence {
            Confidence::High => "",
            Confidence::Low => " (low confidence)",
        };
        let _ = writeln!(
            s,
            "{} key {}{}  [{}]  {}",
            f.rule.provider, f.redacted, tier, f.rule.id, f.fingerprint
        );
        for l in f.locations.iter().take(20) {
            let _ = writeln!(s, "    {}", place(l));
        }
        if f.locations.len() > 20 {
            let _ = writeln!(s, "    … and {} more places", f.locations.len() - 20);
        }
        match f.in_head {
            Some(false) => {
                let _ = writeln!(
                    s,
                    "    gone from HEAD, still in history: rotate it (rewriting history does not un-leak a key)"
                );
            }
            Some(true) if f.locations.iter().any(|l| l.commit.is_some()) => {
                let _ = writeln!(s, "    still in HEAD and in history");
            }
            _ => {}
        }
        if let Some(c) = &f.credential {
            let _ = writeln!(
                s,
                "    this is inventory credential {c}: rotate it now (airlock credential rotate {c})"
            );
        }
        s.push('\n');
    }
    let st = &r.stats;
    let _ = write!(
        s,
        "{} finding{} ({} failing the run)",
        st.findings,
        if st.findings == 1 { "" } else { "s" },
        st.new_high,
    );
    if st.baselined > 0 {
        let _ = write!(s, ", {} in the baseline", st.baselined);
    }
    if low_hidden > 0 {
        let _ = write!(s, ", {low_hidden} low-confidence not shown (--show-low)");
    }
    let _ = writeln!(
        s,
        "; scanned {} files, {} blobs in {} commits, {:.1} MB in {:.2} s",
        st.files,
        st.blobs,
        st.commits,
        st.bytes as f64 / 1e6,
        st.elapsed_ms as f64 / 1e3
    );
    s
}

/// SARIF 2.1.0, as GitHub code scanning takes it: one run, the rule table as the tool's rules,
/// one result per distinct secret with every place it occurs.
pub fn sarif(r: &Report) -> Value {
    let all = rules::all();
    let mut rule_list: Vec<&rules::Rule> = all.iter().collect();
    rule_list.push(&rules::AWS_KEY_ID_ALONE);
    let rules_json: Vec<Value> = rule_list
        .iter()
        .map(|ru| {
            json!({
                "id": ru.id,
                "name": ru.id,
                "shortDescription": {"text": ru.description},
                "fullDescription": {"text": format!("{}. A key found in a file or in history is leaked: rotate it at the provider, then remove it.", ru.description)},
                "help": {"text": "Rotate the key at the provider (or `airlock credential rotate NAME` if airlock brokers it), then remove it from the file; a key in git history stays readable to anyone with a clone."},
                "defaultConfiguration": {"level": level(ru.confidence)},
                "properties": {"tags": ["security", "secret"], "precision": if ru.confidence == Confidence::High {"high"} else {"low"}, "security-severity": if ru.confidence == Confidence::High {"9.0"} else {"5.0"}},
            })
        })
        .collect();
    let results: Vec<Value> = r
        .findings
        .iter()
        .map(|f| {
            let idx = rule_list
                .iter()
                .position(|x| x.id == f.rule.id)
                .unwrap_or(0);
            let mut msg = format!("{} key {} ({})", f.rule.provider, f.redacted, f.rule.id);
            if let Some(c) = &f.credential {
                let _ = write!(msg, ": inventory credential {c}, rotate it");
            }
            if f.in_head == Some(false) {
                msg.push_str("; removed from HEAD but still in git history");
            }
            let locs: Vec<Value> = f
                .locations
                .iter()
                .take(10)
                .map(|l| {
                    let mut v = json!({
                        "physicalLocation": {
                            "artifactLocation": {"uri": uri(&l.path), "uriBaseId": "%SRCROOT%"},
                            "region": {"startLine": l.line, "startColumn": l.column},
                        }
                    });
                    if let Some(c) = &l.commit {
                        v["message"] =
                            json!({"text": format!("in commit {} by {}", c.id, c.author)});
                    }
                    v
                })
                .collect();
            json!({
                "ruleId": f.rule.id,
                "ruleIndex": idx,
                "level": level(f.rule.confidence),
                "message": {"text": msg},
                "locations": &locs[..1],
                "relatedLocations": locs[1..].iter().enumerate().map(|(i, l)| {
                    let mut l = l.clone();
                    l["id"] = json!(i + 1);
                    l
                }).collect::<Vec<_>>(),
                "partialFingerprints": {"airlockSecret/v1": f.fingerprint},
                "properties": {
                    "provider": f.rule.provider,
                    "redacted": f.redacted,
                    "credential": f.credential,
                    "commit": f.locations[0].commit.as_ref().map(|c| c.id.clone()),
                    "inHead": f.in_head,
                    "occurrences": f.locations.len(),
                },
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "airlock-scan",
                "semanticVersion": env!("CARGO_PKG_VERSION"),
                "rules": rules_json,
            }},
            "results": results,
            "columnKind": "utf16CodeUnits",
        }],
    })
}

fn level(c: Confidence) -> &'static str {
    match c {
        Confidence::High => "error",
        Confidence::Low => "warning",
    }
}

/// A relative path as a URI reference: forward slashes, no leading `./`, spaces and other
/// reserved characters percent-encoded.
fn uri(path: &str) -> String {
    let p = path.trim_start_matches("./");
    let mut out = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_767_225_599), "2025-12-31");
    }

    #[test]
    fn uris() {
        assert_eq!(uri("./a b/c.py"), "a%20b/c.py");
    }
}
