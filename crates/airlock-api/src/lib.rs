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

use serde::{Deserialize, Serialize};

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
