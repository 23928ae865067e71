//! What the CLI verbs print: aligned tables for people, the agent's JSON as
//! served for programs, and writing to stdout where a closed pipe
//! (`hsmon conns | head`) is not an error.

use anyhow::{Context as _, Result};

/// Columns separated by two spaces, each line trimmed and ending in a
/// newline, the header first. Cells of columns marked in `numeric` are
/// right-aligned (the header stays left-aligned); every line starts with
/// `indent`.
pub fn aligned_table<const N: usize>(
    header: [&str; N],
    rows: &[[String; N]],
    numeric: [bool; N],
    indent: &str,
) -> String {
    let header = header.map(str::to_owned);
    let mut widths = [0usize; N];
    for r in std::iter::once(&header).chain(rows) {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for (n, r) in std::iter::once(&header).chain(rows).enumerate() {
        let mut line = String::from(indent);
        for (i, cell) in r.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            if numeric[i] && n > 0 {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The agent's JSON body exactly as served, ending in a newline.
pub fn json_line(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out
}

/// What the read-only verbs do: `GET path` from the agent at `socket`, then
/// print the JSON as served (`json`) or `render` of it parsed as a `T`
/// (`what` names it in the error when the answer does not parse).
pub fn fetch_and_print<T: serde::de::DeserializeOwned>(
    socket: &std::path::Path,
    path: &str,
    json: bool,
    what: &str,
    render: impl FnOnce(&T) -> String,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let body = rt.block_on(crate::cli::client::get(socket, path))?;
    let out = if json {
        json_line(&body)
    } else {
        let value: T = serde_json::from_slice(&body)
            .with_context(|| format!("the agent's answer is not {what}"))?;
        render(&value).into_bytes()
    };
    write_stdout(&out)
}

pub use crate::stdout::write_stdout;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_numbers_go_right() {
        let rows = [
            ["a".to_owned(), "1".to_owned()],
            ["long name".to_owned(), "100".to_owned()],
        ];
        let t = aligned_table(["NAME", "N"], &rows, [false, true], "");
        assert_eq!(t, "NAME       N\na            1\nlong name  100\n");
        let indented = aligned_table(["X"], &[["y".to_owned()]], [false], "  ");
        assert_eq!(indented, "  X\n  y\n");
    }

    #[test]
    fn json_gets_exactly_one_trailing_newline() {
        assert_eq!(json_line(b"[]"), b"[]\n");
        assert_eq!(json_line(b"[]\n"), b"[]\n");
    }
}
