//! Fuzzes the control API's routing and request validation with arbitrary
//! requests (see `hsmon_fuzz::api_check` for what is and is not covered).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hsmon_fuzz::api_check::check(data);
});
