use super::*;

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "airlock-audit-{}",
        hex::encode(rand::random::<[u8; 6]>())
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rec(i: i64) -> Record {
    Record {
        ts: 1_700_000_000_000 + i,
        actor_kind: "token".into(),
        actor: Some(format!("tok_{i}")),
        subject: Some("ci \"quoted\" \u{1}\n/é".into()),
        action: "inference".into(),
        outcome: "ok".into(),
        credential: Some("openai-prod".into()),
        model: Some("gpt-4o-mini".into()),
        status: Some(200),
        input_tokens: Some(5),
        output_tokens: Some(7),
        ..Default::default()
    }
}

/// A chain of `n` records with a checkpoint every `every`.
fn chain(n: i64, every: i64, key: &AuditKey) -> (Vec<Sealed>, Vec<Checkpoint>) {
    let mut out = Vec::new();
    let mut cps = Vec::new();
    let (mut seq, mut head) = (0, GENESIS.to_string());
    for i in 0..n {
        let s = rec(i).seal_after(seq, &head);
        seq = s.record.seq;
        head = s.hash.clone();
        if seq % every == 0 {
            cps.push(key.checkpoint(seq, 1, &head));
        }
        out.push(s);
    }
    (out, cps)
}

fn keys_of(d: &Path) -> PublicKeys {
    PublicKeys::from_dir(d).unwrap()
}

fn verify(records: &[Sealed], cps: &[Checkpoint], keys: &PublicKeys) -> Result<Summary, Problem> {
    let mut v = ChainVerifier::new(cps.to_vec(), keys, true)?;
    for r in records {
        v.record(r)?;
    }
    v.finish()
}

#[test]
fn canonical_encoding_is_sorted_compact_and_stable() {
    let r = Record {
        seq: 1,
        ts: 2,
        actor_kind: "system".into(),
        action: "a".into(),
        outcome: "ok".into(),
        subject: Some("x\"y\u{1f}\n".into()),
        prev: GENESIS.into(),
        ..Default::default()
    };
    let text = String::from_utf8(r.canonical()).unwrap();
    assert!(
        text.starts_with(r#"{"action":"a","actor":null,"actor_kind":"system","client_ip":null,"#)
    );
    assert!(text.contains(r#""subject":"x\"y\u001f\n""#), "{text}");
    assert!(!text.contains(' '));
    // A fixed vector so a change of encoding cannot slip in unnoticed.
    assert_eq!(
        r.hash(),
        hex::encode(Sha256::digest([RECORD_DOMAIN, text.as_bytes()].concat()))
    );
}

#[test]
fn an_intact_chain_verifies() {
    let d = dir();
    let key = {
        AuditKey::generate(&d, 1).unwrap();
        AuditKey::load(&d, 1).unwrap()
    };
    let (records, cps) = chain(250, 100, &key);
    let s = verify(&records, &cps, &keys_of(&d)).unwrap();
    assert_eq!(s.records, 250);
    assert_eq!(s.checkpoints_verified, 2);
    assert_eq!(s.unsigned_tail, 50);
    let first_unsigned = s
        .first_unsigned_ts
        .expect("an unsigned tail has a first time");
    assert!(s.stale_unsigned(first_unsigned + 1000, 300_000).is_none());
    let p = s
        .stale_unsigned(first_unsigned + 301_000, 300_000)
        .expect("stale");
    assert_eq!((p.kind, p.seq), ("unsigned", s.last_seq.unwrap() - 49));
    assert_eq!(s.head.as_deref(), Some(records[249].hash.as_str()));
    // Export lines round-trip.
    for r in records.iter().take(3) {
        let l = Line::Record(r.clone()).to_line();
        match Line::parse(&l).unwrap() {
            Line::Record(back) => assert_eq!(&back, r),
            Line::Checkpoint(_) => panic!(),
        }
    }
    let l = Line::Checkpoint(cps[0].clone()).to_line();
    assert!(matches!(Line::parse(&l).unwrap(), Line::Checkpoint(c) if c == cps[0]));
}

#[test]
fn every_kind_of_tampering_is_named() {
    let d = dir();
    AuditKey::generate(&d, 1).unwrap();
    let key = AuditKey::load(&d, 1).unwrap();
    let keys = keys_of(&d);
    let (records, cps) = chain(300, 100, &key);

    // One field of one record changed, hash left alone.
    let mut t = records.clone();
    t[41].record.output_tokens = Some(1);
    let p = verify(&t, &cps, &keys).unwrap_err();
    assert_eq!((p.kind, p.seq), ("changed", 42));

    // Changed and re-hashed: the next record's link breaks.
    let mut t = records.clone();
    t[41].record.model = Some("gpt-4o".into());
    t[41].hash = t[41].record.hash();
    let p = verify(&t, &cps, &keys).unwrap_err();
    assert_eq!((p.kind, p.seq), ("broken_link", 43));

    // The whole chain recomputed from a change on: the signed checkpoint catches it.
    let mut t = records.clone();
    t[41].record.credential = Some("other".into());
    let mut head = t[40].hash.clone();
    for r in t.iter_mut().skip(41) {
        r.record.prev = head.clone();
        r.hash = r.record.hash();
        head = r.hash.clone();
    }
    let p = verify(&t, &cps, &keys).unwrap_err();
    assert_eq!((p.kind, p.seq), ("checkpoint_mismatch", 100));

    // A record deleted.
    let mut t = records.clone();
    t.remove(9);
    let p = verify(&t, &cps, &keys).unwrap_err();
    assert_eq!((p.kind, p.seq), ("missing", 10));

    // Two records swapped.
    let mut t = records.clone();
    t.swap(19, 20);
    let p = verify(&t, &cps, &keys).unwrap_err();
    assert_eq!(p.kind, "missing", "{p:?}");
    assert_eq!(p.seq, 20);
    let mut v = ChainVerifier::new(cps.clone(), &keys, true).unwrap();
    for r in &records[..20] {
        v.record(r).unwrap();
    }
    let p = v.record(&records[18]).unwrap_err();
    assert_eq!((p.kind, p.seq), ("reordered", 19));

    // Truncated past a checkpoint.
    let p = verify(&records[..250], &cps, &keys).unwrap_err();
    assert_eq!(p.kind, "truncated");
    assert!(p.message.contains("signs record 300"), "{}", p.message);

    // A forged checkpoint (another key) and an altered one.
    let other_dir = dir();
    AuditKey::generate(&other_dir, 1).unwrap();
    let other = AuditKey::load(&other_dir, 1).unwrap();
    let mut forged = cps.clone();
    forged[1] = other.checkpoint(200, 1, &records[199].hash);
    let p = verify(&records, &forged, &keys).unwrap_err();
    assert_eq!((p.kind, p.seq), ("bad_signature", 200));
    let mut altered = cps.clone();
    altered[0].seq = 101;
    let p = verify(&records, &altered, &keys).unwrap_err();
    assert_eq!(p.kind, "bad_signature");
}

#[test]
fn partial_exports_are_anchored_by_later_checkpoints() {
    let d = dir();
    AuditKey::generate(&d, 1).unwrap();
    let key = AuditKey::load(&d, 1).unwrap();
    let keys = keys_of(&d);
    let (records, cps) = chain(300, 100, &key);
    let mut v = ChainVerifier::new(cps.clone(), &keys, false).unwrap();
    for r in &records[150..] {
        v.record(r).unwrap();
    }
    let s = v.finish().unwrap();
    assert_eq!(
        (
            s.first_seq,
            s.checkpoints_before_start,
            s.checkpoints_verified
        ),
        (Some(151), 1, 2)
    );
    // Changing the first record of a partial export is still caught (its hash).
    let mut t = records[150..].to_vec();
    t[0].record.outcome = "refused".into();
    t[0].hash = t[0].record.hash();
    let mut v = ChainVerifier::new(cps, &keys, false).unwrap();
    let res = t.iter().try_for_each(|r| v.record(r));
    assert_eq!(res.unwrap_err().kind, "broken_link");
}

#[test]
fn keys_are_private_and_parse_back() {
    let d = dir();
    let public = AuditKey::generate(&d, 3).unwrap();
    assert!(AuditKey::generate(&d, 3).is_err(), "never overwritten");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("audit-3.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let k = AuditKey::load(&d, 3).unwrap();
    assert_eq!(k.public(), public);
    let mut keys = PublicKeys::default();
    keys.add(3, &public).unwrap();
    assert!(k.checkpoint(1, 2, GENESIS).signature_ok(&keys));
    assert!(keys.add(1, "ed25519/zz").is_err());
}

#[test]
fn escapes_are_minimal_and_duplicate_keys_are_malformed() {
    let r = Record {
        seq: 1,
        ts: 2,
        actor_kind: "system".into(),
        action: "a".into(),
        outcome: "ok".into(),
        reason: Some("<>&/\u{2028}é\u{1}\t\"\\".into()),
        prev: GENESIS.into(),
        ..Default::default()
    };
    let text = String::from_utf8(r.canonical()).unwrap();
    assert!(
        text.contains("\"reason\":\"<>&/\u{2028}é\\u0001\\t\\\"\\\\\""),
        "{text}"
    );
    let sealed = r.clone().seal_after(0, GENESIS);
    let line = Line::Record(sealed).to_line();
    assert!(matches!(Line::parse(&line), Ok(Line::Record(_))));
    let doubled = line.replacen("{", "{\"model\":\"x\",", 1);
    let err = Line::parse(&doubled).expect_err("a duplicated key is malformed");
    assert!(err.contains("twice"), "{err}");
}
