//! The audit writer on each database, and every report read from what it wrote.

use super::*;

#[tokio::test]
async fn the_audit_writer_and_the_reports_it_feeds() {
    on_both(|s| async move {
        s.insert_credential(&credential("c1")).await.unwrap();
        s.insert_credential(&credential("c2")).await.unwrap();
        let day = 86_400_000;
        let t0 = 1_800_000_000_000 / day * day;
        let uses = [
            inference(t0 + 1_000, "c1", "alice", "10.0.0.1", "gpt-4o", 2_000_000),
            inference(t0 + 2_000, "c1", "alice", "10.0.0.1", "gpt-4o", 3_000_000),
            inference(
                t0 + 3_600_000,
                "c1",
                "bob",
                "10.0.0.2",
                "gpt-4o-mini",
                1_000_000,
            ),
            inference(t0 + day + 5, "c2", "alice", "10.0.0.1", "gpt-4o", 7_000_000),
        ];
        let (rows, records): (Vec<_>, Vec<_>) = uses.into_iter().unzip();
        let mut prev = (0, airlock_audit::GENESIS.to_string());
        let sealed: Vec<Sealed> = records
            .into_iter()
            .map(|r| {
                let s = r.seal_after(prev.0, &prev.1);
                prev = (s.record.seq, s.hash.clone());
                s
            })
            .collect();
        let head = Checkpoint {
            seq: 4,
            ts: t0 + day + 6,
            head: prev.1.clone(),
            key_id: 1,
            signature: "sig-head".into(),
        };
        let cp = Checkpoint {
            signature: "sig-cp".into(),
            ..head.clone()
        };
        // The writer runs on a thread of its own, as in the server.
        assert_eq!(s.audit_head().await.unwrap().0, 0);
        let mut w = s.batch_writer().unwrap();
        tokio::task::spawn_blocking(move || {
            w.write_batch(&rows[..3], &sealed[..3], None, None).unwrap();
            w.write_batch(&rows[3..], &sealed[3..], Some(&cp), Some(&head))
                .unwrap();
            // A record with a seq already stored: refused, nothing of its batch kept.
            assert!(w.write_batch(&rows[..1], &sealed[..1], None, None).is_err());
        })
        .await
        .unwrap();

        let all = s
            .audit_records(&AuditFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[3].hash, prev.1);
        assert_eq!(all[0].record.hash(), all[0].hash, "read back as written");
        let alice = s
            .audit_records(&AuditFilter {
                actor: Some("alice".into()),
                credential: Some("c1".into()),
                newest: true,
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(alice.len(), 1);
        assert_eq!(alice[0].record.seq, 2, "the newest of alice's on c1");
        assert_eq!(
            s.signed_head().await.unwrap().unwrap().signature,
            "sig-head"
        );
        assert_eq!(
            s.last_checkpoint().await.unwrap().unwrap().signature,
            "sig-cp"
        );
        assert_eq!(s.audit_checkpoints(1, 10).await.unwrap().len(), 1);
        assert_eq!(s.audit_head().await.unwrap(), prev);
        assert_eq!(
            s.key_uses_after("hmac-sha256:c1", t0 + 1_500)
                .await
                .unwrap(),
            2
        );

        let c1 = s.get_credential("c1").await.unwrap().unwrap();
        assert_eq!(c1.last_used_at, Some(t0 + 3_600_000));
        assert_eq!(
            s.credential_totals("c1").await.unwrap(),
            UsageTotals {
                requests: 3,
                input_tokens: 9,
                output_tokens: 12
            }
        );
        let a = s.credential_activity("c1", t0).await.unwrap();
        assert_eq!((a.requests, a.cost_micros), (3, 6_000));
        assert_eq!(a.identities[0].name, "alice");
        assert_eq!(a.identities[0].requests, 2);
        assert_eq!(
            s.credential_volume("c1", t0, t0 + day).await.unwrap(),
            (3, 6_000)
        );
        let groups = s.usage_groups(t0, t0 + 2 * day).await.unwrap();
        assert_eq!(groups.iter().map(|g| g.requests).sum::<i64>(), 4);
        let seen = s
            .seen_before("c1", SeenColumn::ClientIp, t0, t0 + day)
            .await
            .unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(
            s.spent_since(UsageDimension::Identity, "alice", t0)
                .await
                .unwrap(),
            12_000_000
        );
        let by_day = s
            .usage_report(UsageDimension::Credential, t0, t0 + 2 * day, Some(day))
            .await
            .unwrap();
        assert_eq!(by_day.len(), 2);
        assert_eq!(
            (
                by_day[0].key.as_deref(),
                by_day[0].bucket_ms,
                by_day[0].requests,
                by_day[0].cost_nanos
            ),
            (Some("c1"), Some(t0), 3, 6_000_000)
        );
        let recent = s.recent_usage(2).await.unwrap();
        assert_eq!(recent.len(), 2);
        assert!(recent[0].stream);
        assert_eq!(recent[0].credential.as_deref(), Some("c2"), "newest first");
        let h = s.anomaly_history(t0, 3_600_000).await.unwrap();
        let c1_first_hour = h
            .tallies
            .iter()
            .find(|t| !t.0 && t.1 == "c1" && t.2 == t0 / 3_600_000)
            .unwrap();
        assert_eq!((c1_first_hour.3, c1_first_hour.4), (2, 5_000_000));
        assert!(h
            .seen
            .iter()
            .any(|x| !x.0 && x.1 == "c1" && x.3.as_deref() == Some("10.0.0.2")));
    })
    .await;
}

#[tokio::test]
async fn a_nul_from_a_caller_is_stored_as_u_fffd_and_the_chain_holds() {
    on_both(|s| async move {
        let (mut u, mut a) = inference(5, "c1", "ali\0ce", "10.0.0.1", "gpt-4o", 1);
        a.reason = Some("environment `\0` is unknown".into());
        u.outcome = "refused\0".into();
        let sealed = a.seal_after(0, airlock_audit::GENESIS);
        assert!(!sealed.record.reason.as_deref().unwrap().contains('\0'));
        let mut w = s.batch_writer().unwrap();
        let good = inference(6, "c1", "bob", "10.0.0.2", "gpt-4o", 1);
        let next = good.1.seal_after(1, &sealed.hash);
        tokio::task::spawn_blocking(move || {
            w.write_batch(&[u, good.0], &[sealed, next], None, None)
                .unwrap()
        })
        .await
        .unwrap();
        let back = s
            .audit_records(&AuditFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(back.len(), 2, "the record behind it was stored too");
        assert_eq!(back[0].record.subject.as_deref(), Some("ali\u{FFFD}ce"));
        assert_eq!(back[0].record.hash(), back[0].hash, "hashed as stored");
        assert_eq!(back[1].record.prev, back[0].hash);
    })
    .await;
}

#[tokio::test]
async fn two_writers_append_to_one_chain_in_turn() {
    use airlock_audit::log::{Sealing, Storage};
    on_both(|s| async move {
        let writers = [s.batch_writer().unwrap(), s.batch_writer().unwrap()];
        // Not shared yet: one server per database (see BatchWriter::shared).
        assert!(!writers[0].shared());
        let threads: Vec<_> = writers
            .into_iter()
            .enumerate()
            .map(|(w, mut writer)| {
                tokio::task::spawn_blocking(move || {
                    for i in 0..40 {
                        let (_, rec) = inference(i, "c", &format!("w{w}"), "10.0.0.1", "m", 1);
                        let mut seal = |seq: i64, hash: &str| {
                            let sealed = rec.clone().seal_after(seq, hash);
                            let tip = (sealed.record.seq, sealed.hash.clone());
                            Some(Sealing {
                                records: vec![sealed],
                                checkpoint: None,
                                head: None,
                                tip,
                            })
                        };
                        let stored = writer.append(&[], &mut seal).unwrap();
                        assert!(stored.is_some());
                    }
                })
            })
            .collect();
        for t in threads {
            t.await.unwrap();
        }
        let all = s
            .audit_records(&AuditFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 80);
        let mut prev = airlock_audit::GENESIS.to_string();
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.record.seq, i as i64 + 1);
            assert_eq!(r.record.prev, prev, "a link of the chain at {}", i + 1);
            assert_eq!(r.record.hash(), r.hash);
            prev.clone_from(&r.hash);
        }
    })
    .await;
}
