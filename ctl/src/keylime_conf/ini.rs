//! Reads Keylime's configuration files: the INI files of the Python verifier, registrar and
//! tenant (`configparser` syntax), and the Rust agent's `agent.conf`, whose flat `[agent]` table
//! of strings, numbers and booleans reads the same way once TOML's quotes are taken off.
//!
//! Only what Keylime's files use is accepted: `[section]` headers, `option = value` or
//! `option: value`, full-line `#` and `;` comments, and indented continuation lines. Anything
//! else is an error naming the file and line, never skipped.

use std::path::{Path, PathBuf};

/// One `option = value` line, with where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub section: String,
    /// Lowercased, as `configparser` does.
    pub option: String,
    /// Unquoted; continuation lines joined with `\n`.
    pub value: String,
    pub line: usize,
}

/// A Keylime config file, its entries in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ini {
    pub path: PathBuf,
    pub entries: Vec<Entry>,
    /// Section names in file order (sections without options included).
    pub sections: Vec<String>,
}

/// A line that is not Keylime configuration syntax.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}: {reason}", path.display())]
pub struct SyntaxError {
    pub path: PathBuf,
    pub line: usize,
    pub reason: String,
}

impl Ini {
    /// Parses `text`, read from `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Ini, SyntaxError> {
        let error =
            |line: usize, reason: String| SyntaxError { path: path.to_owned(), line, reason };
        let mut ini = Ini { path: path.to_owned(), entries: Vec::new(), sections: Vec::new() };
        // The entry a continuation line extends: configparser joins indented lines to the value
        // above, unless a blank line or comment came between.
        let mut open: Option<usize> = None;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
                open = None;
                continue;
            }
            let indented = raw.starts_with([' ', '\t']);
            if let (true, Some(i)) = (indented, open) {
                let entry = &mut ini.entries[i];
                entry.value.push('\n');
                entry.value.push_str(trimmed);
                continue;
            }
            if let Some(header) = trimmed.strip_prefix('[') {
                let name = header
                    .strip_suffix(']')
                    .map(str::trim)
                    .filter(|n| !n.is_empty() && !n.contains(['[', ']']))
                    .ok_or_else(|| error(line, format!("malformed section header {trimmed:?}")))?;
                if ini.sections.iter().any(|s| s == name) {
                    return Err(error(line, format!("section [{name}] appears twice")));
                }
                ini.sections.push(name.to_owned());
                open = None;
                continue;
            }
            let Some(split) = trimmed.find(['=', ':']) else {
                return Err(error(
                    line,
                    format!("expected `option = value` or `[section]`, found {trimmed:?}"),
                ));
            };
            let option = trimmed[..split].trim().to_ascii_lowercase();
            if option.is_empty() {
                return Err(error(line, format!("no option name before {:?}", &trimmed[split..])));
            }
            let Some(section) = ini.sections.last().cloned() else {
                return Err(error(line, format!("{option} is outside any [section]")));
            };
            if ini.entries.iter().any(|e| e.section == section && e.option == option) {
                return Err(error(line, format!("{option} is set twice in [{section}]")));
            }
            let value = unquote(trimmed[split + 1..].trim()).map_err(|r| error(line, r))?;
            ini.entries.push(Entry { section, option, value, line });
            open = Some(ini.entries.len() - 1);
        }
        Ok(ini)
    }
}

/// Takes TOML's quotes off a value (`"a"`, `'a'`), allowing a `#` comment after them; other
/// values are configparser's: the text as written.
fn unquote(value: &str) -> Result<String, String> {
    let Some(quote) = value.chars().next().filter(|c| *c == '"' || *c == '\'') else {
        return Ok(value.to_owned());
    };
    let mut out = String::new();
    let mut chars = value[1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == quote => {
                let rest = value[1 + i + 1..].trim();
                if rest.is_empty() || rest.starts_with('#') {
                    return Ok(out);
                }
                return Err(format!("unexpected {rest:?} after the quoted value"));
            }
            '\\' if quote == '"' => match chars.next().map(|(_, e)| e) {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(e @ ('"' | '\\')) => out.push(e),
                Some(e) => return Err(format!("unsupported escape \\{e} in {value:?}")),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(format!("unterminated quoted value {value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Ini, SyntaxError> {
        Ini::parse(Path::new("verifier.conf"), text)
    }

    #[test]
    fn reads_configparser_and_toml_syntax() {
        let ini = parse(
            "# comment\n[verifier]\nIP = 0.0.0.0\nport: 8881\nseverity_policy = [\n  {\"a\": 1}]\n\n\
             ; another\n[agent]\nuuid = \"d432fbb3-d2f1-4a97-9ef7-75bd81c00000\" # fixed\n\
             run_as = 'keylime:tss'\nempty =\n",
        )
        .expect("parses");
        let got: Vec<(&str, &str, &str, usize)> = ini
            .entries
            .iter()
            .map(|e| (e.section.as_str(), e.option.as_str(), e.value.as_str(), e.line))
            .collect();
        assert_eq!(
            got,
            [
                ("verifier", "ip", "0.0.0.0", 3),
                ("verifier", "port", "8881", 4),
                ("verifier", "severity_policy", "[\n{\"a\": 1}]", 5),
                ("agent", "uuid", "d432fbb3-d2f1-4a97-9ef7-75bd81c00000", 10),
                ("agent", "run_as", "keylime:tss", 11),
                ("agent", "empty", "", 12),
            ]
        );
        assert_eq!(ini.sections, ["verifier", "agent"]);
    }

    #[test]
    fn malformed_input_names_the_file_and_line() {
        let cases = [
            ("[verifier]\nip = 1\njust words\n", 3, "expected `option = value`"),
            ("ip = 1\n", 1, "outside any [section]"),
            ("[verifier\n", 1, "malformed section header"),
            ("[verifier]\nip = 1\nIP = 2\n", 3, "ip is set twice in [verifier]"),
            ("[a]\n[a]\n", 2, "section [a] appears twice"),
            ("[agent]\nuuid = \"abc\n", 2, "unterminated"),
            ("[agent]\nuuid = \"abc\" x\n", 2, "after the quoted value"),
            ("[agent]\n= 3\n", 2, "no option name"),
        ];
        for (text, line, reason) in cases {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.starts_with(&format!("verifier.conf:{line}: ")), "{e}");
            assert!(e.contains(reason), "{text:?}: {e}");
        }
    }
}
