//! What the config target checks: `Config::parse` on any text answers `Ok`
//! or a [`ConfigError`](monitor::config::ConfigError) that points into the
//! text (1-based line within it, column at least 1) and says what is wrong;
//! it never panics, and parsing is deterministic.

use monitor::config::Config;

/// Parses `text` twice and checks the answer.
pub fn check(text: &str) {
    let first = Config::parse(text, "fuzz.toml");
    match &first {
        Ok(_) => {}
        Err(e) => {
            let lines = text.split('\n').count();
            assert!(e.line >= 1 && e.line <= lines, "line {} of {lines}", e.line);
            assert!(e.column >= 1, "column {}", e.column);
            assert!(!e.message.is_empty(), "an empty error message");
            assert_eq!(e.file, "fuzz.toml");
        }
    }
    let second = Config::parse(text, "fuzz.toml");
    assert_eq!(
        format!("{first:?}"),
        format!("{second:?}"),
        "parsing is not deterministic"
    );
}
