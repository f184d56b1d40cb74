//! airlock's spend engine: what a request costs (`pricing`), the caps it is reserved against
//! (`budget`), the rates it is admitted at (`ratelimit`), and the detector that compares each
//! credential's and identity's use with its own history (`anomaly`). It holds no server state
//! and does no I/O besides reading its rows from the store: the clock is injected (`clock`) and
//! alarms leave as values on a channel.

pub mod anomaly;
pub mod budget;
pub mod charge;
pub mod clock;
pub mod pricing;
pub mod ratelimit;

pub use clock::{Clock, ManualClock, SystemClock};
