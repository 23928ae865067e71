//! Shared by the `monitor` crate's integration tests.

use std::io::Write as _;
use std::path::PathBuf;

/// The tool `name` on PATH, or `None` after a loud skip note when it is
/// missing and missing is allowed. Under `CI` or `HSMON_REQUIRE_ROOT` (the
/// full test gate) a missing tool fails the test instead. `package` says
/// where the tool comes from; `what` names the skipped tests.
pub fn required_tool(name: &str, package: &str, what: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_some() {
        return found;
    }
    let strict = ["CI", "HSMON_REQUIRE_ROOT"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    if strict {
        panic!("{name} not found on PATH ({package}); CI or HSMON_REQUIRE_ROOT is set, so not skipping");
    }
    let bar = "=".repeat(60);
    let _ = writeln!(
        std::io::stderr(),
        "{bar}\nSKIPPED (needs {name}, {package}): {what}\n{bar}"
    );
    None
}
