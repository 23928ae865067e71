//! Fuzzes `monitor_common::tracker`: arbitrary segments in both directions at
//! arbitrary sequence numbers (see `hsmon_fuzz::tracker_check`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = hsmon_fuzz::tracker_input::decode(data);
    hsmon_fuzz::tracker_check::free_form(&input);
    hsmon_fuzz::tracker_check::segmentation(&input);
});
