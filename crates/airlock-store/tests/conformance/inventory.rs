//! The inventory and who may use it: credentials and sealed secrets, tokens and revocation,
//! admin keys, service accounts, trust policies, budgets, rate limits, rotations.

use super::*;

#[tokio::test]
async fn credentials_and_sealed_secrets() {
    on_both(|s| async move {
        let c = credential("openai-prod");
        s.insert_credential(&c).await.unwrap();
        assert!(matches!(
            s.insert_credential(&c).await,
            Err(StoreError::Conflict(_))
        ));
        let mut first = credential("a-first");
        first.priority = 1;
        s.insert_credential(&first).await.unwrap();
        let names: Vec<_> = s
            .list_credentials()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["a-first", "openai-prod"], "by priority, then name");
        let got = s.get_credential("openai-prod").await.unwrap().unwrap();
        assert_eq!(got, c);
        // A new key behind the same reference: rotated now, version kept.
        s.set_fingerprint("openai-prod", "hmac-sha256:11", "wxyz", Some("3"), 5)
            .await
            .unwrap();
        let got = s.get_credential("openai-prod").await.unwrap().unwrap();
        assert_eq!(
            (
                got.rotated_at,
                got.secret_version.as_deref(),
                got.last4.as_deref()
            ),
            (Some(5), Some("3"), Some("wxyz"))
        );
        // The same key again: not a rotation; no version given keeps the one known.
        s.set_fingerprint("openai-prod", "hmac-sha256:11", "wxyz", None, 9)
            .await
            .unwrap();
        let got = s.get_credential("openai-prod").await.unwrap().unwrap();
        assert_eq!(
            (got.rotated_at, got.secret_version.as_deref()),
            (Some(5), Some("3"))
        );
        assert!(s.set_suspended("openai-prod", true).await.unwrap());
        assert!(
            s.get_credential("openai-prod")
                .await
                .unwrap()
                .unwrap()
                .suspended
        );
        assert!(s.set_suspended("openai-prod", false).await.unwrap());
        assert!(
            !s.get_credential("openai-prod")
                .await
                .unwrap()
                .unwrap()
                .suspended
        );
        assert!(!s.set_suspended("nobody", true).await.unwrap());

        // A sealed secret goes in with its credential and is destroyed with it.
        let sealed = SealedRow {
            id: "s_1".into(),
            credential: "sealed-one".into(),
            kek: "keyfile:/k".into(),
            kek_version: "v1".into(),
            wrapped_key: vec![1, 2, 3],
            nonce: vec![0; 12],
            ciphertext: vec![9, 0, 255, 7],
            created_at: 1,
            rewrapped_at: None,
        };
        let sc = CredentialRow {
            secret_ref: "sealed:s_1".into(),
            ..credential("sealed-one")
        };
        s.insert_credential_with(&sc, Some(&sealed)).await.unwrap();
        // A conflicting name leaves no orphan sealed secret behind.
        let again = SealedRow {
            id: "s_2".into(),
            ..sealed.clone()
        };
        assert!(s.insert_credential_with(&sc, Some(&again)).await.is_err());
        assert!(s.get_sealed("s_2").await.unwrap().is_none());
        assert_eq!(s.list_sealed().await.unwrap().len(), 1);
        let new = SealedRow {
            kek_version: "v2".into(),
            wrapped_key: vec![4],
            rewrapped_at: Some(6),
            ..sealed.clone()
        };
        assert!(
            !s.rewrap_sealed(&[7], &new).await.unwrap(),
            "changed meanwhile"
        );
        assert!(s.rewrap_sealed(&[1, 2, 3], &new).await.unwrap());
        let got = s.get_sealed("s_1").await.unwrap().unwrap();
        assert_eq!(
            (got.kek_version.as_str(), got.wrapped_key, got.ciphertext),
            ("v2", vec![4], vec![9, 0, 255, 7])
        );
        assert!(s.delete_credential("sealed-one").await.unwrap());
        assert!(s.get_sealed("s_1").await.unwrap().is_none());
        assert!(!s.delete_credential("sealed-one").await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn tokens_and_their_revocation() {
    on_both(|s| async move {
        let now_s = 1_800_000_000;
        let token = |id: &str, subject: &str, minted_by: &str, expires_at: i64| TokenRow {
            id: id.into(),
            subject: subject.into(),
            env: "prod".into(),
            models: vec!["gpt-*".into()],
            credentials: vec![],
            key_id: 1,
            created_at: now_s * 1000,
            expires_at,
            revoked_at: None,
            minted_by: minted_by.into(),
            claims: Some(serde_json::json!({"sub": subject})),
        };
        s.insert_token(&token("t1", "alice", "adm1", now_s + 60))
            .await
            .unwrap();
        s.insert_token(&token("t2", "bob", "trust:gh", now_s + 60))
            .await
            .unwrap();
        s.insert_token(&token("t3", "bob", "trust:gh", now_s + 60))
            .await
            .unwrap();
        s.insert_token(&token("old", "carol", "adm1", now_s - 1))
            .await
            .unwrap();
        let live = s.list_tokens(false, now_s).await.unwrap();
        assert_eq!(live.len(), 3);
        assert_eq!(s.list_tokens(true, now_s).await.unwrap().len(), 4);
        let t1 = live.iter().find(|t| t.id == "t1").unwrap();
        assert_eq!(t1.claims, Some(serde_json::json!({"sub": "alice"})));
        assert_eq!(t1.models, ["gpt-*"]);

        assert!(s.revoke_token("t1", 100).await.unwrap());
        assert!(s.revoke_token("t1", 200).await.unwrap(), "idempotent");
        assert!(!s.revoke_token("nope", 200).await.unwrap());
        let t1 = s.list_tokens(false, now_s).await.unwrap();
        let t1 = t1.iter().find(|t| t.id == "t1").unwrap();
        assert_eq!(
            t1.revoked_at,
            Some(100),
            "the first revocation's time stays"
        );
        assert_eq!(
            s.revoke_tokens_minted_by("trust:gh", now_s * 1000)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            s.revoke_tokens_of_subject("carol", now_s * 1000)
                .await
                .unwrap(),
            0,
            "an expired token is not revoked again"
        );
        let mut revoked = s.revoked_token_ids(now_s).await.unwrap();
        revoked.sort();
        assert_eq!(revoked, ["t1", "t2", "t3"]);
    })
    .await;
}

#[tokio::test]
async fn admin_keys_service_accounts_and_trust_policies() {
    on_both(|s| async move {
        s.insert_admin_key("o1", "first owner", "owner", "h1", None, 1)
            .await
            .unwrap();
        s.insert_admin_key("d1", "dev", "developer", "h2", Some(r#"{"env":"dev"}"#), 2)
            .await
            .unwrap();
        let k = s.admin_key("d1").await.unwrap().unwrap();
        assert_eq!((k.role.as_str(), k.hash.as_str()), ("developer", "h2"));
        assert_eq!(k.grant.as_deref(), Some(r#"{"env":"dev"}"#));
        assert!(
            !s.revoke_admin_key("o1", 5).await.unwrap(),
            "the last owner key stays"
        );
        s.insert_admin_key("o2", "second owner", "owner", "h3", None, 3)
            .await
            .unwrap();
        assert!(s.revoke_admin_key("o1", 5).await.unwrap());
        let keys = s.list_admin_keys().await.unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0].revoked_at, Some(5));
        assert_eq!(keys[1].grant, Some(serde_json::json!({"env": "dev"})));

        let sa = ServiceAccountRow {
            id: "sa1".into(),
            name: "ci".into(),
            scope: serde_json::json!({"env": "prod"}),
            hash: "h".into(),
            created_at: 10,
            created_by: "o2".into(),
            last_used_at: None,
            revoked_at: None,
        };
        s.insert_service_account(&sa).await.unwrap();
        let dup = ServiceAccountRow {
            id: "sa2".into(),
            ..sa.clone()
        };
        assert!(matches!(
            s.insert_service_account(&dup).await,
            Err(StoreError::Conflict(_))
        ));
        s.touch_service_account("sa1", 100_000).await.unwrap();
        s.touch_service_account("sa1", 100_500).await.unwrap();
        let got = s.service_account("sa1").await.unwrap().unwrap();
        assert_eq!(
            got.last_used_at,
            Some(100_000),
            "touched at most once a minute"
        );
        assert_eq!(got.scope, serde_json::json!({"env": "prod"}));
        assert_eq!(
            s.revoke_service_account("ci", 7).await.unwrap().as_deref(),
            Some("sa1")
        );
        assert_eq!(s.revoke_service_account("ci", 8).await.unwrap(), None);
        // The name is free again once revoked.
        s.insert_service_account(&dup).await.unwrap();
        assert_eq!(s.list_service_accounts().await.unwrap().len(), 2);

        let p = TrustPolicyRow {
            name: "gh".into(),
            policy: serde_json::json!({"issuer": "https://example.test"}),
            created_at: 1,
            created_by: "o2".into(),
        };
        s.insert_trust_policy(&p).await.unwrap();
        assert!(matches!(
            s.insert_trust_policy(&p).await,
            Err(StoreError::Conflict(_))
        ));
        let listed = s.list_trust_policies().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].policy, p.policy);
        assert!(s.delete_trust_policy("gh").await.unwrap());
        assert!(!s.delete_trust_policy("gh").await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn budgets_rate_limits_and_the_lockdown_epoch() {
    on_both(|s| async move {
        let b = BudgetRow {
            id: "b1".into(),
            kind: "identity".into(),
            key: "alice".into(),
            period: "day".into(),
            limit_nanos: 9_000_000_000_000_000_000,
            created_at: 1,
            created_by: "o".into(),
        };
        s.insert_budget(&b).await.unwrap();
        let got = s.list_budgets().await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].limit_nanos, b.limit_nanos, "64-bit nano-dollars");
        assert!(s.delete_budget("b1").await.unwrap());
        assert!(!s.delete_budget("b1").await.unwrap());
        let r = RateLimitRow {
            id: "r1".into(),
            kind: "token".into(),
            key: "t1".into(),
            rpm: Some(5),
            tpm: None,
            created_at: 1,
            created_by: "o".into(),
        };
        s.insert_rate_limit(&r).await.unwrap();
        let got = s.list_rate_limits().await.unwrap();
        assert_eq!((got[0].rpm, got[0].tpm), (Some(5), None));
        assert!(s.delete_rate_limit("r1").await.unwrap());

        assert_eq!(s.token_epoch().await.unwrap(), None);
        s.insert_credential(&credential("p1")).await.unwrap();
        s.insert_credential(&credential("p2")).await.unwrap();
        s.lockdown(2, 2, &["p1".into()], Some("breach"), 10)
            .await
            .unwrap();
        s.lockdown(3, 3, &[], None, 11).await.unwrap();
        assert_eq!(s.token_epoch().await.unwrap(), Some((3, 3)));
        assert!(s.get_credential("p1").await.unwrap().unwrap().suspended);
        assert!(!s.get_credential("p2").await.unwrap().unwrap().suspended);
    })
    .await;
}

#[tokio::test]
async fn rotations_and_promotion() {
    on_both(|s| async move {
        s.insert_credential(&credential("c")).await.unwrap();
        let mut r = RotationRow {
            id: "rot_1".into(),
            credential: "c".into(),
            source: "store".into(),
            state: "staged".into(),
            old_fingerprint: Some("hmac-sha256:00".into()),
            old_last4: Some("abcd".into()),
            new_fingerprint: Some("hmac-sha256:22".into()),
            new_last4: Some("efgh".into()),
            started_at: 100,
            ..Default::default()
        };
        s.save_rotation(&r).await.unwrap();
        r.state = "promoted".into();
        r.promoted_at = Some(150);
        s.save_rotation(&r).await.unwrap();
        let list = s.rotations("c", 10).await.unwrap();
        assert_eq!(list.len(), 1, "saved again, not twice");
        assert_eq!(
            (list[0].state.as_str(), list[0].promoted_at),
            ("promoted", Some(150))
        );
        let retired = s.retired_keys("c").await.unwrap();
        assert_eq!(retired.get("hmac-sha256:00"), Some(&150));

        // Promotion only from the reference the rotation started from.
        assert!(matches!(
            s.promote_key(
                "c",
                "env:SOMETHING_ELSE",
                "env:NEW",
                None,
                ("hmac-sha256:22", "efgh", Some("4")),
                160,
            )
            .await,
            Err(StoreError::Conflict(_))
        ));
        s.promote_key(
            "c",
            "env:OPENAI_API_KEY",
            "env:NEW",
            None,
            ("hmac-sha256:22", "efgh", Some("4")),
            160,
        )
        .await
        .unwrap();
        let c = s.get_credential("c").await.unwrap().unwrap();
        assert_eq!(
            (
                c.secret_ref.as_str(),
                c.fingerprint.as_deref(),
                c.rotated_at,
                c.secret_version.as_deref()
            ),
            ("env:NEW", Some("hmac-sha256:22"), Some(160), Some("4"))
        );
    })
    .await;
}

#[tokio::test]
async fn two_owners_revoking_each_other_at_once_leave_one() {
    on_both(|s| async move {
        let mut live = vec!["o0".to_string(), "o1".to_string()];
        for id in &live {
            s.insert_admin_key(id, "owner", "owner", "h", None, 1)
                .await
                .unwrap();
        }
        for round in 0..10 {
            let (a, b) = tokio::join!(
                s.revoke_admin_key(&live[0], 10 + round),
                s.revoke_admin_key(&live[1], 10 + round)
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            assert!(
                a ^ b,
                "round {round}: exactly one of the two is revoked ({a}, {b})"
            );
            let owners: Vec<String> = s
                .list_admin_keys()
                .await
                .unwrap()
                .into_iter()
                .filter(|k| k.role == "owner" && k.revoked_at.is_none())
                .map(|k| k.id)
                .collect();
            assert_eq!(owners.len(), 1, "round {round}");
            let next = format!("n{round}");
            s.insert_admin_key(&next, "owner", "owner", "h", None, 2)
                .await
                .unwrap();
            live = vec![owners[0].clone(), next];
        }
    })
    .await;
}
