//! The request and response bodies of airlock's admin API (`/admin/v1`), defined once: the
//! server builds its answers from these types and the CLI reads them back into the same types,
//! so a field renamed on one side is a compile error on the other, not a silent `null`.
//!
//! The resources are here. Not here: the usage report (its columns follow its grouping), the
//! answer of `credential verify --old`, and the audit log's pages and records (which are
//! `airlock-audit` types).

pub mod access;
pub mod credentials;
pub mod incident;
pub mod limits;
pub mod tokens;
pub mod trust;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret in a request body (a provider key to seal, a candidate key to match): its `Debug`
/// prints nothing of it, it cannot be cloned, and it is wiped when dropped. The server takes
/// it out with [`SecretValue::take`] to move it into its own secret type at once.
#[derive(Default)]
pub struct SecretValue(zeroize::Zeroizing<String>);

impl SecretValue {
    /// Wraps a value.
    pub fn new(value: String) -> Self {
        SecretValue(zeroize::Zeroizing::new(value))
    }

    /// Takes the value out (leaving an empty one behind), to move it into another secret type.
    pub fn take(mut self) -> String {
        std::mem::take(&mut *self.0)
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for SecretValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretValue::new)
    }
}

/// The answer to a `DELETE` of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// The id removed.
    pub removed: String,
    /// The same id.
    pub id: String,
}

impl Removed {
    /// The answer for `id`.
    pub fn of(id: &str) -> Self {
        Removed {
            removed: id.to_string(),
            id: id.to_string(),
        }
    }
}
