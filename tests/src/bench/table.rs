//! One row per figure: what was measured, the value with its unit, and a note (target,
//! ratio, conditions).

pub struct Row {
    pub what: String,
    pub value: String,
    pub note: String,
}

impl Row {
    pub fn new(what: impl Into<String>, value: impl Into<String>, note: impl Into<String>) -> Row {
        Row {
            what: what.into(),
            value: value.into(),
            note: note.into(),
        }
    }
}

/// Prints rows as a Markdown table (pasteable into docs/PERFORMANCE.md).
pub fn print(rows: &[Row]) {
    let w0 = rows.iter().map(|r| r.what.len()).max().unwrap_or(0).max(6);
    let w1 = rows.iter().map(|r| r.value.len()).max().unwrap_or(0).max(5);
    println!("| {:<w0$} | {:>w1$} | note |", "figure", "value");
    println!("|{}|{}|---|", "-".repeat(w0 + 2), "-".repeat(w1 + 2));
    for r in rows {
        println!("| {:<w0$} | {:>w1$} | {} |", r.what, r.value, r.note);
    }
}

/// p-th percentile (0..=100) of sorted samples.
#[allow(dead_code)]
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    if sorted.is_empty() {
        return std::time::Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[i]
}
