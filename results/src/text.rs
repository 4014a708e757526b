//! Text helpers shared by the writers of markup and identifiers.

/// Escapes text for XML 1.0 and HTML content and quoted attributes. Characters XML 1.0
/// cannot carry at all (most C0 controls, U+FFFE, U+FFFF) become U+FFFD.
pub(crate) fn escape_markup(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Lower-case ASCII letters and digits, every run of anything else one '-', no '-' at
/// either end ("Guest cycles" -> "guest-cycles"). Empty when nothing is left.
pub(crate) fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_escaping_covers_specials_and_controls() {
        assert_eq!(escape_markup("<a href=\"x\">&'\u{1}\n"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;\u{fffd}\n");
    }

    #[test]
    fn slugs_fold_runs_and_trim() {
        assert_eq!(slug("Guest  cycles/op"), "guest-cycles-op");
        assert_eq!(slug("--"), "");
    }
}
