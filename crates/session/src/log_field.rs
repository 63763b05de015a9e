//! Client-provided strings, made safe to log.
//!
//! A text log line is only trustworthy if a client cannot end it early:
//! a `\n` in a session id or command would let a client write a line that
//! looks like execd's own, and ANSI escapes would rewrite what an operator
//! sees in a terminal. Every client-provided value that reaches a log goes
//! through [`LogField`], which escapes control and invisible formatting
//! characters and bounds the length, so one hostile field can neither forge
//! lines nor flood the log.
//!
//! ```
//! use execd_session::log_field::LogField;
//! let shown = LogField::new("fn-1\nINFO forged").to_string();
//! assert_eq!(shown, "fn-1\\nINFO forged");
//! ```

use std::fmt::{self, Display, Write};

/// Default bound on a logged field, in bytes of the original value.
pub const MAX_LOG_FIELD: usize = 256;

/// A string displayed escaped and bounded; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct LogField<'a> {
    value: &'a str,
    max: usize,
}

impl<'a> LogField<'a> {
    /// Shows at most [`MAX_LOG_FIELD`] bytes of `value`.
    pub fn new(value: &'a str) -> Self {
        Self::with_limit(value, MAX_LOG_FIELD)
    }

    /// Shows at most `max` bytes of `value`.
    pub fn with_limit(value: &'a str, max: usize) -> Self {
        LogField { value, max }
    }
}

/// Characters that render as nothing or reorder text (zero-width, bidi
/// controls, BOM): invisible in a terminal, so they could hide or disguise
/// what a line says.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}'
        | '\u{061C}'
        | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}')
}

/// Writes `c` so that the result contains no control or invisible
/// character and a backslash always starts an escape.
fn write_escaped(f: &mut impl Write, c: char) -> fmt::Result {
    match c {
        '\\' => f.write_str("\\\\"),
        '"' => f.write_str("\\\""),
        '\n' => f.write_str("\\n"),
        '\r' => f.write_str("\\r"),
        '\t' => f.write_str("\\t"),
        c if c.is_control() || is_invisible_format(c) => write!(f, "\\u{{{:x}}}", c as u32),
        c => f.write_char(c),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char
/// boundary.
fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Display for LogField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = prefix(self.value, self.max);
        for c in shown.chars() {
            write_escaped(f, c)?;
        }
        if shown.len() < self.value.len() {
            write!(f, "…[{} more bytes]", self.value.len() - shown.len())?;
        }
        Ok(())
    }
}

/// An argv, logged as `["sh", "-c", "…"]` with every element escaped and the
/// whole bounded to `max` bytes of the original strings.
#[derive(Debug, Clone, Copy)]
pub struct LogCommand<'a> {
    argv: &'a [String],
    max: usize,
}

impl<'a> LogCommand<'a> {
    pub fn new(argv: &'a [String], max: usize) -> Self {
        LogCommand { argv, max }
    }
}

impl Display for LogCommand<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut budget = self.max;
        f.write_char('[')?;
        for (i, arg) in self.argv.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if budget == 0 {
                let rest: usize = self.argv[i..].iter().map(String::len).sum();
                write!(f, "…[{} more args, {rest} bytes]", self.argv.len() - i)?;
                break;
            }
            f.write_char('"')?;
            LogField::with_limit(arg, budget).fmt(f)?;
            f.write_char('"')?;
            budget = budget.saturating_sub(arg.len());
        }
        f.write_char(']')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_invisible_characters_are_escaped() {
        let shown = LogField::new("a\nb\r\x1b[31mred\u{202E}\0\\n\"").to_string();
        assert_eq!(shown, "a\\nb\\r\\u{1b}[31mred\\u{202e}\\u{0}\\\\n\\\"");
        assert!(!shown.chars().any(|c| c.is_control()));
        assert_eq!(LogField::new("fn-42").to_string(), "fn-42");
        assert_eq!(LogField::new("Grüße").to_string(), "Grüße");
    }

    #[test]
    fn long_values_are_cut_with_a_marker() {
        let long = "x".repeat(10_000);
        let shown = LogField::new(&long).to_string();
        assert!(shown.starts_with(&"x".repeat(MAX_LOG_FIELD)));
        assert!(shown.ends_with(&format!("…[{} more bytes]", 10_000 - MAX_LOG_FIELD)));
        // Never cuts inside a character.
        let shown = LogField::with_limit("ééé", 3).to_string();
        assert_eq!(shown, "é…[4 more bytes]");
    }

    #[test]
    fn commands_are_escaped_and_bounded() {
        let argv: Vec<String> = vec!["sh".into(), "-c".into(), "echo hi\nINFO x".into()];
        assert_eq!(
            LogCommand::new(&argv, 1024).to_string(),
            "[\"sh\", \"-c\", \"echo hi\\nINFO x\"]"
        );
        let argv: Vec<String> = vec!["a".repeat(100), "b".into(), "c".into()];
        assert_eq!(
            LogCommand::new(&argv, 10).to_string(),
            format!(
                "[\"{}…[90 more bytes]\", …[2 more args, 2 bytes]]",
                "a".repeat(10)
            )
        );
    }
}
