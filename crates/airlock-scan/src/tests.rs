//! Rule and engine tests. Every key-shaped string is built here at run time from random
//! characters: none is committed.

use crate::engine::{Matcher, RawMatch};
use crate::rules::Confidence;
use rand::Rng;

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const URLSAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
const HEX: &[u8] = b"0123456789abcdef";
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn r(n: usize, alphabet: &[u8]) -> String {
    let mut g = rand::thread_rng();
    (0..n)
        .map(|_| alphabet[g.gen_range(0..alphabet.len())] as char)
        .collect()
}

/// (expected rule id, the key, text around it with `{}` for the key)
pub(crate) fn samples() -> Vec<(&'static str, String, &'static str)> {
    let marker = ["T3Bl", "bkFJ"].concat();
    vec![
        (
            "openai-api-key",
            format!("sk-proj-{}{marker}{}", r(74, URLSAFE), r(74, URLSAFE)),
            "OPENAI_API_KEY={}\n",
        ),
        (
            "openai-api-key",
            format!("sk-svcacct-{}{marker}{}", r(60, URLSAFE), r(60, URLSAFE)),
            "key: \"{}\"\n",
        ),
        (
            "openai-api-key",
            format!("sk-admin-{}{marker}{}", r(58, URLSAFE), r(58, URLSAFE)),
            "x = '{}'",
        ),
        (
            "openai-api-key",
            format!("sk-{}{marker}{}", r(20, ALNUM), r(20, ALNUM)),
            "{\"k\": \"{}\"}",
        ),
        (
            "openai-project-key",
            format!("sk-proj-{}", r(120, URLSAFE)),
            "export OPENAI_API_KEY=\"{}\"",
        ),
        (
            "anthropic-api-key",
            format!("sk-ant-api03-{}AA", r(93, URLSAFE)),
            "ANTHROPIC_API_KEY={}",
        ),
        (
            "anthropic-api-key",
            format!("sk-ant-admin01-{}AA", r(93, URLSAFE)),
            "\"source\": [\"key = \\\"{}\\\"\\n\"]",
        ),
        (
            "openrouter-api-key",
            format!("sk-or-v1-{}", r(64, HEX)),
            "{}",
        ),
        (
            "deepseek-api-key",
            format!("sk-{}", r(32, HEX)),
            "DEEPSEEK_API_KEY: {}",
        ),
        (
            "groq-api-key",
            format!("gsk_{}", r(52, ALNUM)),
            "groq = Groq(api_key=\"{}\")",
        ),
        (
            "xai-api-key",
            format!("xai-{}", r(80, ALNUM)),
            "XAI_API_KEY={}",
        ),
        (
            "perplexity-api-key",
            format!("pplx-{}", r(48, ALNUM)),
            "'{}'",
        ),
        (
            "huggingface-token",
            format!("hf_{}", r(34, ALNUM)),
            "HF_TOKEN={}",
        ),
        (
            "replicate-api-token",
            format!("r8_{}", r(37, ALNUM)),
            "REPLICATE_API_TOKEN={}",
        ),
        (
            "fireworks-api-key",
            format!("fw_{}", r(24, ALNUM)),
            "FIREWORKS_API_KEY={}",
        ),
        (
            "together-api-key",
            format!("tgp_v1_{}", r(43, URLSAFE)),
            "TOGETHER_API_KEY={}",
        ),
        ("together-api-key-hex", r(64, HEX), "TOGETHER_API_KEY={}"),
        (
            "google-api-key",
            format!("AIza{}", r(35, URLSAFE)),
            "GEMINI_API_KEY={}",
        ),
        ("azure-openai-key", r(32, HEX), "AZURE_OPENAI_API_KEY={}"),
        (
            "azure-openai-key",
            r(84, ALNUM),
            "client = AzureOpenAI(api_key=\"{}\", api_version=\"2024-06-01\")",
        ),
        ("mistral-api-key", r(32, ALNUM), "MISTRAL_API_KEY={}"),
        (
            "cohere-api-key",
            r(40, ALNUM),
            "co = cohere.Client(api_key='{}')",
        ),
        ("cohere-api-key", r(40, ALNUM), "CO_API_KEY={}"),
        (
            "braintrust-api-key",
            format!("sk-{}", r(48, ALNUM)),
            "BRAINTRUST_API_KEY={}",
        ),
        ("github-token", format!("ghp_{}", r(36, ALNUM)), "token: {}"),
        (
            "github-token",
            format!("github_pat_{}_{}", r(22, ALNUM), r(59, ALNUM)),
            "{}",
        ),
        (
            "airlock-token",
            format!("alk_tok_{}", r(300, URLSAFE)),
            "Authorization: Bearer {}",
        ),
        (
            "airlock-admin-key",
            format!("alk_admin_{}_{}", r(12, HEX), r(48, HEX)),
            "AIRLOCK_ADMIN_TOKEN={}",
        ),
        (
            "airlock-service-account-key",
            format!("alk_sa_{}_{}", r(12, HEX), r(48, ALNUM)),
            "{}",
        ),
        (
            "aws-secret-access-key",
            r(40, B64),
            "aws_secret_access_key = {}",
        ),
    ]
}

fn matcher() -> &'static Matcher {
    static M: std::sync::OnceLock<Matcher> = std::sync::OnceLock::new();
    M.get_or_init(|| Matcher::new().expect("rules compile"))
}

fn scan(text: &str) -> Vec<(String, String)> {
    let m = matcher();
    let mut s = m.scratch();
    let mut out: Vec<RawMatch> = Vec::new();
    m.scan(text.as_bytes(), &mut s, &mut out);
    out.iter()
        .map(|x| {
            (
                x.rule.id.to_string(),
                text[x.secret.0..x.secret.1].to_string(),
            )
        })
        .collect()
}

#[test]
fn every_shape_is_found_with_its_exact_extent() {
    for _ in 0..20 {
        for (rule, key, ctx) in samples() {
            let text = format!("line one\n{}\nlast line\n", ctx.replace("{}", &key));
            let found = scan(&text);
            assert!(
                found.iter().any(|(id, s)| id == rule && *s == key),
                "{rule} not found exactly in {:?}: {:?}",
                crate::redact(text.as_bytes(), 0),
                found.iter().map(|f| &f.0).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn keys_end_where_strings_end() {
    let key = format!("sk-ant-api03-{}AA", r(93, URLSAFE));
    for ctx in [
        "\"{}\"",
        "'{}'",
        "`{}`",
        "\"x = \\\"{}\\\"\\n\"",
        "k: {}\n",
        "K={}",
        "K={};",
        "(\\n{}\\n)",
        "[\"{}\",",
        "<k>{}</k>",
    ] {
        let found = scan(&ctx.replace("{}", &key));
        assert_eq!(found.len(), 1, "{ctx}");
        assert_eq!(found[0].1, key, "{ctx}");
    }
}

#[test]
fn aws_pair_and_lone_id() {
    let id = format!("AKIA{}", r(16, B32));
    let secret = loop {
        let s = r(40, B64);
        if crate::validate::aws_secret_like(s.as_bytes()) {
            break s;
        }
    };
    let text = format!("[default]\naws_access_key_id = {id}\nsecret = {secret}\n");
    let found = scan(&text);
    assert!(found
        .iter()
        .any(|(rule, s)| rule == "aws-access-key" && *s == secret));
    // An id without a digit is as real as any (base32 letters only): it pairs too.
    let letters = format!("AKIA{}", r(16, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"));
    let text = format!("aws_access_key_id = {letters}\nsecret = {secret}\n");
    assert!(scan(&text)
        .iter()
        .any(|(rule, s)| rule == "aws-access-key" && *s == secret));
    let m = matcher();
    let mut out = Vec::new();
    m.scan(format!("id: {id}\n").as_bytes(), &mut m.scratch(), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].rule.id, "aws-access-key-id");
    assert_eq!(out[0].rule.confidence, Confidence::Low);
}

#[test]
fn decoys_are_not_keys() {
    let marker = ["T3Bl", "bkFJ"].concat();
    let decoys = vec![
        "OPENAI_API_KEY=sk-...".to_string(),
        "OPENAI_API_KEY=sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx".to_string(),
        format!("sk-proj-{}{marker}{}", "a".repeat(40), "a".repeat(40)),
        format!("sk-proj-{}", "x".repeat(100)),
        format!(
            "sk-proj-{}",
            "abcdefghijklmnopqrstuvwxyz0123456789".repeat(3)
        ),
        format!("sk-ant-api03-{}AA", "your-key-here-".repeat(7)),
        ["AKIAIOSFODNN7", "EXAMPLE"].concat(),
        format!(
            "aws_secret_access_key = {}",
            ["wJalrXUtnFEMI/K7MDENG/bPxRfiCY", "EXAMPLEKEY"].concat()
        ),
        "sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        "id = 123e4567-e89b-12d3-a456-426614174000".into(),
        format!("data:image/png;base64,{}", r(400, B64)),
        format!("task-{}", r(32, HEX)),
        format!("desk{}", r(40, ALNUM)),
        format!("AIza{}", "A".repeat(35)),
        "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx".into(),
        format!("hf_{}", "abcdefghijklmnopqrstuvwxyzabcdefgh"),
        "api_key = \"<YOUR_API_KEY>\"".into(),
        format!("mistral_model = \"{}\"", r(32, ALNUM)),
    ];
    for d in decoys {
        let found = scan(&d);
        assert!(
            found.is_empty(),
            "decoy {:?} matched {:?}",
            crate::redact(d.as_bytes(), 0),
            found.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
    }
}

#[test]
fn redaction_keeps_prefix_and_last_four_only() {
    let key = format!("sk-ant-api03-{}AA", r(93, URLSAFE));
    let red = crate::redact(key.as_bytes(), 13);
    assert!(red.starts_with("sk-ant-api03-"));
    assert!(red.ends_with(&key[key.len() - 4..]));
    assert_eq!(red.chars().count(), 13 + 2 + 1 + 4);
    let short = r(32, HEX);
    let red = crate::redact(short.as_bytes(), 0);
    assert_eq!(red.chars().count(), 2 + 1 + 4);
}

#[test]
fn directory_scan_groups_streams_and_skips_binaries() {
    let dir = std::env::temp_dir().join(format!("airlock-scan-test-{}", r(8, HEX)));
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    let key = format!("gsk_{}", r(52, ALNUM));
    let other = format!("ghp_{}", r(36, ALNUM));
    std::fs::write(dir.join("a.py"), format!("x = 1\nGROQ = '{key}'\n")).expect("write");
    std::fs::write(dir.join("sub/.env"), format!("GROQ_API_KEY={key}\n")).expect("write");
    // A file larger than one chunk, with a key straddling the chunk boundary and one at the end.
    let mut big = Vec::new();
    let line = b"0123456789 lorem ipsum dolor sit amet consectetur\n";
    while big.len() < super::fs_chunk() - 20 {
        big.extend_from_slice(line);
    }
    let lines_before = big.iter().filter(|&&b| b == b'\n').count();
    big.extend_from_slice(other.as_bytes());
    big.push(b'\n');
    while big.len() < super::fs_chunk() * 2 + 1000 {
        big.extend_from_slice(line);
    }
    std::fs::write(dir.join("big.log"), &big).expect("write");
    let mut bin = vec![0u8; 100];
    bin.extend_from_slice(key.as_bytes());
    std::fs::write(dir.join("blob.bin"), bin).expect("write");

    let opts = crate::Options {
        paths: vec![dir.clone()],
        ..Default::default()
    };
    let rep = crate::scan(&opts, &crate::Progress::default()).expect("scan");
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(rep.findings.len(), 2, "one finding per distinct secret");
    let groq = rep
        .findings
        .iter()
        .find(|f| f.rule.id == "groq-api-key")
        .expect("groq");
    assert_eq!(groq.locations.len(), 2);
    assert!(groq
        .locations
        .iter()
        .any(|l| l.path.ends_with("sub/.env") && l.line == 1 && l.column == 14));
    assert!(groq
        .locations
        .iter()
        .any(|l| l.path.ends_with("a.py") && l.line == 2 && l.column == 9));
    let gh = rep
        .findings
        .iter()
        .find(|f| f.rule.id == "github-token")
        .expect("github token across the chunk boundary");
    assert_eq!(gh.locations[0].line, lines_before as u64 + 1);
    assert_eq!(rep.stats.skipped_binary, 1);
    let out = crate::report::json(&rep).to_string() + &crate::report::text(&rep, true);
    assert!(!out.contains(&key) && !out.contains(&other));
}

#[test]
fn rule_ids_are_unique() {
    let mut ids: Vec<_> = crate::rules::all().iter().map(|r| r.id).collect();
    ids.push(crate::rules::AWS_KEY_ID_ALONE.id);
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n);
}
