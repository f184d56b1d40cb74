//! Benchmark helper: appends N audit records (with a checkpoint every 1000) to the database of
//! an `airlock init` state directory, the way the server's writer does, in batches of 1000.
//!
//!     cargo run --release -p airlock-store --example audit_fill -- STATE_DIR 1000000
#![allow(clippy::unwrap_used, clippy::expect_used)]

use airlock_audit::{AuditKey, Record};
use airlock_store::Store;
use std::time::Instant;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("STATE_DIR"));
    let n: i64 = args
        .next()
        .map(|s| s.parse().expect("N"))
        .unwrap_or(1_000_000);
    let store = Store::open_sqlite(&dir.join("airlock.db"))
        .await
        .expect("open");
    let key = AuditKey::load(&dir.join("keys"), 1).expect("audit key");
    let (mut seq, mut head) = store.audit_head().await.expect("head");
    let mut writer = store.batch_writer().expect("writer");
    let start = Instant::now();
    let mut written = 0;
    while written < n {
        let mut batch = Vec::with_capacity(1000);
        for _ in 0..1000.min(n - written) {
            let r = Record {
                ts: 1_795_000_000_000 + seq,
                actor_kind: "token".into(),
                actor: Some(format!("tok_{:024x}", seq % 97)),
                subject: Some(format!("svc-{}", seq % 13)),
                action: "inference".into(),
                target_kind: Some("endpoint".into()),
                target: Some("/v1/chat/completions".into()),
                outcome: "ok".into(),
                request_id: Some(format!("{:016x}", seq)),
                client_ip: Some("127.0.0.1".into()),
                credential: Some("openai-prod".into()),
                model: Some("gpt-4o-mini".into()),
                status: Some(200),
                input_tokens: Some(12),
                output_tokens: Some(34),
                ..Default::default()
            };
            let s = r.seal_after(seq, &head);
            seq = s.record.seq;
            head.clone_from(&s.hash);
            batch.push(s);
        }
        written += batch.len() as i64;
        // Each batch signs its head and is a permanent checkpoint, as the server's would be.
        let cp = key.checkpoint(seq, 0, &head);
        writer
            .write_batch(&[], &batch, Some(&cp), Some(&cp))
            .expect("write");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "appended {n} records in {secs:.2}s ({:.0} records/s, batches of 1000, one transaction each)",
        n as f64 / secs
    );
}
