//! TOML errors told without the text they are about. A file named in the configuration may be
//! anything (a mistyped path can name `/etc/shadow`), and `toml`'s own message quotes the
//! offending line: problems say which line and column, and what was expected, instead.

/// `e`, an error about `text`, as `line L, column C: what was wrong`: without the excerpt of
/// the source that `toml`'s `Display` adds, and with quoted strings (values from the file in
/// messages like `invalid type: string "…"`) left out. The message is on one line.
#[must_use]
pub fn describe(e: &toml::de::Error, text: &str) -> String {
    let what = redact_strings(e.message());
    let what = what.split_whitespace().collect::<Vec<_>>().join(" ");
    match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("line {line}, column {column}: {what}")
        }
        None => what,
    }
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// `msg` with every double-quoted string replaced by `"…"`.
fn redact_strings(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut quoted = false;
    let mut escaped = false;
    for c in msg.chars() {
        if quoted {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => {
                    out.push_str("…\"");
                    quoted = false;
                }
                _ => escaped = false,
            }
        } else {
            out.push(c);
            quoted = c == '"';
        }
    }
    if quoted {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde::Deserialize;

    const SHADOW: &str =
        "root:$6$saltsalt$c2VjcmV0aGFzaA:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n";

    #[test]
    fn a_syntax_error_says_where_without_the_line() {
        let e = toml::from_str::<toml::Table>(SHADOW).unwrap_err();
        assert!(
            e.to_string().contains("root:$6$"),
            "toml's own message quotes the line"
        );
        let told = describe(&e, SHADOW);
        assert!(told.starts_with("line 1, column "), "{told}");
        for secret in ["root", "$6$", "saltsalt", "19000", "daemon"] {
            assert!(!told.contains(secret), "{told}");
        }
        assert!(!told.contains('\n'), "{told}");
    }

    #[test]
    fn a_type_error_names_its_place_but_not_the_value() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Rates {
            input: f64,
        }
        let text = "\n# prices\ninput = \"hunter2\"\n";
        let e = toml::from_str::<Rates>(text).unwrap_err();
        let told = describe(&e, text);
        assert!(told.starts_with("line 3, column 9: "), "{told}");
        assert!(told.contains("invalid type"), "{told}");
        assert!(!told.contains("hunter2"), "{told}");
    }

    #[test]
    fn strings_are_redacted_escapes_and_all() {
        assert_eq!(
            redact_strings(r#"invalid type: string "a\"b", expected f64"#),
            r#"invalid type: string "…", expected f64"#
        );
        assert_eq!(redact_strings(r#"open "abc"#), r#"open "…"#);
        assert_eq!(redact_strings("unknown field `x`"), "unknown field `x`");
    }
}
