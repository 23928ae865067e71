//! hsmon's fuzz targets' checks, one module per target (the `fuzz_targets/`
//! binaries only hand libFuzzer's input to them): the TLS record tracker,
//! the policy file parser and the control API's request validation.

pub mod api_check;
pub mod config_check;
pub mod tracker_check;
pub mod tracker_input;
