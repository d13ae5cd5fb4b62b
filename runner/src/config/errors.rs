//! Positions and hints in configuration errors. [`Location`] is the file
//! and line of an error, [`Source`] builds a [`ConfigError`] at a span of
//! the text, and [`did_you_mean`] suggests the known key closest to an
//! unknown one.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::DeTable;

use super::{ConfigError, Key, Value};

/// File and, where known, 1-based line of a configuration error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// File that contains the error.
    pub path: PathBuf,
    /// Line of the error, `None` when the TOML parser reports no position.
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(formatter, ":{line}")?;
        }
        Ok(())
    }
}

/// Returns " (did you mean `KEY`?)" for the known key closest to `key`, or "".
pub(super) fn did_you_mean(key: &str, known: &[&str]) -> String {
    match suggest_key(key, known) {
        Some(key) => format!(" (did you mean `{key}`?)"),
        None => String::new(),
    }
}

pub(super) fn join_path(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}.{path}"),
    }
}

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&byte| byte == b'\n')
        .count()
        + 1
}

/// Text being parsed, with what error messages need to name a position.
pub(super) struct Source<'a> {
    pub(super) text: &'a str,
    pub(super) path: &'a Path,
    pub(super) prefix: &'static str,
}

impl Source<'_> {
    pub(super) fn at(&self, span: Range<usize>) -> Location {
        self.location(Some(line_of(self.text, span.start)))
    }

    pub(super) fn location(&self, line: Option<usize>) -> Location {
        Location {
            path: self.path.to_owned(),
            line,
        }
    }

    /// Returns a table header such as `[profile.ci]` for messages.
    pub(super) fn header(&self, path: &str) -> String {
        format!("[{}]", join_path(self.prefix, path))
    }

    /// Returns the value as written in the file, cut to one short line.
    fn written(&self, span: Range<usize>) -> String {
        const MAX_CHARS: usize = 60;
        let raw = self.text.get(span).unwrap_or_default();
        let first_line = raw.lines().next().unwrap_or_default();
        if first_line.len() == raw.len() && raw.chars().count() <= MAX_CHARS {
            return raw.to_owned();
        }
        let cut: String = first_line.chars().take(MAX_CHARS).collect();
        format!("{cut}...")
    }

    pub(super) fn invalid(
        &self,
        key: &str,
        span: Range<usize>,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError::InvalidValue {
            at: self.at(span.clone()),
            key: key.to_owned(),
            value: self.written(span),
            reason: reason.into(),
        }
    }

    pub(super) fn unknown_key(
        &self,
        key: &Key<'_>,
        section: &str,
        known: &[&'static str],
    ) -> ConfigError {
        let name = key.get_ref().as_ref();
        ConfigError::UnknownKey {
            at: self.at(key.span()),
            key: name.to_owned(),
            section: section.to_owned(),
            known: known.to_vec(),
        }
    }

    pub(super) fn expect_table<'a, 'i>(
        &self,
        key: &str,
        value: &'a Value<'i>,
        expected: &str,
    ) -> Result<&'a DeTable<'i>, ConfigError> {
        value
            .get_ref()
            .as_table()
            .ok_or_else(|| self.invalid(key, value.span(), expected))
    }
}

/// Returns the known key closest to a misspelled one: the kebab-case form of
/// a snake_case key, or a key at most two edits away.
fn suggest_key<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let kebab = key.replace('_', "-");
    if let Some(exact) = known.iter().find(|candidate| **candidate == kebab) {
        return Some(exact);
    }
    known
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(distance, _)| *distance <= 2 && *distance < key.len())
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance between two strings, counted in chars.
fn edit_distance(left: &str, right: &str) -> usize {
    let right: Vec<char> = right.chars().collect();
    let mut previous: Vec<usize> = (0..=right.len()).collect();
    for (i, left_char) in left.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, right_char) in right.iter().enumerate() {
            let substitution = previous[j] + usize::from(left_char != *right_char);
            let best = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
            current.push(best);
        }
        previous = current;
    }
    previous[right.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

    #[test]
    fn long_values_cut() {
        let long = "x".repeat(100);
        let error = parse_error(&format!("[profile.default]\nmemory = \"{long}\"\n"));
        assert_contains(&error, "xxx... for key `memory`");
        assert!(!error.contains(&long), "{error}");
    }

    #[test]
    fn line_of_counts_newlines() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
        assert_eq!(line_of("a\nb\nc", 100), 3);
    }
}
