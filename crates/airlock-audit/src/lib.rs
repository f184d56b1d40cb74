//! airlock's audit log: the record, its canonical encoding, the hash chain, signed
//! checkpoints and the verifier, which are pure data (the same code runs in the server, in
//! `airlock audit verify` against the database, and offline against an export with nothing but
//! the public key); and, in [`log`], the writer that appends to a store through the
//! [`log::Storage`] interface, and its start check.
//!
//! # Encoding (re-implementable by a third party)
//!
//! * A record is a JSON object with exactly the fields of [`Record`] (absent values are `null`,
//!   except `key`, which is left out when absent;
//!   every number is an integer in [0, 2^53], so that every JSON reader holds it exactly). Its
//!   **canonical form** is that object serialized per RFC 8785 (JSON Canonicalization Scheme):
//!   keys sorted by code point, no whitespace, and strings escaped minimally: `"` as `\"`, `\`
//!   as `\\`, U+0008/0009/000A/000C/000D as `\b \t \n \f \r`, every other character below
//!   U+0020 as `\u00xx` (lowercase hex), and everything else, including non-ASCII, `/`, `<`,
//!   `>`, `&` and U+2028, as raw UTF-8. In Python that is `json.dumps(record, sort_keys=True,
//!   separators=(",", ":"), ensure_ascii=False)`; Go's `encoding/json` does not qualify (it
//!   escapes `<>&` and U+2028). The test vectors in `tests.rs` pin the encoding.
//! * An export line with a key twice is malformed (libraries disagree on which one counts).
//! * `hash = hex(SHA-256("airlock-audit-record-v1\n" || canonical(record)))`. The record holds
//!   `prev`, the previous record's hash (64 zeros for the first), so the hashes form a chain.
//! * A checkpoint signs a position of the chain: the Ed25519 signature (key separate from the
//!   token root key) over `"airlock-audit-checkpoint-v1\n" || canonical({"head", "key_id",
//!   "seq", "ts"})`, where `head` is the hash of record `seq`.
//!
//! An export is JSON Lines: `{"type":"record", …record fields…, "hash": …}` and
//! `{"type":"checkpoint", "seq", "ts", "head", "key_id", "signature"}`.
#![warn(missing_docs)]

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const RECORD_DOMAIN: &[u8] = b"airlock-audit-record-v1\n";
const CHECKPOINT_DOMAIN: &[u8] = b"airlock-audit-checkpoint-v1\n";

/// One audit record. Field meanings are stable: adding a field is a new encoding version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// Unix milliseconds.
    pub ts: i64,
    /// `token`, `admin`, `service_account`, `anonymous` or `system`.
    pub actor_kind: String,
    /// Token id, admin key id, …
    pub actor: Option<String>,
    /// The token's subject or the admin key's name.
    pub subject: Option<String>,
    /// What happened: `inference`, `request.refused`, `secret.resolve`, `credential.add`, …
    pub action: String,
    /// Kind of the thing acted on: `credential`, `token`, `admin_key`, `config`.
    pub target_kind: Option<String>,
    /// Its name or id.
    pub target: Option<String>,
    /// `ok`, `refused`, `failed`, `upstream_error`, `client_disconnected`, …
    pub outcome: String,
    /// Why (for refusals and failures), in words.
    pub reason: Option<String>,
    /// The request id (`x-airlock-request-id`).
    pub request_id: Option<String>,
    /// Client address.
    pub client_ip: Option<String>,
    /// For inference: the credential used.
    pub credential: Option<String>,
    /// For inference: the model asked for.
    pub model: Option<String>,
    /// HTTP status sent to the client.
    pub status: Option<i64>,
    /// Input tokens the provider reported.
    pub input_tokens: Option<i64>,
    /// Output tokens the provider reported.
    pub output_tokens: Option<i64>,
    /// Cost in millionths of a US dollar, when the model has a price.
    pub cost_micros: Option<i64>,
    /// The keyed fingerprints of the provider keys a request used (never the keys), in order,
    /// comma-separated (a fallback used each): what lets the log prove that an old key was not
    /// used after a rotation. Left out of the object
    /// when absent, so records from before it existed encode and hash as they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Hash of the previous record.
    pub prev: String,
}

/// A record with its hash, as stored and exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The record.
    pub record: Record,
    /// Its hash.
    pub hash: String,
}

impl Sealed {
    /// The record's fields plus `hash`, as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.record).unwrap_or(serde_json::Value::Null);
        if let Some(m) = v.as_object_mut() {
            m.insert("hash".into(), serde_json::Value::String(self.hash.clone()));
        }
        v
    }

    /// Parses what [`Sealed::to_json`] wrote (extra `type` allowed).
    pub fn from_json(mut v: serde_json::Value) -> Result<Self, String> {
        let m = v.as_object_mut().ok_or("a record must be a JSON object")?;
        m.remove("type");
        // `key` is left out when absent; an explicit null would hash differently from how a
        // third party reading the line would hash it.
        if m.get("key").is_some_and(serde_json::Value::is_null) {
            return Err("`key` is either a string or absent, never null".into());
        }
        let hash = match m.remove("hash") {
            Some(serde_json::Value::String(h)) => h,
            _ => return Err("a record needs its `hash`".into()),
        };
        let record: Record = serde_json::from_value(v).map_err(|e| e.to_string())?;
        Ok(Sealed { record, hash })
    }
}

/// A signed position of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Sequence number of the record it covers.
    pub seq: i64,
    /// Unix milliseconds.
    pub ts: i64,
    /// Hash of record `seq`.
    pub head: String,
    /// Id of the audit key that signed.
    pub key_id: i64,
    /// Hex Ed25519 signature.
    pub signature: String,
}

fn canonical<T: Serialize>(v: &T) -> Vec<u8> {
    // Re-collect into a BTreeMap so key order is sorted whatever serde_json features are on.
    let value = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
    let sorted: BTreeMap<String, serde_json::Value> = match value {
        serde_json::Value::Object(m) => m.into_iter().collect(),
        _ => BTreeMap::new(),
    };
    serde_json::to_vec(&sorted).unwrap_or_default()
}

impl Record {
    /// The canonical encoding (RFC 8785 for this shape).
    pub fn canonical(&self) -> Vec<u8> {
        canonical(self)
    }

    /// The record's hash (hex).
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(RECORD_DOMAIN);
        h.update(self.canonical());
        hex::encode(h.finalize())
    }

    /// Sets `seq` and `prev` to follow `(prev_seq, prev_hash)` and seals the record. A NUL
    /// character in any text (a caller can put one in a field that is quoted into `reason`)
    /// becomes U+FFFD first: PostgreSQL's text refuses NUL, and a record no database can store
    /// would hold up every record queued behind it. Hashed as stored, so both databases agree.
    pub fn seal_after(mut self, prev_seq: i64, prev_hash: &str) -> Sealed {
        for s in [&mut self.actor_kind, &mut self.action, &mut self.outcome] {
            no_nul(s);
        }
        for s in [
            &mut self.actor,
            &mut self.subject,
            &mut self.target_kind,
            &mut self.target,
            &mut self.reason,
            &mut self.request_id,
            &mut self.client_ip,
            &mut self.credential,
            &mut self.model,
            &mut self.key,
        ]
        .into_iter()
        .flatten()
        {
            no_nul(s);
        }
        self.seq = prev_seq + 1;
        self.prev = prev_hash.to_string();
        let hash = self.hash();
        Sealed { record: self, hash }
    }
}

/// Replaces each NUL character with U+FFFD.
pub fn no_nul(s: &mut String) {
    if s.contains('\0') {
        *s = s.replace('\0', "\u{FFFD}");
    }
}

#[derive(Serialize)]
struct CheckpointBody<'a> {
    seq: i64,
    ts: i64,
    head: &'a str,
    key_id: i64,
}

impl Checkpoint {
    fn message(seq: i64, ts: i64, head: &str, key_id: i64) -> Vec<u8> {
        let mut m = CHECKPOINT_DOMAIN.to_vec();
        m.extend(canonical(&CheckpointBody {
            seq,
            ts,
            head,
            key_id,
        }));
        m
    }

    /// Whether any of `keys` signed this checkpoint.
    pub fn signature_ok(&self, keys: &PublicKeys) -> bool {
        let Ok(bytes) = hex::decode(&self.signature) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&bytes) else {
            return false;
        };
        let msg = Self::message(self.seq, self.ts, &self.head, self.key_id);
        let candidates: Vec<&VerifyingKey> = match keys.0.get(&self.key_id) {
            Some(k) => vec![k],
            None => keys.0.values().collect(),
        };
        candidates.iter().any(|k| k.verify(&msg, &sig).is_ok())
    }
}

/// Key errors. Never contain key material.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// The audit signing key (`audit-<id>.key` in the key directory, mode 0600) with its id.
pub struct AuditKey {
    key: SigningKey,
    id: i64,
}

fn key_file(dir: &Path, id: i64, ext: &str) -> PathBuf {
    dir.join(format!("audit-{id}.{ext}"))
}

impl AuditKey {
    /// Creates `audit-<id>.key` (0600) and `audit-<id>.pub` in `dir`; refuses to overwrite.
    pub fn generate(dir: &Path, id: i64) -> Result<String, KeyError> {
        let path = key_file(dir, id, "key");
        if path.exists() {
            return Err(KeyError(format!("{} already exists", path.display())));
        }
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let hex_key = Zeroizing::new(hex::encode(key.to_bytes()));
        write_private(&path, hex_key.as_bytes())?;
        let public = format!("ed25519/{}", hex::encode(key.verifying_key().to_bytes()));
        std::fs::write(key_file(dir, id, "pub"), format!("{public}\n"))
            .map_err(|e| KeyError(format!("cannot write the audit public key: {e}")))?;
        Ok(public)
    }

    /// Loads `audit-<id>.key` from `dir`.
    pub fn load(dir: &Path, id: i64) -> Result<Self, KeyError> {
        let path = key_file(dir, id, "key");
        let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| {
            KeyError(format!(
                "cannot read the audit key {}: {e} (run `airlock init` or restore it)",
                path.display()
            ))
        })?);
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), bytes.as_mut_slice())
            .map_err(|_| KeyError(format!("{} is not a hex Ed25519 key", path.display())))?;
        Ok(AuditKey {
            key: SigningKey::from_bytes(&bytes),
            id,
        })
    }

    /// Signs the chain position `(seq, head)` at time `ts`.
    pub fn checkpoint(&self, seq: i64, ts: i64, head: &str) -> Checkpoint {
        let sig = self.key.sign(&Checkpoint::message(seq, ts, head, self.id));
        Checkpoint {
            seq,
            ts,
            head: head.to_string(),
            key_id: self.id,
            signature: hex::encode(sig.to_bytes()),
        }
    }

    /// The public half, as `ed25519/<hex>`.
    pub fn public(&self) -> String {
        format!(
            "ed25519/{}",
            hex::encode(self.key.verifying_key().to_bytes())
        )
    }

    /// The key id.
    pub fn id(&self) -> i64 {
        self.id
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| KeyError(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| KeyError(format!("cannot write {}: {e}", path.display())))
}

/// Public keys that may have signed checkpoints, by key id.
#[derive(Debug, Clone, Default)]
pub struct PublicKeys(BTreeMap<i64, VerifyingKey>);

impl PublicKeys {
    /// Parses `ed25519/<hex>` (or bare hex) as the key with `id`.
    pub fn add(&mut self, id: i64, text: &str) -> Result<(), KeyError> {
        let t = text.trim();
        let h = t.strip_prefix("ed25519/").unwrap_or(t);
        let mut b = [0u8; 32];
        hex::decode_to_slice(h, &mut b)
            .map_err(|_| KeyError("a public key looks like ed25519/<64 hex characters>".into()))?;
        let k = VerifyingKey::from_bytes(&b)
            .map_err(|_| KeyError("not a valid Ed25519 public key".into()))?;
        self.0.insert(id, k);
        Ok(())
    }

    /// Every `audit-<id>.pub` in a key directory.
    pub fn from_dir(dir: &Path) -> Result<Self, KeyError> {
        let mut keys = PublicKeys::default();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| KeyError(format!("cannot read {}: {e}", dir.display())))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(id) = name
                .strip_prefix("audit-")
                .and_then(|r| r.strip_suffix(".pub"))
                .and_then(|n| n.parse::<i64>().ok())
            {
                let text = std::fs::read_to_string(e.path())
                    .map_err(|err| KeyError(format!("{name}: {err}")))?;
                keys.add(id, &text)?;
            }
        }
        if keys.0.is_empty() {
            return Err(KeyError(format!("no audit-*.pub in {}", dir.display())));
        }
        Ok(keys)
    }

    /// The keys as (id, `ed25519/<hex>`).
    pub fn list(&self) -> Vec<(i64, String)> {
        self.0
            .iter()
            .map(|(id, k)| (*id, format!("ed25519/{}", hex::encode(k.to_bytes()))))
            .collect()
    }

    /// Whether no key is known.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What is wrong with a log, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The first sequence number affected.
    pub seq: i64,
    /// `changed`, `broken_link`, `missing`, `reordered`, `truncated`, `bad_signature`,
    /// `checkpoint_mismatch`, `unsigned`, `partial`, `malformed`.
    pub kind: &'static str,
    /// What it means, in words.
    pub message: String,
}

/// What a successful verification saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Records checked.
    pub records: u64,
    /// First and last sequence numbers.
    pub first_seq: Option<i64>,
    /// Last sequence number.
    pub last_seq: Option<i64>,
    /// Hash of the last record.
    pub head: Option<String>,
    /// Checkpoints whose signature and head were checked against the chain.
    pub checkpoints_verified: u64,
    /// Checkpoints before the first record (a partial export), signature checked only.
    pub checkpoints_before_start: u64,
    /// Records after the last checkpoint: chained but not yet signed.
    pub unsigned_tail: u64,
    /// Time (unix ms) of the first record not covered by a checkpoint, if any. A running
    /// server signs within `audit.checkpoint_interval_secs`, so an old unsigned record means
    /// the checkpoints were removed or the server is not signing.
    pub first_unsigned_ts: Option<i64>,
    /// Time (unix ms) of the last record.
    pub last_ts: Option<i64>,
    /// The latest time (unix ms) of a record not covered by a checkpoint.
    pub max_unsigned_ts: Option<i64>,
}

impl Summary {
    /// A problem when the log holds records that are not signed although they were written more
    /// than `max_age_ms` before `now_ms`: a running server signs within its checkpoint
    /// interval, so old unsigned records mean that checkpoints were deleted or that records were
    /// appended by something other than airlock.
    pub fn stale_unsigned(&self, now_ms: i64, max_age_ms: i64) -> Option<Problem> {
        let first_ts = self.first_unsigned_ts?;
        let age = now_ms - first_ts;
        if age <= max_age_ms {
            return None;
        }
        let seq = self.last_seq? - self.unsigned_tail as i64 + 1;
        Some(Problem {
            seq,
            kind: "unsigned",
            message: format!(
                "records {seq} to {} are not covered by any signed checkpoint although the first was written {} s earlier; \
                 airlock signs every checkpoint_interval_secs, so checkpoints were removed or records were added by something else",
                self.last_seq.unwrap_or(seq),
                age / 1000
            ),
        })
    }
}

/// Checks records fed in order against each other and against the checkpoints.
pub struct ChainVerifier {
    checkpoints: Vec<Checkpoint>,
    next_cp: usize,
    expect_seq: Option<i64>,
    prev_hash: Option<String>,
    from_genesis: bool,
    unsigned_since: Option<i64>,
    unsigned_max: Option<i64>,
    summary: Summary,
}

impl ChainVerifier {
    /// `checkpoints` in any order; every signature is checked now. With `from_genesis`, the
    /// first record must be seq 1 following [`GENESIS`] (a whole log); without, the log may
    /// start anywhere (an export with `--since`) and is anchored by the checkpoints.
    pub fn new(
        mut checkpoints: Vec<Checkpoint>,
        keys: &PublicKeys,
        from_genesis: bool,
    ) -> Result<Self, Problem> {
        checkpoints.sort_by_key(|c| c.seq);
        for c in &checkpoints {
            if !c.signature_ok(keys) {
                return Err(Problem {
                    seq: c.seq,
                    kind: "bad_signature",
                    message: format!(
                        "the checkpoint at record {} has a bad signature: it was forged, altered, or signed by a key you did not supply",
                        c.seq
                    ),
                });
            }
        }
        Ok(ChainVerifier {
            checkpoints,
            next_cp: 0,
            expect_seq: from_genesis.then_some(1),
            prev_hash: from_genesis.then(|| GENESIS.to_string()),
            from_genesis,
            unsigned_since: None,
            unsigned_max: None,
            summary: Summary::default(),
        })
    }

    /// Checks the next record.
    pub fn record(&mut self, s: &Sealed) -> Result<(), Problem> {
        let r = &s.record;
        if let Some(want) = self.expect_seq {
            if r.seq < want {
                return Err(Problem {
                    seq: r.seq,
                    kind: "reordered",
                    message: format!(
                        "record {} appears after record {}: records were reordered or duplicated",
                        r.seq,
                        want - 1
                    ),
                });
            }
            if r.seq > want {
                return Err(Problem {
                    seq: want,
                    kind: "missing",
                    message: if r.seq == want + 1 {
                        format!(
                            "record {want} is missing or out of place (record {} stands where it belongs)",
                            r.seq
                        )
                    } else {
                        format!("records {want} to {} are missing", r.seq - 1)
                    },
                });
            }
        }
        if r.hash() != s.hash {
            return Err(Problem {
                seq: r.seq,
                kind: "changed",
                message: format!(
                    "record {} was changed: its contents no longer match its hash",
                    r.seq
                ),
            });
        }
        if let Some(prev) = &self.prev_hash {
            if &r.prev != prev {
                return Err(Problem {
                    seq: r.seq,
                    kind: "broken_link",
                    message: format!(
                        "record {} does not follow record {}: an earlier record was changed or replaced",
                        r.seq,
                        r.seq - 1
                    ),
                });
            }
        }
        // Checkpoints before the first record seen (partial export) cannot be compared.
        if self.summary.first_seq.is_none() {
            self.summary.first_seq = Some(r.seq);
            while self
                .checkpoints
                .get(self.next_cp)
                .is_some_and(|c| c.seq < r.seq)
            {
                self.next_cp += 1;
                self.summary.checkpoints_before_start += 1;
            }
        }
        let mut signed = false;
        while let Some(c) = self.checkpoints.get(self.next_cp) {
            if c.seq != r.seq {
                break;
            }
            if c.head != s.hash {
                return Err(Problem {
                    seq: r.seq,
                    kind: "checkpoint_mismatch",
                    message: format!(
                        "the signed checkpoint at record {} does not match the chain: records up to {} were rewritten",
                        r.seq, r.seq
                    ),
                });
            }
            self.next_cp += 1;
            self.summary.checkpoints_verified += 1;
            self.unsigned_since = None;
            self.unsigned_max = None;
            signed = true;
        }
        if !signed {
            if self.unsigned_since.is_none() {
                self.unsigned_since = Some(r.ts);
            }
            self.unsigned_max = Some(self.unsigned_max.map_or(r.ts, |m: i64| m.max(r.ts)));
        }
        self.summary.last_ts = Some(r.ts);
        self.summary.records += 1;
        self.summary.last_seq = Some(r.seq);
        self.expect_seq = Some(r.seq + 1);
        self.prev_hash = Some(s.hash.clone());
        Ok(())
    }

    /// Ends the check: signed positions past the end mean the log was truncated.
    pub fn finish(mut self) -> Result<Summary, Problem> {
        if let Some(c) = self.checkpoints.get(self.next_cp) {
            let last = self.summary.last_seq.unwrap_or(0);
            return Err(Problem {
                seq: last + 1,
                kind: "truncated",
                message: format!(
                    "the log was truncated: a checkpoint signs record {} but the log ends at {}",
                    c.seq,
                    if last == 0 {
                        "nothing".to_string()
                    } else {
                        format!("record {last}")
                    }
                ),
            });
        }
        if self.from_genesis && self.summary.records == 0 {
            return Ok(self.summary);
        }
        let last_cp = self.checkpoints.last().map(|c| c.seq).unwrap_or(0);
        let last = self.summary.last_seq.unwrap_or(0);
        self.summary.unsigned_tail =
            (last - last_cp.max(self.summary.first_seq.unwrap_or(1) - 1)).max(0) as u64;
        if self.summary.unsigned_tail > 0 {
            self.summary.first_unsigned_ts = self.unsigned_since;
            self.summary.max_unsigned_ts = self.unsigned_max;
        }
        self.summary.head = self.prev_hash.take();
        Ok(self.summary)
    }
}

/// One line of an export. Records far outnumber checkpoints, so the size difference is fine.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Line {
    /// A record.
    Record(Sealed),
    /// A checkpoint.
    Checkpoint(Checkpoint),
}

impl Line {
    /// The JSON Lines form (no trailing newline).
    pub fn to_line(&self) -> String {
        let v = match self {
            Line::Record(s) => {
                let mut v = s.to_json();
                if let Some(m) = v.as_object_mut() {
                    m.insert("type".into(), "record".into());
                }
                v
            }
            Line::Checkpoint(c) => {
                let mut v = serde_json::to_value(c).unwrap_or(serde_json::Value::Null);
                if let Some(m) = v.as_object_mut() {
                    m.insert("type".into(), "checkpoint".into());
                }
                v
            }
        };
        v.to_string()
    }

    /// Parses one line of an export.
    pub fn parse(text: &str) -> Result<Line, String> {
        // A line with a duplicated key reads differently to different JSON libraries (first or
        // last wins), so it is malformed rather than interpreted.
        let UniqueKeys(map) = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut v = serde_json::Value::Object(map.into_iter().collect());
        let kind = v
            .get("type")
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or("each line needs a `type` of record or checkpoint")?;
        match kind.as_str() {
            "record" => Sealed::from_json(v).map(Line::Record),
            "checkpoint" => {
                if let Some(m) = v.as_object_mut() {
                    m.remove("type");
                }
                serde_json::from_value(v)
                    .map(Line::Checkpoint)
                    .map_err(|e| e.to_string())
            }
            other => Err(format!("unknown line type `{other}`")),
        }
    }
}

/// A JSON object whose keys must be distinct (top level; record fields are never objects).
struct UniqueKeys(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<UniqueKeys, A::Error> {
                let mut seen = std::collections::HashSet::new();
                let mut out = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, serde_json::Value>()? {
                    if !seen.insert(k.clone()) {
                        return Err(serde::de::Error::custom(format!("key `{k}` appears twice")));
                    }
                    out.push((k, v));
                }
                Ok(UniqueKeys(out))
            }
        }
        d.deserialize_map(V)
    }
}

pub mod log;

#[cfg(test)]
mod tests;
