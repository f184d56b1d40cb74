//! What the types promise beyond their fields.

use crate::credentials::{MatchRequest, NewCredential};
use crate::SecretValue;

#[test]
fn secrets_in_request_bodies_never_print_and_still_travel() {
    let key = format!("sk-canary-{}", "x".repeat(24));
    let body = NewCredential {
        name: "c".into(),
        secret_value: Some(SecretValue::new(key.clone())),
        ..Default::default()
    };
    let m = MatchRequest {
        candidates: vec![SecretValue::new(key.clone())],
    };
    for shown in [
        format!("{body:?}"),
        format!("{m:?}"),
        format!("{:#?}", body),
    ] {
        assert!(!shown.contains(&key), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
    }
    // The wire carries it, and the server reads it back.
    let wire = serde_json::to_string(&body).unwrap();
    assert!(wire.contains(&key));
    let back: NewCredential = serde_json::from_str(&wire).unwrap();
    assert_eq!(back.secret_value.unwrap().take(), key);
}
