//! Scalar values of the configuration. [`parse_size`] and
//! [`parse_duration`] parse sizes and durations from text. The `read_*`
//! functions read each kind of scalar from a TOML value and report an
//! invalid one at its line. The serde helpers write durations as humantime
//! strings and read the sizes and durations of [`Budgets`](super::Budgets).

use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};
use toml::de::DeValue;

use super::errors::Source;
use super::{ConfigError, Value};

const SIZE_EXPECTED: &str = "expected a size such as \"256MiB\", \"1GB\" or a number of bytes \
     (units: B, KB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB are powers of 1024)";
const SIZE_ZERO: &str = "a size must be greater than 0 bytes";
const DURATION_EXPECTED: &str =
    "expected a duration such as \"750ms\", \"30s\", \"2m\" or \"1h 30m\"";
const COUNT_EXPECTED: &str = "expected a whole number of at least 1, such as 64";
const CPUS_EXPECTED: &str = "expected a number of CPUs greater than 0, such as 1 or 1.5";
const BOOL_EXPECTED: &str = "expected true or false";

/// Parses a size such as "256MiB", "1GB", "1.5GiB" or "123" (bytes) into
/// bytes.
///
/// Units are B, KB, MB, GB, TB (powers of 1000) and KiB, MiB, GiB, TiB
/// (powers of 1024), in any letter case, with optional spaces before the
/// unit. A lone K, M, G or T is rejected as ambiguous. A fractional number
/// with a unit is rounded down to whole bytes. 0 is rejected because a cap
/// or budget of 0 bytes leaves nothing to run in. The error is the reason
/// only, without the input, so callers can prefix the value and key.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let unit_start = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_start);
    let multiplier = unit_multiplier(unit.trim_start())?;
    let (whole, fraction) = split_number(number)?;

    let whole_bytes = whole.checked_mul(multiplier);
    let fraction_bytes = fraction_of(fraction, multiplier);
    if multiplier == 1 && fraction_bytes.numerator != 0 {
        return Err("a number of bytes must be whole; use a unit such as \"1.5KiB\"".to_owned());
    }
    let bytes = whole_bytes
        .and_then(|bytes| bytes.checked_add(fraction_bytes.whole))
        .and_then(|bytes| u64::try_from(bytes).ok())
        .ok_or_else(|| format!("the size is larger than the maximum of {} bytes", u64::MAX))?;
    if bytes == 0 {
        return Err(SIZE_ZERO.to_owned());
    }
    Ok(bytes)
}

fn unit_multiplier(unit: &str) -> Result<u128, String> {
    let multiplier = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "k" | "m" | "g" | "t" => {
            let letter = unit.to_ascii_uppercase();
            return Err(format!(
                "ambiguous unit \"{unit}\": write \"{letter}iB\" for powers of 1024 \
                 or \"{letter}B\" for powers of 1000"
            ));
        }
        _ => return Err(SIZE_EXPECTED.to_owned()),
    };
    Ok(multiplier)
}

/// Splits "12.5" into 12 and "5". Anything but digits with at most one
/// inner point is rejected.
fn split_number(number: &str) -> Result<(u128, &str), String> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let is_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !is_digits(whole) || (number.contains('.') && !is_digits(fraction)) {
        return Err(SIZE_EXPECTED.to_owned());
    }
    let whole = whole
        .parse::<u128>()
        .map_err(|_| format!("the size is larger than the maximum of {} bytes", u64::MAX))?;
    Ok((whole, fraction))
}

struct FractionBytes {
    /// Whole bytes of the fraction, rounded down.
    whole: u128,
    /// Fraction digits times the multiplier, zero when the fraction is zero.
    numerator: u128,
}

/// Converts the digits after the point into bytes of `multiplier`.
fn fraction_of(digits: &str, multiplier: u128) -> FractionBytes {
    // Digits past the 20th add less than 2^40 / 10^20 (about 10^-8) bytes,
    // even for TiB, so dropping them keeps the product within u128.
    let digits = &digits[..digits.len().min(20)];
    let value = digits.parse::<u128>().unwrap_or(0);
    let numerator = value * multiplier;
    let denominator = 10u128.pow(digits.len() as u32);
    FractionBytes {
        whole: numerator / denominator,
        numerator,
    }
}

/// Parses a duration such as "750ms", "30s", "2m" or "1h 30m" with the
/// `humantime` syntax.
///
/// "0s" is accepted because `leak-timeout = "0s"` means not to wait, so
/// callers for which 0 is invalid check it. The error is the reason only,
/// without the input.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|error| format!("{error}; {DURATION_EXPECTED}"))
}

pub(super) fn serialize_duration<S: Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(duration) => {
            serializer.serialize_some(&humantime::format_duration(*duration).to_string())
        }
        None => serializer.serialize_none(),
    }
}

/// Size as written in serialized budgets: a byte count or a size string.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Bytes(u64),
    Text(String),
}

pub(super) fn deserialize_size<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    match Option::<SizeRepr>::deserialize(deserializer)? {
        None => Ok(None),
        Some(SizeRepr::Bytes(0)) => Err(D::Error::custom(SIZE_ZERO)),
        Some(SizeRepr::Bytes(bytes)) => Ok(Some(bytes)),
        Some(SizeRepr::Text(text)) => parse_size(&text).map(Some).map_err(D::Error::custom),
    }
}

pub(super) fn deserialize_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let text = Option::<String>::deserialize(deserializer)?;
    text.map(|text| parse_duration(&text))
        .transpose()
        .map_err(D::Error::custom)
}

pub(super) fn read_string(
    source: &Source<'_>,
    key: &str,
    value: &Value<'_>,
    expected: &str,
) -> Result<String, ConfigError> {
    match value.get_ref() {
        DeValue::String(text) if !text.is_empty() => Ok(text.to_string()),
        DeValue::String(_) => {
            let reason = format!("the value must not be empty; {expected}");
            Err(source.invalid(key, value.span(), reason))
        }
        _ => Err(source.invalid(key, value.span(), expected)),
    }
}

pub(super) fn read_bool(
    source: &Source<'_>,
    key: &str,
    value: &Value<'_>,
) -> Result<bool, ConfigError> {
    value
        .get_ref()
        .as_bool()
        .ok_or_else(|| source.invalid(key, value.span(), BOOL_EXPECTED))
}

/// Returns the value of a TOML integer, or `None` for one that does not fit
/// in an `i64`, the range that TOML allows.
fn integer_value(value: &DeValue<'_>) -> Option<i64> {
    let integer = value.as_integer()?;
    i64::from_str_radix(integer.as_str(), integer.radix()).ok()
}

pub(super) fn read_count(
    source: &Source<'_>,
    key: &str,
    value: &Value<'_>,
) -> Result<u64, ConfigError> {
    integer_value(value.get_ref())
        .and_then(|count| u64::try_from(count).ok())
        .filter(|count| *count >= 1)
        .ok_or_else(|| source.invalid(key, value.span(), COUNT_EXPECTED))
}

pub(super) fn read_cpus(
    source: &Source<'_>,
    key: &str,
    value: &Value<'_>,
) -> Result<f64, ConfigError> {
    let cpus = match value.get_ref() {
        DeValue::Float(float) => float.as_str().parse::<f64>().ok(),
        // Precision loss above 2^53 CPUs does not matter for a quota.
        DeValue::Integer(_) => integer_value(value.get_ref()).map(|count| count as f64),
        _ => None,
    };
    cpus.filter(|cpus| cpus.is_finite() && *cpus > 0.0)
        .ok_or_else(|| source.invalid(key, value.span(), CPUS_EXPECTED))
}

pub(super) fn read_size(
    source: &Source<'_>,
    key: &str,
    value: &Value<'_>,
) -> Result<u64, ConfigError> {
    let size = match value.get_ref() {
        DeValue::String(text) => parse_size(text),
        DeValue::Integer(_) => match integer_value(value.get_ref()) {
            Some(bytes) if bytes > 0 => Ok(bytes.unsigned_abs()),
            Some(_) => Err(SIZE_ZERO.to_owned()),
            None => Err(SIZE_EXPECTED.to_owned()),
        },
        _ => Err(SIZE_EXPECTED.to_owned()),
    };
    size.map_err(|reason| source.invalid(key, value.span(), reason))
}

pub(super) fn read_duration(
    source: &Source<'_>,
    key: &str,
    value: &Value<'_>,
) -> Result<Duration, ConfigError> {
    let duration = match value.get_ref() {
        DeValue::String(text) => parse_duration(text),
        DeValue::Integer(_) | DeValue::Float(_) => Err(format!(
            "a bare number has no unit; {DURATION_EXPECTED}, written as a string"
        )),
        _ => Err(DURATION_EXPECTED.to_owned()),
    };
    duration.map_err(|reason| source.invalid(key, value.span(), reason))
}

/// Reads a duration that is a cap or budget, where 0 would stop or fail
/// every test at once.
pub(super) fn read_positive_duration(
    source: &Source<'_>,
    key: &str,
    value: &Value<'_>,
) -> Result<Duration, ConfigError> {
    let duration = read_duration(source, key, value)?;
    if duration.is_zero() {
        let reason = "the duration must be greater than 0; omit the key to leave it unset";
        return Err(source.invalid(key, value.span(), reason));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;
    use crate::config::Budgets;

    #[test]
    fn parse_size_accepts_units() {
        let cases: [(&str, u64); 16] = [
            ("123", 123),
            ("1", 1),
            ("256MiB", 256 * MIB),
            ("1GB", 1_000_000_000),
            ("1.5GiB", 3 * GIB / 2),
            ("512 MiB", 512 * MIB),
            ("  2KiB  ", 2048),
            ("2kib", 2048),
            ("3KB", 3000),
            ("7B", 7),
            ("1TB", 1_000_000_000_000),
            ("1TiB", 1 << 40),
            ("1.5MB", 1_500_000),
            ("0.5KiB", 512),
            // 1.1 MiB is 1153433.6 bytes, rounded down.
            ("1.1MiB", 1_153_433),
            ("18446744073709551615", u64::MAX),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_size(text), Ok(expected), "parse_size({text:?})");
        }
    }

    #[test]
    fn parse_size_rejects_zero() {
        for text in ["0", "0B", "0MiB", "0.0GiB"] {
            let error = parse_size(text).expect_err(text);
            assert_contains(&error, "greater than 0");
        }
    }

    #[test]
    fn parse_size_rejects_lone_letters() {
        for (text, binary, decimal) in [
            ("512K", "\"KiB\"", "\"KB\""),
            ("512k", "\"KiB\"", "\"KB\""),
            ("1M", "\"MiB\"", "\"MB\""),
            ("2G", "\"GiB\"", "\"GB\""),
            ("1T", "\"TiB\"", "\"TB\""),
        ] {
            let error = parse_size(text).expect_err(text);
            assert_contains(&error, "ambiguous unit");
            assert_contains(&error, binary);
            assert_contains(&error, decimal);
        }
    }

    #[test]
    fn parse_size_rejects_malformed() {
        for text in [
            "",
            "MiB",
            "-1",
            "1.2.3MiB",
            "1.MiB",
            ".5MiB",
            "512 MB/s",
            "12 parsecs",
            "1e9",
            "1,5GB",
        ] {
            let error = parse_size(text).expect_err(text);
            assert_contains(&error, "expected a size such as \"256MiB\"");
        }
    }

    #[test]
    fn parse_size_rejects_fractional_bytes() {
        let error = parse_size("1.5").expect_err("1.5");
        assert_contains(&error, "must be whole");
        let error = parse_size("2.5B").expect_err("2.5B");
        assert_contains(&error, "must be whole");
    }

    #[test]
    fn parse_size_rejects_overflow() {
        for text in [
            "18446744073709551616",
            "20000000TiB",
            "99999999999999999999999999999999999999999",
        ] {
            let error = parse_size(text).expect_err(text);
            assert_contains(&error, "larger than the maximum");
        }
    }

    #[test]
    fn parse_duration_accepts_humantime() {
        assert_eq!(parse_duration("750ms"), Ok(Duration::from_millis(750)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn parse_duration_rejects_malformed() {
        for text in ["", "30", "ten seconds", "5 parsecs", "-1s"] {
            let error = parse_duration(text).expect_err(text);
            assert_contains(&error, "expected a duration such as \"750ms\"");
        }
    }

    #[test]
    fn sizes_accept_integers() {
        let config = parse("[profile.default]\nmemory = 536870912\nbudgets.memory = 1024\n");
        let settings = resolve(&config, "default", "t");
        assert_eq!(settings.memory, Some(512 * MIB));
        assert_eq!(settings.budgets.memory, Some(1024));
    }

    #[test]
    fn cpus_accept_integers() {
        let config = parse("[profile.default]\ncpus = 2\n");
        assert_eq!(resolve(&config, "default", "t").cpus, Some(2.0));
    }

    #[test]
    fn leak_timeout_accepts_zero() {
        let config = parse("[profile.default]\nleak-timeout = \"0s\"\n");
        let settings = resolve(&config, "default", "t");
        assert_eq!(settings.leak_timeout, Some(Duration::ZERO));
    }

    #[test]
    fn bad_size_names_key_and_line() {
        let text = "[profile.default]\n\n\n\n\n\nmemory = \"512 MB/s\"\n";
        let error = parse_error(text);
        assert_eq!(
            error,
            format!(
                "sandbox-test.toml:7: invalid value \"512 MB/s\" for key `memory`: {SIZE_EXPECTED}"
            )
        );
    }

    #[test]
    fn ambiguous_size_hint() {
        let error = parse_error("[profile.default]\nmemory = \"512M\"\n");
        assert_contains(
            &error,
            "sandbox-test.toml:2: invalid value \"512M\" for key `memory`: ambiguous unit \"M\": \
             write \"MiB\" for powers of 1024 or \"MB\" for powers of 1000",
        );
    }

    #[test]
    fn zero_sizes_rejected() {
        let error = parse_error("[profile.default]\nmemory = 0\n");
        assert_contains(
            &error,
            "sandbox-test.toml:2: invalid value 0 for key `memory`",
        );
        assert_contains(&error, "greater than 0 bytes");
        let error = parse_error("[profile.default]\nbudgets = { memory = \"0MiB\" }\n");
        assert_contains(
            &error,
            "sandbox-test.toml:2: invalid value \"0MiB\" for key `budgets.memory`",
        );
        let error = parse_error("[profile.default]\nmemory = -5\n");
        assert_contains(
            &error,
            "invalid value -5 for key `memory`: a size must be greater than 0",
        );
    }

    #[test]
    fn size_of_wrong_type() {
        let error = parse_error("[profile.default]\nmemory = 1.5\n");
        assert_contains(
            &error,
            "sandbox-test.toml:2: invalid value 1.5 for key `memory`: expected a size",
        );
    }

    #[test]
    fn bad_duration_names_key_and_line() {
        let error = parse_error("[profile.ci]\ntimeout = \"2 fortnights\"\n");
        assert_contains(
            &error,
            "sandbox-test.toml:2: invalid value \"2 fortnights\" for key `timeout`:",
        );
        assert_contains(
            &error,
            "expected a duration such as \"750ms\", \"30s\", \"2m\" or \"1h 30m\"",
        );
        let error = parse_error("[profile.ci]\nleak-timeout = 5\n");
        assert_contains(
            &error,
            "sandbox-test.toml:2: invalid value 5 for key `leak-timeout`",
        );
        assert_contains(&error, "a bare number has no unit");
        let error = parse_error("[profile.ci]\nbudgets.wall-time = \"5\"\n");
        assert_contains(
            &error,
            "sandbox-test.toml:2: invalid value \"5\" for key `budgets.wall-time`",
        );
    }

    #[test]
    fn zero_durations_rejected() {
        for key in ["timeout", "budgets.cpu-time", "budgets.wall-time"] {
            let error = parse_error(&format!("[profile.default]\n{key} = \"0s\"\n"));
            assert_contains(
                &error,
                &format!("sandbox-test.toml:2: invalid value \"0s\" for key `{key}`"),
            );
            assert_contains(&error, "greater than 0");
        }
    }

    #[test]
    fn bad_cpus_rejected() {
        for value in ["0", "-1.5", "0.0", "nan", "inf", "\"two\"", "true"] {
            let error = parse_error(&format!("[profile.default]\ncpus = {value}\n"));
            let expected = format!(
                "sandbox-test.toml:2: invalid value {value} for key `cpus`: {CPUS_EXPECTED}"
            );
            assert_eq!(error, expected);
        }
    }

    #[test]
    fn zero_pids_rejected() {
        let error = parse_error("[profile.default]\npids = 0\n");
        assert_eq!(
            error,
            format!("sandbox-test.toml:2: invalid value 0 for key `pids`: {COUNT_EXPECTED}")
        );
        let error = parse_error("[profile.default]\nbudgets.tasks = 2.5\n");
        assert_contains(
            &error,
            "sandbox-test.toml:2: invalid value 2.5 for key `budgets.tasks`",
        );
    }

    #[test]
    fn bool_of_wrong_type() {
        let error = parse_error("[profile.default]\nnetwork = \"yes\"\n");
        assert_eq!(
            error,
            "sandbox-test.toml:2: invalid value \"yes\" for key `network`: expected true or false"
        );
    }

    #[test]
    fn settings_serialize_human_durations() {
        let config = parse(FULL);
        let settings = resolve(&config, "ci", "fs::reads");
        let json = serde_json::to_value(&settings).expect("serializes");
        assert_eq!(json["timeout"], "2m");
        assert_eq!(json["leak-timeout"], "100ms");
        assert_eq!(json["memory"], 512 * MIB);
        assert_eq!(json["budgets"]["cpu-time"], "2s");
        assert_eq!(json["pass-env"][0], "MY_VAR");
        assert_eq!(json["fail-on-leak"], false);
    }

    #[test]
    fn budgets_round_trip_json() {
        let budgets = Budgets {
            memory: Some(256 * MIB),
            cpu_time: Some(Duration::from_millis(1500)),
            wall_time: None,
            tasks: Some(3),
        };
        let json = serde_json::to_string(&budgets).expect("serializes");
        let parsed: Budgets = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(parsed, budgets);
    }

    #[test]
    fn budgets_deserialize_size_strings() {
        let parsed: Budgets =
            serde_json::from_str(r#"{"memory": "1GiB", "wall-time": "1h 30m"}"#).expect("parses");
        assert_eq!(parsed.memory, Some(GIB));
        assert_eq!(parsed.wall_time, Some(Duration::from_secs(5400)));
        let error = serde_json::from_str::<Budgets>(r#"{"memory": "1G"}"#).expect_err("ambiguous");
        assert_contains(&error.to_string(), "ambiguous unit");
        let error = serde_json::from_str::<Budgets>(r#"{"rss": 1}"#).expect_err("unknown field");
        assert_contains(&error.to_string(), "unknown field `rss`");
    }
}
