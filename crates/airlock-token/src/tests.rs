use super::*;

fn ring() -> (Arc<KeyRing>, std::path::PathBuf) {
    let dir =
        std::env::temp_dir().join(format!("airlock-tok-{}", airlock_secrets::random_token(6)));
    KeyRing::generate(&dir, 1).unwrap();
    (Arc::new(KeyRing::load(&dir, 1).unwrap()), dir)
}

fn opts(models: &[&str]) -> MintOptions {
    MintOptions {
        subject: "alice".into(),
        env: "prod".into(),
        models: models.iter().map(|s| s.to_string()).collect(),
        credentials: vec![],
        ttl: Duration::from_secs(600),
        project: None,
    }
}

fn req<'a>(model: &'a str, cred: &'a str, env: &'a str) -> Request<'a> {
    Request {
        model,
        credential: cred,
        credential_env: env,
    }
}

#[test]
fn mint_verify_authorize() {
    let (keys, _d) = ring();
    let now = SystemTime::now();
    let m = mint(&keys, &opts(&["gpt-4o*", "o1"]), now).unwrap();
    assert!(m.token.starts_with(TOKEN_PREFIX));
    assert!(!m.token.contains('='));
    let ver = Verifier::new(keys.clone(), 100);
    let v = ver.verify(&m.token, now).unwrap();
    assert_eq!(v.id, m.id);
    assert_eq!(v.env, "prod");
    assert_eq!(v.subject, "alice");
    assert_eq!(v.models, vec!["gpt-4o*".to_string(), "o1".to_string()]);
    assert_eq!(v.expires_at, m.expires_at);
    ver.authorize(&v, req("gpt-4o-mini", "c1", "prod"), now)
        .unwrap();
    ver.authorize(&v, req("o1", "c1", "prod"), now).unwrap();
    // cached decision path gives the same answers
    ver.authorize(&v, req("gpt-4o-mini", "c1", "prod"), now)
        .unwrap();
    let e = ver
        .authorize(&v, req("o1-mini", "c1", "prod"), now)
        .unwrap_err();
    assert!(
        matches!(e, TokenError::Denied(ref m) if m.contains("does not allow model")),
        "{e}"
    );
    // a cached allow for (gpt-4o-mini, c1, prod) must not answer for the same names in eval
    let e = ver
        .authorize(&v, req("gpt-4o-mini", "c1", "eval"), now)
        .unwrap_err();
    assert!(
        matches!(e, TokenError::Denied(ref m) if m.contains("environment")),
        "{e}"
    );
    let e = ver
        .authorize(&v, req("gpt-4o", "c1", "eval"), now)
        .unwrap_err();
    assert!(
        matches!(e, TokenError::Denied(ref m) if m.contains("environment")),
        "{e}"
    );
}

#[test]
fn expiry_is_enforced_including_cache() {
    let (keys, _d) = ring();
    let now = SystemTime::now();
    let m = mint(&keys, &opts(&["*"]), now).unwrap();
    let ver = Verifier::new(keys, 100);
    let v = ver.verify(&m.token, now).unwrap();
    ver.authorize(&v, req("x", "c", "prod"), now).unwrap();
    let later = now + Duration::from_secs(601);
    assert!(matches!(
        ver.verify(&m.token, later),
        Err(TokenError::Expired(_))
    ));
    assert!(matches!(
        ver.authorize(&v, req("x", "c", "prod"), later),
        Err(TokenError::Expired(_))
    ));
}

#[test]
fn forged_and_malformed_tokens_are_refused() {
    let (keys, _d) = ring();
    let (other, _d2) = ring();
    let now = SystemTime::now();
    let m = mint(&other, &opts(&["*"]), now).unwrap();
    let ver = Verifier::new(keys.clone(), 100);
    assert!(matches!(ver.verify(&m.token, now), Err(TokenError::Forged)));
    // flip a character in the signature part
    let good = mint(&keys, &opts(&["*"]), now).unwrap().token;
    let mut bytes = good.clone().into_bytes();
    let i = bytes.len() - 10;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bytes).unwrap();
    assert!(ver.verify(&bad, now).is_err());
    for junk in ["", "alk_tok_", "Bearer x", "alk_tok_!!!!", "sk-not-a-token"] {
        assert!(
            matches!(ver.verify(junk, now), Err(TokenError::Malformed(_))),
            "{junk}"
        );
    }
    assert!(mint(
        &keys,
        &MintOptions {
            ttl: Duration::from_secs(25 * 3600),
            ..opts(&["*"])
        },
        now
    )
    .is_err());
    assert!(mint(&keys, &opts(&[]), now).is_err());
    assert!(mint(
        &keys,
        &MintOptions {
            env: "p\"rod".into(),
            ..opts(&["*"])
        },
        now
    )
    .is_err());
}

#[test]
fn attenuation_narrows_and_cannot_widen() {
    let (keys, _d) = ring();
    let now = SystemTime::now();
    let m = mint(&keys, &opts(&["gpt-*"]), now).unwrap();
    let narrow = attenuate(
        &m.token,
        &["gpt-4o-mini".into()],
        &[],
        Some(Duration::from_secs(60)),
        now,
    )
    .unwrap();
    let ver = Verifier::new(keys.clone(), 100);
    let v = ver.verify(&narrow, now).unwrap();
    assert_eq!(
        v.id, m.id,
        "same token id: revoking the parent revokes the child"
    );
    assert_eq!(v.blocks, 2);
    assert!(v.expires_at <= unix(now) + 60);
    ver.authorize(&v, req("gpt-4o-mini", "c", "prod"), now)
        .unwrap();
    assert!(ver.authorize(&v, req("gpt-4o", "c", "prod"), now).is_err());
    // "widening" by appending a broader block does not help: all blocks' checks apply
    let wider = attenuate(
        &narrow,
        &["*".into()],
        &[],
        Some(Duration::from_secs(3600)),
        now,
    )
    .unwrap();
    let w = ver.verify(&wider, now).unwrap();
    assert!(ver.authorize(&w, req("gpt-4o", "c", "prod"), now).is_err());
    assert!(w.expires_at <= unix(now) + 60);
    assert!(matches!(
        ver.verify(&wider, now + Duration::from_secs(61)),
        Err(TokenError::Expired(_))
    ));
    // credential narrowing
    let only_c1 = attenuate(&m.token, &[], &["c1".into()], None, now).unwrap();
    let c = ver.verify(&only_c1, now).unwrap();
    ver.authorize(&c, req("gpt-4o", "c1", "prod"), now).unwrap();
    assert!(ver.authorize(&c, req("gpt-4o", "c2", "prod"), now).is_err());
    // attenuation needs no keys and refuses a no-op
    assert!(attenuate(&m.token, &[], &[], None, now).is_err());
    let i = inspect(&narrow).unwrap();
    assert_eq!(i.blocks, 2);
    assert_eq!(i.expires_at, Some(v.expires_at));
}

#[test]
fn facts_in_appended_blocks_cannot_forge_claims() {
    let (keys, _d) = ring();
    let now = SystemTime::now();
    let m = mint(&keys, &opts(&["gpt-4o"]), now).unwrap();
    let u = UnverifiedBiscuit::from_base64(decode(&m.token).unwrap()).unwrap();
    let block = BlockBuilder::new()
        .code(r#"model("*"); env("eval"); token_id("tok_other"); expires(2099-01-01T00:00:00Z);"#)
        .unwrap();
    let t = encode(&u.append(block).unwrap().to_base64().unwrap());
    let ver = Verifier::new(keys, 100);
    // Facts in an appended block are refused outright, before any claim is read.
    assert!(matches!(ver.verify(&t, now), Err(TokenError::Malformed(_))));
}

fn append_raw(token: &str, code: &str, p: &[(&str, Term)]) -> String {
    let u = UnverifiedBiscuit::from_base64(decode(token).unwrap()).unwrap();
    let block = BlockBuilder::new()
        .code_with_params(code, params(p), HashMap::new())
        .unwrap();
    encode(&u.append(block).unwrap().to_base64().unwrap())
}

#[test]
fn appended_blocks_other_than_attenuations_are_refused_before_datalog_runs() {
    let (keys, _d) = ring();
    let now = SystemTime::now();
    let m = mint(&keys, &opts(&["*"]), now).unwrap();
    let cutoff = builder::date(&(UNIX_EPOCH + Duration::from_secs(unix(now) + 30)));
    let ver = Verifier::new(keys.clone(), 100);
    let hostile: [(&str, Vec<(&str, Term)>); 8] = [
        // A different comparison against time: would make decisions vary with the clock.
        ("check if time($x), $x < {c};", vec![("c", cutoff.clone())]),
        ("check if time($t), $t >= {c};", vec![("c", cutoff.clone())]),
        // Rules and facts: work for the engine, or facts that later checks might trust.
        ("r($x) <- time($x);", vec![]),
        ("model(\"*\");", vec![]),
        ("check if true;", vec![]),
        (
            "check all request_model($m), $m.matches(\"^(?:.*)$\");",
            vec![],
        ),
        // Hand-written regular expressions, not ones attenuate derives from globs.
        (
            "check if request_model($m), $m.matches(\"^(?:(a+)+)$\");",
            vec![],
        ),
        (
            "check if request_credential($c), {\"a b\"}.contains($c);",
            vec![],
        ),
    ];
    for (code, p) in hostile {
        let t = append_raw(&m.token, code, &p);
        match ver.verify(&t, now) {
            Err(TokenError::Malformed(msg)) => assert!(msg.contains("form"), "{code}: {msg}"),
            other => panic!("{code}: accepted or wrong error: {other:?}"),
        }
    }
    // A block written by hand in exactly attenuate's form is fine.
    let t = append_raw(
        &m.token,
        "check if time($t), $t <= {c};\ncheck if request_model($m), $m.matches({re});",
        &[
            ("c", cutoff.clone()),
            ("re", builder::string(&glob::anchored(&["gpt-4o*"]))),
        ],
    );
    let v = ver.verify(&t, now).unwrap();
    assert_eq!(v.expires_at, unix(now) + 30);
    ver.authorize(&v, req("gpt-4o-mini", "c", "prod"), now)
        .unwrap();
    assert!(ver.authorize(&v, req("o1", "c", "prod"), now).is_err());
    assert!(matches!(
        ver.authorize(
            &v,
            req("gpt-4o-mini", "c", "prod"),
            now + Duration::from_secs(31)
        ),
        Err(TokenError::Expired(_))
    ));
}

#[test]
fn third_party_blocks_are_refused() {
    let (keys, _d) = ring();
    let now = SystemTime::now();
    let m = mint(&keys, &opts(&["*"]), now).unwrap();
    let u = UnverifiedBiscuit::from_base64(decode(&m.token).unwrap()).unwrap();
    let outsider = biscuit_auth::KeyPair::new();
    let block = BlockBuilder::new()
        .code("check if request_credential($c), {\"c\"}.contains($c);")
        .unwrap();
    let third = u
        .third_party_request()
        .unwrap()
        .create_block(&outsider.private(), block)
        .unwrap();
    let t = encode(
        &u.append_third_party(&third.serialize().unwrap())
            .unwrap()
            .to_base64()
            .unwrap(),
    );
    let ver = Verifier::new(keys, 100);
    match ver.verify(&t, now) {
        Err(TokenError::Malformed(msg)) => assert!(msg.contains("third-party"), "{msg}"),
        other => panic!("accepted or wrong error: {other:?}"),
    }
}

#[test]
fn canonical_block_forms() {
    let ok = "check if time($t), $t <= 2030-01-01T00:00:00Z;\n\
              check if request_model($m), $m.matches(\"^(?:gpt\\-4o.*|o.)$\");\n\
              check if request_credential($c), {\"c-2\", \"c1\"}.contains($c);\n";
    let n = canonical_block(ok).unwrap();
    assert_eq!(n.expiries, vec![1893456000]);
    assert_eq!(n.models.len(), 1);
    assert_eq!(
        n.models[0].iter().map(|g| g.as_str()).collect::<Vec<_>>(),
        ["gpt-4o*", "o?"]
    );
    assert_eq!(
        n.credentials,
        vec![vec!["c-2".to_string(), "c1".to_string()]]
    );
    for bad in [
        "",
        "check if time($t), $t <= 2030-01-01T00:00:00Z",
        "check if time($t), $t <= 2030-01-01T00:00:00+01:00;\n",
        "check if request_model($m), $m.matches(\"^(?:gpt-4o.*)$\");\n",
        "check if request_model($m), $m.matches(\"^(?:x)$\"), true;\n",
        "check if request_credential($c), {}.contains($c);\n",
        "check if request_credential($c), {\"a\",\"b\"}.contains($c);\n",
        "check if request_env(\"prod\");\n",
    ] {
        assert!(canonical_block(bad).is_err(), "{bad}");
    }
}

#[test]
fn blocks_that_only_print_like_attenuations_are_refused() {
    let (keys, _d) = ring();
    let now = SystemTime::now();
    let m = mint(&keys, &opts(&["*"]), now).unwrap();
    let ver = Verifier::new(keys.clone(), 100);
    // A regular expression whose text closes the check and opens another: it would print as
    // two harmless checks.
    let sneaky = "^(?:x)$\");\ncheck if request_model($m), $m.matches(\"^(?:gpt\\-4o)$";
    let t = append_raw(
        &m.token,
        "check if request_model($m), $m.matches({re});",
        &[("re", builder::string(sneaky))],
    );
    assert!(matches!(ver.verify(&t, now), Err(TokenError::Malformed(_))));
    // A fact whose predicate name is the text of checks.
    let u = UnverifiedBiscuit::from_base64(decode(&m.token).unwrap()).unwrap();
    let block = BlockBuilder::new()
        .fact(builder::fact(
            "check if time($t), $t <= 2099-01-01T00:00:00Z;\ncheck if request_env",
            &[builder::string("prod")],
        ))
        .unwrap();
    let t = encode(&u.append(block).unwrap().to_base64().unwrap());
    assert!(matches!(ver.verify(&t, now), Err(TokenError::Malformed(_))));
}

#[test]
fn narrowing_is_evaluated_natively_and_bounded() {
    let (keys, _d) = ring();
    let now = SystemTime::now();
    let m = mint(&keys, &opts(&["gpt-*", "claude-*"]), now).unwrap();
    let ver = Verifier::new(keys.clone(), 100);
    // Two narrowings: both must allow the model; credentials too.
    let t1 = attenuate(
        &m.token,
        &["gpt-4o*".into(), "claude-3*".into()],
        &[],
        None,
        now,
    )
    .unwrap();
    let t2 = attenuate(
        &t1,
        &["gpt-*".into()],
        &["c1".into(), "c2".into()],
        None,
        now,
    )
    .unwrap();
    let v = ver.verify(&t2, now).unwrap();
    ver.authorize(&v, req("gpt-4o-mini", "c1", "prod"), now)
        .unwrap();
    for (model, cred, env) in [
        ("claude-3-haiku", "c1", "prod"), // allowed by t1, not by t2
        ("gpt-4.1", "c1", "prod"),        // allowed by t2, not by t1
        ("gpt-4o-mini", "c3", "prod"),    // credential not in the set
        ("gpt-4o-mini", "c1", "eval"),    // environment
    ] {
        assert!(
            matches!(
                ver.authorize(&v, req(model, cred, env), now),
                Err(TokenError::Denied(_))
            ),
            "{model} {cred} {env}"
        );
    }
    // Patterns with many wildcards (expensive to compile and match) are refused outright.
    let many: Vec<String> = (0..28).map(|i| format!("*?*?*?*?*?z{i}")).collect();
    let heavy = attenuate(&m.token, &many, &[], None, now).unwrap();
    assert!(matches!(
        ver.verify(&heavy, now),
        Err(TokenError::Malformed(_))
    ));
    // And so are narrowings listing more patterns than any real use needs.
    let wide: Vec<String> = (0..40).map(|i| format!("gpt-{i}")).collect();
    let wide = attenuate(&m.token, &wide, &[], None, now).unwrap();
    assert!(matches!(
        ver.verify(&wide, now),
        Err(TokenError::Malformed(_))
    ));
}

#[test]
fn a_model_entry_is_one_pattern_never_a_list() {
    // A checked entry must not turn into several unchecked patterns inside mint.
    let (keys, _d) = ring();
    let e = mint(&keys, &opts(&["gpt-x,*"]), SystemTime::now()).unwrap_err();
    assert!(matches!(e, TokenError::Invalid(_)), "{e}");
    assert!(mint(&keys, &opts(&["gpt-x", "*"]), SystemTime::now()).is_ok());
}
