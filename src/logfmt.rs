//! The fields of text log lines, written so that no value can forge a line or a field.
//!
//! Callers choose some of what is logged: the request id, the caller name, prompt text (with
//! `telemetry.log_prompts`), and upstream messages that may quote them. tracing-subscriber's
//! default text fields write `Display` values (`%value`) as they are and escape nothing but
//! ANSI sequences, so a newline in a prompt wrote a second, fake log line and a request id
//! holding `}` or `=` read as extra fields. [`TextFields`] writes every value so that one
//! event is one line and a field's value is exactly one token:
//!
//! - a value made only of letters, digits and `. - _ : / + @ % [ ]` is written bare (numbers,
//!   addresses, URLs);
//! - any other value is written in double quotes, with `"` and `\` escaped;
//! - everywhere, the message included, control characters (C0, DEL, C1), the Unicode line and
//!   paragraph separators and the bidirectional-text controls are escaped: `\n`, `\r`, `\t`,
//!   else `\u{1b}`.
//!
//! String values (`field = value.as_str()`) are always quoted, so a caller-supplied string
//! reads the same whatever it holds. JSON lines need none of this: serde_json escapes.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::{
    field::{MakeVisitor, VisitFmt, VisitOutput},
    fmt::format::Writer,
};

/// The field formatter of text logs (`fmt().fmt_fields(TextFields)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TextFields;

impl<'w> MakeVisitor<Writer<'w>> for TextFields {
    type Visitor = TextVisitor<'w>;

    fn make_visitor(&self, target: Writer<'w>) -> Self::Visitor {
        TextVisitor {
            writer: target,
            empty: true,
            result: Ok(()),
        }
    }
}

/// Writes one event's or span's fields as `name=value`, separated by spaces.
#[derive(Debug)]
pub struct TextVisitor<'w> {
    writer: Writer<'w>,
    empty: bool,
    result: fmt::Result,
}

impl TextVisitor<'_> {
    /// Starts a field: the separating space, then `name=` (nothing for the message).
    fn begin(&mut self, field: &Field) -> bool {
        let name = field.name();
        // tracing-log's metadata fields; the line already says where the event came from.
        if self.result.is_err() || name.starts_with("log.") {
            return false;
        }
        if !self.empty {
            self.result = self.writer.write_char(' ');
        }
        self.empty = false;
        if name != "message" {
            let name = name.strip_prefix("r#").unwrap_or(name);
            self.result = self.result.and_then(|()| write!(self.writer, "{name}="));
        }
        self.result.is_ok()
    }

    /// A string value: quoted, whatever it holds.
    fn quoted(&mut self, value: &str) {
        self.result = self
            .writer
            .write_char('"')
            .and_then(|()| escape(&mut self.writer, value, true))
            .and_then(|()| self.writer.write_char('"'));
    }

    /// A formatted value: bare when it is one plain token, else quoted.
    fn token(&mut self, value: &str) {
        if !value.is_empty() && value.chars().all(is_bare) {
            self.result = self.writer.write_str(value);
        } else {
            self.quoted(value);
        }
    }
}

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.begin(field) {
            return;
        }
        if field.name() == "message" {
            self.result = escape(&mut self.writer, value, false);
        } else {
            self.quoted(value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            let _ = write!(text, ": {cause}");
            source = cause.source();
        }
        if self.begin(field) {
            self.quoted(&text);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.begin(field) {
            return;
        }
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.result = escape(&mut self.writer, &text, false);
        } else {
            self.token(&text);
        }
    }
}

impl VisitOutput<fmt::Result> for TextVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for TextVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// Characters a bare value may hold: none that separates fields, quotes, or ends a span's
/// field list.
fn is_bare(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '.' | '-' | '_' | ':' | '/' | '+' | '@' | '%' | '[' | ']')
}

/// Characters that break a line or reorder what a reader sees, though not all are controls.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Writes `text` with hidden characters escaped, and with `"` and `\` too when `quoting`.
/// Unchanged runs are written whole.
fn escape(out: &mut impl fmt::Write, text: &str, quoting: bool) -> fmt::Result {
    let mut plain = 0;
    for (at, c) in text.char_indices() {
        let quoted = quoting && matches!(c, '"' | '\\');
        if !quoted && !is_hidden(c) {
            continue;
        }
        out.write_str(&text[plain..at])?;
        plain = at + c.len_utf8();
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            '"' | '\\' if quoted => {
                out.write_char('\\')?;
                out.write_char(c)?;
            }
            _ => write!(out, "\\u{{{:x}}}", u32::from(c))?,
        }
    }
    out.write_str(&text[plain..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(text: &str, quoting: bool) -> String {
        let mut out = String::new();
        escape(&mut out, text, quoting).expect("a String takes any text");
        out
    }

    #[test]
    fn hidden_characters_are_escaped_everywhere() {
        assert_eq!(
            escaped("a\nb\r\tc\u{1b}[31m\u{7f}\u{85}\u{2028}\u{202e}é", false),
            "a\\nb\\r\\tc\\u{1b}[31m\\u{7f}\\u{85}\\u{2028}\\u{202e}é"
        );
        assert_eq!(escaped("say \"hi\" \\o/", false), "say \"hi\" \\o/");
        assert_eq!(escaped("say \"hi\" \\o/", true), "say \\\"hi\\\" \\\\o/");
        assert_eq!(escaped("plain", true), "plain");
    }

    #[test]
    fn only_plain_tokens_stay_bare() {
        for bare in [
            "0.5",
            "-1e-7",
            "127.0.0.1:50051",
            "[::1]:9464",
            "http://a/b",
            "ok",
        ] {
            assert!(bare.chars().all(is_bare), "{bare}");
        }
        for quoted in ["a b", "x}y", "k=v", "\"", "a,b", "é"] {
            assert!(!quoted.chars().all(is_bare), "{quoted}");
        }
    }
}
