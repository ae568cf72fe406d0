//! Log set-up: the filter, the format, colour only on a terminal, and escaping
//! every value so that what came from the network cannot forge a line or
//! colour a terminal.

use std::ffi::OsString;
use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::Field;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::{Writer, debug_fn};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The variable that turns colour off when set to anything but the empty
/// string (<https://no-color.org>).
const NO_COLOR: &str = "NO_COLOR";

/// Installs the global subscriber; `level` is a filter such as `info` or `modelrelay=debug`.
///
/// Text lines write every field, the message included, with control
/// characters escaped (`\n`, `\u{1b}`…): a provider name, a model name or a
/// decoder's error text from a stranger stays on its one line. JSON lines are
/// escaped by JSON itself. Lines are coloured only when standard error is a
/// terminal and `NO_COLOR` is unset or empty: a file, a pipe or journald gets
/// plain text.
pub fn init(level: &str, format: LogFormat) {
    let colour = wants_colour(std::io::stderr().is_terminal(), std::env::var_os(NO_COLOR));
    install(level, format, colour, std::io::stderr);
}

/// Installs the global subscriber as [`init`] does, writing plain lines to
/// `file` instead of standard error (for a program with no console, such as
/// a Windows GUI app).
pub fn init_to_file(level: &str, format: LogFormat, file: std::fs::File) {
    install(level, format, false, std::sync::Mutex::new(file));
}

/// The global subscriber with `level`'s filter, writing to `writer`.
fn install<W>(level: &str, format: LogFormat, colour: bool, writer: W)
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(writer);
    // A second call (tests, embedded use) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder
            .fmt_fields(debug_fn(write_escaped_field).delimited(" "))
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Whether to colour log lines: on a terminal, unless `no_color` (the
/// variable's value) is set to something.
fn wants_colour(on_a_terminal: bool, no_color: Option<OsString>) -> bool {
    on_a_terminal && no_color.is_none_or(|value| value.is_empty())
}

/// One field of a text line: the message bare, any other as `name=value`.
fn write_escaped_field(
    writer: &mut Writer<'_>,
    field: &Field,
    value: &dyn fmt::Debug,
) -> fmt::Result {
    if field.name() != "message" {
        write!(writer, "{}=", field.name())?;
    }
    let mut escaped = Escaped(writer);
    write!(escaped, "{value:?}")
}

/// A writer that passes text on with control characters escaped.
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some(at) = rest.find(char::is_control) {
            self.0.write_str(&rest[..at])?;
            let control = rest[at..].chars().next().unwrap_or_default();
            match control {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                other => write!(self.0, "\\u{{{:x}}}", u32::from(other))?,
            }
            rest = &rest[at + control.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(text: &str) -> String {
        let mut out = String::new();
        Escaped(&mut Writer::new(&mut out)).write_str(text).unwrap();
        out
    }

    #[test]
    fn colour_only_on_a_terminal_and_without_no_color() {
        assert!(wants_colour(true, None));
        assert!(wants_colour(true, Some("".into())), "NO_COLOR empty: unset");
        assert!(!wants_colour(true, Some("1".into())));
        assert!(!wants_colour(true, Some("false".into())), "any value");
        assert!(!wants_colour(false, None), "a file or a pipe");
        assert!(!wants_colour(false, Some("".into())));
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escaped("plain é ✓"), "plain é ✓");
        assert_eq!(escaped("a\nINFO forged\r\tb"), "a\\nINFO forged\\r\\tb");
        assert_eq!(
            escaped("\u{1b}[31mred\u{7f}\u{85}"),
            "\\u{1b}[31mred\\u{7f}\\u{85}"
        );
    }
}
