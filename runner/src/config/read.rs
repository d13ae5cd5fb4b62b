//! Reads the parsed TOML tables into a [`Config`]: the profiles with their
//! settings, budgets and overrides. Every key is checked, and an unknown key
//! is an error that lists the keys its table accepts.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::errors::{line_of, Source};
use super::matching::read_test_pattern;
use super::resolve::{check_inheritance, Override, Parent, Profile};
use super::values::{
    read_bool, read_count, read_cpus, read_duration, read_positive_duration, read_size, read_string,
};
use super::{Budgets, Config, ConfigError, Key, Settings, Value, DEFAULT_PROFILE};

const SETTING_KEYS: [&str; 10] = [
    "memory",
    "cpus",
    "pids",
    "timeout",
    "network",
    "leak-timeout",
    "fail-on-leak",
    "env",
    "pass-env",
    "budgets",
];
const PROFILE_KEYS: [&str; 2] = ["inherits", "overrides"];
const MATCHER_KEYS: [&str; 3] = ["package", "binary", "test"];
const BUDGET_KEYS: [&str; 4] = ["memory", "cpu-time", "wall-time", "tasks"];

const VARIABLE_NAME_RULE: &str =
    "an environment variable name must not be empty or contain `=` or a NUL byte";

pub(super) fn read_config(source: &Source<'_>, root: &DeTable<'_>) -> Result<Config, ConfigError> {
    let mut config = Config::empty(source.path.to_owned(), source.prefix);
    for (key, value) in root {
        if key.get_ref() != "profile" {
            let section = match source.prefix {
                "" => "the top-level table".to_owned(),
                prefix => format!("[{prefix}]"),
            };
            return Err(source.unknown_key(key, &section, &["profile"]));
        }
        config.profiles.extend(read_profiles(source, value)?);
    }
    check_inheritance(source, &config.profiles)?;
    Ok(config)
}

fn read_profiles(
    source: &Source<'_>,
    value: &Value<'_>,
) -> Result<BTreeMap<String, Profile>, ConfigError> {
    let expected = "expected a table of profiles such as [profile.default]";
    let table = source.expect_table("profile", value, expected)?;
    let mut profiles = BTreeMap::new();
    for (name, value) in table {
        if name.get_ref().is_empty() {
            let reason = "a profile name must not be empty";
            return Err(source.invalid("profile", name.span(), reason));
        }
        let profile = read_profile(source, name.get_ref(), value)?;
        profiles.insert(name.get_ref().to_string(), profile);
    }
    Ok(profiles)
}

fn read_profile(
    source: &Source<'_>,
    name: &str,
    value: &Value<'_>,
) -> Result<Profile, ConfigError> {
    let path = format!("profile.{name}");
    let expected = format!("expected a table such as [{path}]");
    let table = source.expect_table(&path, value, &expected)?;
    let section = source.header(&path);
    let mut profile = Profile {
        parent: (name != DEFAULT_PROFILE).then(|| Parent {
            name: DEFAULT_PROFILE.to_owned(),
            line: None,
        }),
        ..Profile::default()
    };
    for (key, value) in table {
        match key.get_ref().as_ref() {
            "inherits" => profile.parent = Some(read_inherits(source, name, value)?),
            "overrides" => profile.overrides = read_overrides(source, &path, value)?,
            _ => read_setting(
                source,
                &mut profile.settings,
                key,
                value,
                &section,
                &PROFILE_KEYS,
            )?,
        }
    }
    Ok(profile)
}

fn read_inherits(
    source: &Source<'_>,
    profile: &str,
    value: &Value<'_>,
) -> Result<Parent, ConfigError> {
    let expected = "expected the name of a profile, such as \"default\"";
    let name = read_string(source, "inherits", value, expected)?;
    if profile == DEFAULT_PROFILE {
        let reason = "profile `default` cannot inherit, because every chain of profiles ends \
                      at it; remove this key";
        return Err(source.invalid("inherits", value.span(), reason));
    }
    Ok(Parent {
        name,
        line: Some(line_of(source.text, value.span().start)),
    })
}

fn read_overrides(
    source: &Source<'_>,
    profile_path: &str,
    value: &Value<'_>,
) -> Result<Vec<Override>, ConfigError> {
    let section = format!("[{}]", source.header(&format!("{profile_path}.overrides")));
    let DeValue::Array(items) = value.get_ref() else {
        let reason = format!("expected an array of tables, each written as {section}");
        return Err(source.invalid("overrides", value.span(), reason));
    };
    items
        .iter()
        .map(|item| read_override(source, &section, item))
        .collect()
}

fn read_override(
    source: &Source<'_>,
    section: &str,
    value: &Value<'_>,
) -> Result<Override, ConfigError> {
    let expected = format!("expected a table written as {section}");
    let table = source.expect_table("overrides", value, &expected)?;
    let mut entry = Override::default();
    for (key, value) in table {
        match key.get_ref().as_ref() {
            "package" => entry.package = Some(read_name(source, "package", value)?),
            "binary" => entry.binary = Some(read_name(source, "binary", value)?),
            "test" => entry.test = Some(read_test_pattern(source, value)?),
            _ => read_setting(
                source,
                &mut entry.settings,
                key,
                value,
                section,
                &MATCHER_KEYS,
            )?,
        }
    }
    if entry.package.is_none() && entry.binary.is_none() && entry.test.is_none() {
        return Err(ConfigError::MissingMatcher {
            at: source.at(value.span()),
            section: section.to_owned(),
        });
    }
    Ok(entry)
}

fn read_name(source: &Source<'_>, key: &str, value: &Value<'_>) -> Result<String, ConfigError> {
    let expected = format!("expected the exact {key} name as a string");
    read_string(source, key, value, &expected)
}

/// Reads one of `SETTING_KEYS` into `settings`. Any other key is an error
/// that lists `section_keys`, the keys of the section itself, and then
/// `SETTING_KEYS`.
fn read_setting(
    source: &Source<'_>,
    settings: &mut Settings,
    key: &Key<'_>,
    value: &Value<'_>,
    section: &str,
    section_keys: &[&'static str],
) -> Result<(), ConfigError> {
    let name = key.get_ref().as_ref();
    match name {
        "memory" => settings.memory = Some(read_size(source, name, value)?),
        "cpus" => settings.cpus = Some(read_cpus(source, name, value)?),
        "pids" => settings.pids = Some(read_count(source, name, value)?),
        "timeout" => settings.timeout = Some(read_positive_duration(source, name, value)?),
        "network" => settings.network = Some(read_bool(source, name, value)?),
        "leak-timeout" => settings.leak_timeout = Some(read_duration(source, name, value)?),
        "fail-on-leak" => settings.fail_on_leak = Some(read_bool(source, name, value)?),
        "env" => settings.env = read_env(source, value)?,
        "pass-env" => settings.pass_env = read_pass_env(source, value)?,
        "budgets" => settings.budgets = read_budgets(source, value, section)?,
        _ => {
            let known: Vec<&str> = section_keys.iter().chain(&SETTING_KEYS).copied().collect();
            return Err(source.unknown_key(key, section, &known));
        }
    }
    Ok(())
}

fn read_budgets(
    source: &Source<'_>,
    value: &Value<'_>,
    owner: &str,
) -> Result<Budgets, ConfigError> {
    let expected = "expected a table such as { memory = \"256MiB\", cpu-time = \"2s\" }";
    let table = source.expect_table("budgets", value, expected)?;
    let section = format!("`budgets` of {owner}");
    let mut budgets = Budgets::default();
    for (key, value) in table {
        let path = format!("budgets.{}", key.get_ref());
        match key.get_ref().as_ref() {
            "memory" => budgets.memory = Some(read_size(source, &path, value)?),
            "cpu-time" => budgets.cpu_time = Some(read_positive_duration(source, &path, value)?),
            "wall-time" => budgets.wall_time = Some(read_positive_duration(source, &path, value)?),
            "tasks" => budgets.tasks = Some(read_count(source, &path, value)?),
            _ => return Err(source.unknown_key(key, &section, &BUDGET_KEYS)),
        }
    }
    Ok(budgets)
}

fn read_env(
    source: &Source<'_>,
    value: &Value<'_>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let expected = "expected a table of variables such as { RUST_BACKTRACE = \"1\" }";
    let table = source.expect_table("env", value, expected)?;
    let mut env = BTreeMap::new();
    for (name, value) in table {
        check_variable_name(source, "env", name.get_ref(), name.span())?;
        let key = format!("env.{}", name.get_ref());
        let DeValue::String(text) = value.get_ref() else {
            let reason =
                "expected a string; quote numbers and booleans, as in RUST_BACKTRACE = \"1\"";
            return Err(source.invalid(&key, value.span(), reason));
        };
        if text.contains('\0') {
            let reason = "an environment variable value must not contain a NUL byte";
            return Err(source.invalid(&key, value.span(), reason));
        }
        env.insert(name.get_ref().to_string(), text.to_string());
    }
    Ok(env)
}

fn read_pass_env(source: &Source<'_>, value: &Value<'_>) -> Result<Vec<String>, ConfigError> {
    let expected = "expected an array of variable names such as [\"MY_VAR\"]";
    let DeValue::Array(items) = value.get_ref() else {
        return Err(source.invalid("pass-env", value.span(), expected));
    };
    let mut names: Vec<String> = Vec::new();
    for item in items.iter() {
        let DeValue::String(name) = item.get_ref() else {
            return Err(source.invalid("pass-env", item.span(), expected));
        };
        check_variable_name(source, "pass-env", name, item.span())?;
        if !names.iter().any(|known| known == name) {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

fn check_variable_name(
    source: &Source<'_>,
    key: &str,
    name: &str,
    span: Range<usize>,
) -> Result<(), ConfigError> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(source.invalid(key, span, VARIABLE_NAME_RULE));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;
    use std::time::Duration;

    #[test]
    fn full_example_sets_every_key() {
        let config = parse(FULL);
        let settings = resolve(&config, "default", "fs::reads");
        let expected = Settings {
            memory: Some(512 * MIB),
            cpus: Some(1.5),
            pids: Some(256),
            timeout: Some(Duration::from_secs(30)),
            network: Some(false),
            leak_timeout: Some(Duration::from_millis(100)),
            fail_on_leak: Some(false),
            env: BTreeMap::from([("RUST_BACKTRACE".to_owned(), "1".to_owned())]),
            pass_env: vec!["MY_VAR".to_owned()],
            budgets: Budgets {
                memory: Some(256 * MIB),
                cpu_time: Some(Duration::from_secs(2)),
                wall_time: Some(Duration::from_secs(5)),
                tasks: Some(64),
            },
        };
        assert_eq!(settings, expected);
    }

    #[test]
    fn unknown_key_top_level() {
        let error = parse_error("[profile.default]\n\n[profiles.ci]\n");
        assert_eq!(
            error,
            "sandbox-test.toml:3: unknown key `profiles` in the top-level table \
             (did you mean `profile`?); known keys: profile"
        );
    }

    #[test]
    fn unknown_key_in_profile() {
        let error = parse_error("[profile.default]\ncpus = 1\nmemroy = \"1GiB\"\n");
        assert_contains(
            &error,
            "sandbox-test.toml:3: unknown key `memroy` in [profile.default] \
             (did you mean `memory`?); known keys: inherits, overrides, memory, cpus",
        );
    }

    #[test]
    fn unknown_key_snake_case_hint() {
        let error = parse_error("[profile.ci]\nleak_timeout = \"1s\"\n");
        assert_contains(
            &error,
            "sandbox-test.toml:2: unknown key `leak_timeout` in [profile.ci]",
        );
        assert_contains(&error, "did you mean `leak-timeout`?");
    }

    #[test]
    fn unknown_key_in_override() {
        let error = parse_error("[[profile.default.overrides]]\ntest = \"a\"\ninherits = \"ci\"\n");
        assert_contains(
            &error,
            "sandbox-test.toml:3: unknown key `inherits` in [[profile.default.overrides]]; \
             known keys: package, binary, test, memory",
        );
    }

    #[test]
    fn unknown_key_in_budgets() {
        let error =
            parse_error("[profile.default]\n\nbudgets = { memory = 1, cpu_time = \"1s\" }\n");
        assert_contains(
            &error,
            "sandbox-test.toml:3: unknown key `cpu_time` in `budgets` of [profile.default] \
             (did you mean `cpu-time`?); known keys: memory, cpu-time, wall-time, tasks",
        );
        let error = parse_error("[[profile.ci.overrides]]\nbinary = \"b\"\nbudgets.rss = 1\n");
        assert_contains(
            &error,
            "sandbox-test.toml:3: unknown key `rss` in `budgets` of [[profile.ci.overrides]]",
        );
    }

    #[test]
    fn env_value_not_string() {
        let error = parse_error("[profile.default]\nenv = { RUST_BACKTRACE = 1 }\n");
        assert_contains(
            &error,
            "sandbox-test.toml:2: invalid value 1 for key `env.RUST_BACKTRACE`",
        );
        assert_contains(&error, "expected a string");
        let error = parse_error("[profile.default]\nenv = [\"A=1\"]\n");
        assert_contains(
            &error,
            "invalid value [\"A=1\"] for key `env`: expected a table",
        );
        let error = parse_error("[profile.default.env]\n\"A=B\" = \"1\"\n");
        assert_contains(
            &error,
            "sandbox-test.toml:2: invalid value \"A=B\" for key `env`",
        );
        assert_contains(&error, VARIABLE_NAME_RULE);
    }

    #[test]
    fn pass_env_not_strings() {
        let error = parse_error("[profile.default]\npass-env = \"HOME\"\n");
        assert_contains(
            &error,
            "sandbox-test.toml:2: invalid value \"HOME\" for key `pass-env`",
        );
        let error = parse_error("[profile.default]\npass-env = [\n  \"HOME\",\n  3,\n]\n");
        assert_contains(
            &error,
            "sandbox-test.toml:4: invalid value 3 for key `pass-env`",
        );
        let error = parse_error("[profile.default]\npass-env = [\"\"]\n");
        assert_contains(&error, VARIABLE_NAME_RULE);
    }

    #[test]
    fn default_cannot_inherit() {
        let error = parse_error("[profile.ci]\n[profile.default]\ninherits = \"ci\"\n");
        assert_contains(
            &error,
            "sandbox-test.toml:3: invalid value \"ci\" for key `inherits`",
        );
        assert_contains(&error, "profile `default` cannot inherit");
    }

    #[test]
    fn override_without_matcher() {
        let error = parse_error(
            "[profile.default]\npids = 5\n\n[[profile.default.overrides]]\nmemory = \"1GiB\"\n",
        );
        assert_eq!(
            error,
            "sandbox-test.toml:4: override in [[profile.default.overrides]] has none of the keys \
             `package`, `binary` and `test`; add at least one to select the tests it applies to"
        );
    }

    #[test]
    fn overrides_not_array() {
        let error = parse_error("[profile.default.overrides]\ntest = \"a\"\n");
        assert_contains(&error, "sandbox-test.toml:1: invalid value");
        assert_contains(&error, "for key `overrides`: expected an array of tables, each written as [[profile.default.overrides]]");
    }

    #[test]
    fn profile_not_table() {
        let error = parse_error("profile = \"ci\"\n");
        assert_contains(
            &error,
            "sandbox-test.toml:1: invalid value \"ci\" for key `profile`",
        );
        let error = parse_error("[profile]\nci = 3\n");
        assert_contains(
            &error,
            "sandbox-test.toml:2: invalid value 3 for key `profile.ci`",
        );
    }
}
