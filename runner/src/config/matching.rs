//! Test-name patterns of overrides. The `test` key contains an exact name,
//! a glob or a regex. A `glob:` or `regex:` prefix chooses the syntax, and a
//! bare pattern is a glob if it contains `*`, `?` or `[`.

use std::fmt;

use super::errors::Source;
use super::values::read_string;
use super::{ConfigError, Value};

/// Syntax of a `test` pattern, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternSyntax {
    /// A `globset` glob, from a `glob:` prefix or a bare pattern with `*`, `?` or `[`.
    Glob,
    /// A `regex` crate regular expression, from a `regex:` prefix.
    Regex,
}

impl fmt::Display for PatternSyntax {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            PatternSyntax::Glob => "glob",
            PatternSyntax::Regex => "regex",
        })
    }
}

#[derive(Debug, Clone)]
pub(super) enum TestPattern {
    Exact(String),
    Glob(globset::GlobMatcher),
    /// Matches anywhere in the name unless anchored with `^` and `$`.
    Regex(regex::Regex),
}

impl TestPattern {
    pub(super) fn matches(&self, name: &str) -> bool {
        match self {
            TestPattern::Exact(exact) => exact == name,
            TestPattern::Glob(glob) => glob.is_match(name),
            TestPattern::Regex(regex) => regex.is_match(name),
        }
    }
}

pub(super) fn read_test_pattern(
    source: &Source<'_>,
    value: &Value<'_>,
) -> Result<TestPattern, ConfigError> {
    let expected = "expected a test name, or a pattern such as \"glob:net::*\" or \"regex:^net::\"";
    let text = read_string(source, "test", value, expected)?;
    compile_test_pattern(&text).map_err(|(syntax, reason)| ConfigError::InvalidPattern {
        at: source.at(value.span()),
        key: "test".to_owned(),
        syntax,
        pattern: text.clone(),
        reason,
    })
}

/// Compiles a `test` matcher: `glob:` and `regex:` prefixes choose the
/// syntax, and a bare pattern is a glob if it contains `*`, `?` or `[`, and
/// an exact name otherwise. Errors carry the syntax name and the reason.
fn compile_test_pattern(text: &str) -> Result<TestPattern, (PatternSyntax, String)> {
    if let Some(glob) = text.strip_prefix("glob:") {
        return compile_glob(glob).map_err(|reason| (PatternSyntax::Glob, reason));
    }
    if let Some(regex) = text.strip_prefix("regex:") {
        return compile_regex(regex).map_err(|reason| (PatternSyntax::Regex, reason));
    }
    if text.contains(['*', '?', '[']) {
        return compile_glob(text).map_err(|reason| (PatternSyntax::Glob, reason));
    }
    Ok(TestPattern::Exact(text.to_owned()))
}

fn compile_glob(pattern: &str) -> Result<TestPattern, String> {
    if pattern.is_empty() {
        return Err("the pattern is empty; write \"glob:*\" to match every test".to_owned());
    }
    let glob = globset::Glob::new(pattern).map_err(|error| {
        format!(
            "{}; a glob accepts `*` (any characters), `?` (one character), \
             `[abc]` (one of a set) and `{{a,b}}` (alternatives)",
            error.kind()
        )
    })?;
    Ok(TestPattern::Glob(glob.compile_matcher()))
}

fn compile_regex(pattern: &str) -> Result<TestPattern, String> {
    if pattern.is_empty() {
        return Err("the pattern is empty; write \"glob:*\" to match every test".to_owned());
    }
    let regex = regex::Regex::new(pattern).map_err(|error| {
        format!(
            "{}; write the pattern in the syntax of the Rust `regex` crate",
            regex_error_summary(&error)
        )
    })?;
    Ok(TestPattern::Regex(regex))
}

/// Returns the one-line cause of a regex error, whose `Display` spans
/// several lines with the pattern and a caret.
fn regex_error_summary(error: &regex::Error) -> String {
    let text = error.to_string();
    let cause = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("error: "));
    cause
        .unwrap_or(text.trim())
        .trim_end_matches('.')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;

    #[test]
    fn test_matchers_exact_glob_regex() {
        let config = parse(
            r#"
[[profile.default.overrides]]
test = "exact::name"
pids = 1

[[profile.default.overrides]]
test = "glob:globbed::*"
pids = 2

[[profile.default.overrides]]
test = "bare::?"
pids = 3

[[profile.default.overrides]]
test = "regex:regexed"
pids = 4

[[profile.default.overrides]]
test = "set::[ab]"
pids = 5
"#,
        );
        let cases = [
            ("exact::name", Some(1)),
            ("exact::name_longer", None),
            ("globbed::a::b", Some(2)),
            ("bare::x", Some(3)),
            ("bare::xy", None),
            // An unanchored regex matches anywhere in the name.
            ("a::regexed::b", Some(4)),
            ("set::a", Some(5)),
            ("set::c", None),
        ];
        for (name, pids) in cases {
            assert_eq!(resolve(&config, "default", name).pids, pids, "test {name}");
        }
    }

    #[test]
    fn bad_regex_names_pattern() {
        let error = parse_error("[[profile.default.overrides]]\n\ntest = \"regex:net::(\"\n");
        assert_contains(
            &error,
            "sandbox-test.toml:3: invalid regex \"regex:net::(\" for key `test`: ",
        );
        assert_contains(&error, "unclosed group");
        assert!(!error.contains('\n'), "one line expected:\n{error}");
    }

    #[test]
    fn bad_glob_names_pattern() {
        let error = parse_error("[[profile.default.overrides]]\ntest = \"net::[\"\n");
        assert_contains(
            &error,
            "sandbox-test.toml:2: invalid glob \"net::[\" for key `test`: ",
        );
        assert_contains(&error, "unclosed character class");
        let error = parse_error("[[profile.default.overrides]]\ntest = \"glob:{a,b\"\n");
        assert_contains(
            &error,
            "sandbox-test.toml:2: invalid glob \"glob:{a,b\" for key `test`",
        );
    }

    #[test]
    fn empty_matchers_rejected() {
        let error = parse_error("[[profile.default.overrides]]\npackage = \"\"\n");
        assert_contains(&error, "sandbox-test.toml:2: invalid value \"\" for key `package`: the value must not be empty");
        let error = parse_error("[[profile.default.overrides]]\ntest = \"regex:\"\n");
        assert_contains(
            &error,
            "sandbox-test.toml:2: invalid regex \"regex:\" for key `test`: the pattern is empty",
        );
    }
}
