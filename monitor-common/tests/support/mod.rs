//! Re-exports the shared test support from `monitor_common::testing`.
#![allow(unused_imports)]
pub use monitor_common::testing::*;
