//! Parsing libtest's human output, for `--per-binary` runs where one
//! process runs many tests: `test NAME ... ok` lines give the verdicts and
//! `---- NAME stdout ----` sections give the captured output of failures.

use std::collections::HashMap;

/// libtest's verdict on one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Failed,
    Ignored,
}

/// The verdicts and failure output libtest printed, by test name.
#[derive(Debug, Default)]
pub struct Parsed {
    pub results: HashMap<String, Verdict>,
    /// Captured output of failed tests, by name.
    pub output: HashMap<String, String>,
}

/// Parses libtest's output (default format, output captured).
pub fn parse_output(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut section: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("---- ") {
            if let Some(name) = rest.strip_suffix(" stdout ----") {
                if let Some((n, body)) = section.take() {
                    parsed.output.insert(n, body);
                }
                section = Some((name.to_string(), String::new()));
                continue;
            }
        }
        if section.is_some() && (line == "failures:" || line.starts_with("test result:")) {
            if let Some((n, body)) = section.take() {
                parsed.output.insert(n, body.trim_end().to_string() + "\n");
            }
        }
        if let Some((_, body)) = section.as_mut() {
            body.push_str(line);
            body.push('\n');
            continue;
        }
        if let Some((name, verdict)) = parse_result_line(line) {
            parsed.results.insert(name, verdict);
        }
    }
    if let Some((n, body)) = section.take() {
        parsed.output.insert(n, body);
    }
    parsed
}

/// Parses `test NAME ... ok`, `... FAILED`, `... ignored` and
/// `... ignored, REASON`; `NAME - should panic` is reported as `NAME`.
fn parse_result_line(line: &str) -> Option<(String, Verdict)> {
    let rest = line.strip_prefix("test ")?;
    let (name, verdict) = rest.rsplit_once(" ... ")?;
    let verdict = match verdict {
        "ok" => Verdict::Ok,
        "FAILED" => Verdict::Failed,
        v if v == "ignored" || v.starts_with("ignored, ") => Verdict::Ignored,
        _ => return None,
    };
    let name = name.strip_suffix(" - should panic").unwrap_or(name);
    Some((name.to_string(), verdict))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "
running 4 tests
test a::passes ... ok
test a::fails ... FAILED
test a::skipped ... ignored, needs a GPU
test a::panics - should panic ... ok

failures:

---- a::fails stdout ----
hello from fails

thread 'a::fails' panicked at src/lib.rs:3:5:
boom

failures:
    a::fails

test result: FAILED. 2 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out
";

    #[test]
    fn verdicts_are_read() {
        let parsed = parse_output(OUTPUT);
        assert_eq!(parsed.results["a::passes"], Verdict::Ok);
        assert_eq!(parsed.results["a::fails"], Verdict::Failed);
        assert_eq!(parsed.results["a::skipped"], Verdict::Ignored);
        assert_eq!(parsed.results["a::panics"], Verdict::Ok);
        assert_eq!(parsed.results.len(), 4);
    }

    #[test]
    fn failure_output_is_kept() {
        let parsed = parse_output(OUTPUT);
        let output = &parsed.output["a::fails"];
        assert!(output.starts_with("hello from fails\n"), "{output:?}");
        assert!(output.contains("boom"));
        assert!(!output.contains("failures:"));
    }
}
