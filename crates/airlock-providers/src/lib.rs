//! The provider side of airlock, as pure code with no server state: the API dialects clients
//! speak (`dialect`), the provider adapters that build an upstream request's URL and auth
//! header (`adapter`, the one place a provider key is exposed), the usage parser over response
//! bytes (`usage`), and the mock provider that the demo and the tests run against (`mock`).

pub mod adapter;
pub mod dialect;
pub mod mock;
pub mod usage;

pub use adapter::{Endpoint, ProviderKind};
pub use dialect::{ApiError, Dialect};
