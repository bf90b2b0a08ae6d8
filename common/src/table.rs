//! Plain-text tables for the operator commands, aligned as `rpk` and `kafka-consumer-groups`
//! print them: each column as wide as its widest cell, two spaces between columns.

/// Renders `header` and `rows` with every column left-aligned to its widest cell. A row shorter
/// than the header leaves its last columns empty; trailing spaces are trimmed.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate().take(widths.len()) {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            out.extend(std::iter::repeat_n(' ', pad));
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out += &line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_whatever_the_widths() {
        let rows = vec![
            vec!["0".to_string(), "20".into(), "20".into(), "0".into()],
            vec![
                "11".to_string(),
                "none".into(),
                "123456789012".into(),
                "7".into(),
            ],
        ];
        let out = render(&["partition", "committed", "end", "lag"], &rows);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        // Every column starts at the same offset on every line.
        for column in ["committed", "end", "lag"] {
            let at = lines[0].find(column).unwrap();
            for l in &lines[1..] {
                assert_ne!(l.as_bytes()[at], b' ', "{column} starts at {at} in {l:?}");
                assert_eq!(
                    l.as_bytes()[at - 1],
                    b' ',
                    "{column} starts at {at} in {l:?}"
                );
            }
        }
        assert!(
            lines[2].contains("123456789012  7"),
            "a wide cell widens its column"
        );
        assert!(out.lines().all(|l| !l.ends_with(' ')));
    }
}
