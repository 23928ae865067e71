//! The benchmark report: the rows the examples print (`BENCH_ROW {json}`,
//! see `tests::bench::Row`), each judged against its target, written as
//! `report.json` and `report.md` and printed as a table.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The prefix of a row line in an example's stdout.
pub const ROW_PREFIX: &str = "BENCH_ROW ";

/// One figure, as an example printed it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Row {
    /// Section (the benchmark it came from).
    pub section: String,
    /// What was measured.
    pub what: String,
    /// The figure; `None` when it could not be measured (unit `"error"`).
    pub value: Option<f64>,
    /// Its unit.
    pub unit: String,
    /// The issue's target, if any.
    pub target: Option<f64>,
    /// `"<="` or `">="`.
    pub goal: Option<String>,
    /// How it was measured.
    pub note: String,
}

/// A row with its verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Judged {
    /// The row.
    #[serde(flatten)]
    pub row: Row,
    /// `"met"`, `"missed"`, `"no target"` or `"not measured"`.
    pub verdict: String,
    /// By how much a target was met or missed (`"2.6x over"`, `"-1.2 %"`).
    pub margin: String,
}

/// Parses a `BENCH_ROW` line (`None` for any other line).
pub fn parse_line(line: &str) -> Option<Result<Row>> {
    let json = line.strip_prefix(ROW_PREFIX)?;
    Some(serde_json::from_str(json).with_context(|| format!("bad bench row {json:?}")))
}

/// Judges a row against its target.
pub fn judge(row: Row) -> Judged {
    let (verdict, margin) = match (row.value, row.target, row.goal.as_deref()) {
        (None, _, _) => ("not measured".to_owned(), String::new()),
        (Some(v), Some(t), Some(goal)) if v.is_finite() => {
            let met = match goal {
                "<=" => v <= t,
                _ => v >= t,
            };
            let margin = margin_text(v, t, goal, &row.unit);
            (if met { "met" } else { "missed" }.to_owned(), margin)
        }
        (Some(v), Some(_), _) if !v.is_finite() => ("not measured".to_owned(), String::new()),
        _ => ("no target".to_owned(), String::new()),
    };
    Judged {
        row,
        verdict,
        margin,
    }
}

/// How far `v` is from `t`: absolute difference in the unit, and for a
/// target above zero the factor (`<=`) or the percentage (`>=`).
fn margin_text(v: f64, t: f64, goal: &str, unit: &str) -> String {
    let diff = v - t;
    let abs = if diff.abs() >= 100.0 || diff == diff.trunc() {
        format!("{diff:+.0} {unit}")
    } else if diff.abs() >= 1.0 {
        format!("{diff:+.1} {unit}")
    } else {
        format!("{diff:+.3} {unit}")
    };
    if t == 0.0 {
        return abs;
    }
    if goal == "<=" && v > t && t > 0.0 {
        format!("{abs} ({:.1}x the target)", v / t)
    } else {
        format!("{abs} ({:+.1} % of the target)", diff / t * 100.0)
    }
}

/// A number for a table cell: integers plainly, small values with digits.
fn cell(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if !v.is_finite() => "-".to_owned(),
        Some(v) if v.abs() >= 1000.0 || v == v.trunc() => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.4}"),
    }
}

fn target_cell(r: &Row) -> String {
    match (r.goal.as_deref(), r.target) {
        (Some(g), Some(t)) => format!("{g} {}", cell(Some(t))),
        _ => String::new(),
    }
}

/// The report as Markdown: a table per section, then the notes.
pub fn markdown(rows: &[Judged], header: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# hsmon benchmark report\n\n{header}\n");
    let mut sections: Vec<&str> = Vec::new();
    for r in rows {
        if !sections.contains(&r.row.section.as_str()) {
            sections.push(&r.row.section);
        }
    }
    for s in sections {
        let _ = writeln!(md, "## {s}\n");
        let _ = writeln!(
            md,
            "| what | value | unit | target | verdict | margin |\n|---|---:|---|---|---|---|"
        );
        for r in rows.iter().filter(|r| r.row.section == s) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                r.row.what.replace('|', "/"),
                cell(r.row.value),
                r.row.unit,
                target_cell(&r.row),
                r.verdict,
                r.margin
            );
        }
        let _ = writeln!(md);
        for r in rows.iter().filter(|r| r.row.section == s) {
            if !r.row.note.is_empty() {
                let _ = writeln!(md, "- *{}*: {}", r.row.what, r.row.note.replace('\n', " "));
            }
        }
        let _ = writeln!(md);
    }
    md
}

/// The report as a plain-text table for the terminal.
pub fn table(rows: &[Judged]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:<64} {:>14} {:<14} {:<10} {:<8} margin",
        "section", "what", "value", "unit", "target", "verdict"
    );
    for r in rows {
        let mut what = r.row.what.clone();
        if what.chars().count() > 64 {
            what = what.chars().take(61).collect::<String>() + "...";
        }
        let _ = writeln!(
            out,
            "{:<12} {:<64} {:>14} {:<14} {:<10} {:<8} {}",
            r.row.section,
            what,
            cell(r.row.value),
            r.row.unit,
            target_cell(&r.row),
            r.verdict,
            r.margin
        );
    }
    out
}

/// Writes `report.json` (every judged row) and `report.md` into `dir`.
pub fn write(dir: &Path, rows: &[Judged], header: &str, elapsed_s: f64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::json!({
        "header": header,
        "elapsed_s": elapsed_s,
        "rows": rows,
    });
    let path = dir.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    let path = dir.join("report.md");
    std::fs::write(&path, markdown(rows, header))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(value: Option<f64>, target: Option<f64>, goal: Option<&str>) -> Row {
        Row {
            section: "s".into(),
            what: "w".into(),
            value,
            unit: "ns".into(),
            target,
            goal: goal.map(str::to_owned),
            note: String::new(),
        }
    }

    #[test]
    fn parses_rows_and_ignores_other_lines() {
        let line = r#"BENCH_ROW {"section":"tc_cost","what":"x","value":12.5,"unit":"ns","target":150.0,"goal":"<=","note":"n"}"#;
        let r = parse_line(line).expect("a row").expect("parses");
        assert_eq!(r.value, Some(12.5));
        assert_eq!(r.goal.as_deref(), Some("<="));
        assert!(parse_line("hello").is_none());
        let err = r#"BENCH_ROW {"section":"s","what":"x","value":null,"unit":"error","target":null,"goal":null,"note":"boom"}"#;
        assert_eq!(parse_line(err).expect("row").expect("parses").value, None);
    }

    #[test]
    fn verdicts_and_margins() {
        let j = judge(row(Some(300.0), Some(150.0), Some("<=")));
        assert_eq!(j.verdict, "missed");
        assert!(j.margin.contains("2.0x"), "{}", j.margin);
        let j = judge(row(Some(100.0), Some(150.0), Some("<=")));
        assert_eq!(j.verdict, "met");
        let j = judge(row(Some(0.98), Some(0.99), Some(">=")));
        assert_eq!(j.verdict, "missed");
        assert!(j.margin.contains("-1.0 %"), "{}", j.margin);
        assert_eq!(judge(row(Some(1.0), None, None)).verdict, "no target");
        assert_eq!(
            judge(row(None, Some(1.0), Some("<="))).verdict,
            "not measured"
        );
    }

    #[test]
    fn markdown_has_a_table_per_section() {
        let rows = vec![judge(row(Some(1.0), Some(2.0), Some("<=")))];
        let md = markdown(&rows, "h");
        assert!(md.contains("## s"), "{md}");
        assert!(md.contains("| w | 1 | ns | <= 2 | met |"), "{md}");
    }
}
