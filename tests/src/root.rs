//! The root guard every test calls first.
//!
//! Without root a test cannot create namespaces or load eBPF programs. On a
//! developer machine it then skips loudly; where a skip would hide a broken
//! setup (`CI` or `HSMON_REQUIRE_ROOT` set) it fails instead.

use std::io::Write;

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Returns `true` when the test may go on. Without root: panics if
/// `HSMON_REQUIRE_ROOT` or `CI` is set, otherwise prints a loud
/// `SKIPPED (needs root)` line to stderr and returns `false`.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if env_set("HSMON_REQUIRE_ROOT") || env_set("CI") {
        panic!("this test needs root: {test} (HSMON_REQUIRE_ROOT or CI is set, so not skipping)");
    }
    // Written to the stderr handle directly: libtest captures `eprintln!`
    // of passing tests, and a skip must be seen.
    let bar = "=".repeat(60);
    let _ = writeln!(
        std::io::stderr(),
        "{bar}\nSKIPPED (needs root): {test}\n(set HSMON_REQUIRE_ROOT=1 to make this a failure)\n{bar}"
    );
    false
}

/// First line of a root-only test: returns from the test early (skip) or
/// panics, as [`root_or_skip`] decides.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::root::root_or_skip(module_path!()) {
            return;
        }
    };
    ($name:expr) => {
        if !$crate::root::root_or_skip($name) {
            return;
        }
    };
}
