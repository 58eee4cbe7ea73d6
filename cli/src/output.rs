//! Shared output: the `--output` format, aligned tables, readable durations
//! and sizes, payload previews and JSON lines.

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned tables and sentences for people.
    Human,
    /// One compact JSON document per line, for programs.
    Json,
}

/// Writes `value` as one line of compact JSON.
pub fn write_json(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table with a header row; columns are as wide as their widest cell.
pub struct Table {
    headers: Vec<&'static str>,
    aligns: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            headers: columns.iter().map(|c| c.0).collect(),
            aligns: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        for row in std::iter::once(&header).chain(&self.rows) {
            write_row(out, row, &widths, &self.aligns)?;
        }
        Ok(())
    }
}

/// `label  value` lines with the values aligned.
pub fn write_pairs(out: &mut impl Write, pairs: &[(&str, String)]) -> io::Result<()> {
    let label_width = pairs.iter().map(|(label, _)| width(label)).max().unwrap_or(0);
    for (label, value) in pairs {
        writeln!(out, "{label:<label_width$}  {value}")?;
    }
    Ok(())
}

fn width(s: &str) -> usize {
    s.chars().count()
}

fn write_row(out: &mut impl Write, cells: &[String], widths: &[usize], aligns: &[Align]) -> io::Result<()> {
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            line.push_str("  ");
        }
        let pad = " ".repeat(widths[i].saturating_sub(width(cell)));
        match aligns[i] {
            Align::Left => {
                line.push_str(cell);
                line.push_str(&pad);
            }
            Align::Right => {
                line.push_str(&pad);
                line.push_str(cell);
            }
        }
    }
    writeln!(out, "{}", line.trim_end())
}

/// `30s`, `1m 30s`, `250ms`.
pub fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `512 B`, `1.5 KiB`, `3 MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    format!("{} {}", text.strip_suffix(".0").unwrap_or(&text), UNITS[unit])
}

/// RFC 3339 with milliseconds, in UTC.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A payload on one line: decoded as UTF-8 (invalid bytes become U+FFFD),
/// control characters escaped, cut after `max_chars` characters with `…`.
pub fn preview(payload: &[u8], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(payload);
    let mut out = String::new();
    for (count, c) in text.chars().enumerate() {
        if count == max_chars {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out
}

/// A number with at most two decimals and no trailing zeros: `10`, `0.5`, `2.33`.
pub fn number(value: f64) -> String {
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// A rate per second: `100/s`, `0.5/s`.
pub fn rate(per_second: f64) -> String {
    format!("{}/s", number(per_second))
}

/// How long ago `t` was, to the second (`0s` for the future): `1m 5s`.
pub fn age(t: SystemTime, now: SystemTime) -> String {
    let elapsed = now.duration_since(t).unwrap_or_default();
    duration(Duration::from_secs(elapsed.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&[("NAME", Align::Left), ("DEPTH", Align::Right), ("NOTE", Align::Left)]);
        table.row(vec!["orders".into(), "12".into(), "x".into()]);
        table.row(vec!["a".into(), "1500".into(), "".into()]);
        let mut out = Vec::new();
        table.write(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "NAME    DEPTH  NOTE\norders     12  x\na        1500\n");
    }

    #[test]
    fn pairs_align_values() {
        let mut out = Vec::new();
        write_pairs(&mut out, &[("name", "q".into()), ("in flight", "3".into())]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "name       q\nin flight  3\n");
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1 KiB");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 * 1024 * 1024), "3 MiB");
        assert_eq!(duration(Duration::from_secs(30)), "30s");
        assert_eq!(duration(Duration::from_millis(90_500)), "1m 30s 500ms");
    }

    #[test]
    fn numbers_rates_and_ages_read_well() {
        assert_eq!(number(10.0), "10");
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(2.333), "2.33");
        assert_eq!(number(-0.001), "0");
        assert_eq!(rate(100.0), "100/s");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(age(now - Duration::from_millis(65_400), now), "1m 5s");
        assert_eq!(age(now + Duration::from_secs(3), now), "0s");
    }

    #[test]
    fn previews_stay_on_one_line() {
        assert_eq!(preview(b"hello", 10), "hello");
        assert_eq!(preview(b"a\nb\tc\x07", 10), "a\\nb\\tc\\u{7}");
        assert_eq!(preview("héllo wörld".as_bytes(), 5), "héllo…");
        assert_eq!(preview(&[0x66, 0xff, 0x6f], 10), "f\u{fffd}o");
    }
}
