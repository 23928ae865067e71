//! Fuzzes `monitor::config::Config::parse` with arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        hsmon_fuzz::config_check::check(text);
    }
});
