//! Profiles, their inheritance and their overrides, which
//! [`Config::resolve`] merges. Parsing checks here that each `inherits`
//! names a defined profile and that no profiles inherit from each other in
//! a cycle.

use std::collections::BTreeMap;

use super::errors::{join_path, Source};
use super::matching::TestPattern;
use super::{Config, ConfigError, Settings, TestIdentity, DEFAULT_PROFILE};

#[derive(Debug, Clone, Default)]
pub(super) struct Profile {
    /// `None` only for `default`, which every chain of profiles ends at.
    pub(super) parent: Option<Parent>,
    pub(super) settings: Settings,
    pub(super) overrides: Vec<Override>,
}

#[derive(Debug, Clone)]
pub(super) struct Parent {
    pub(super) name: String,
    /// Line of the `inherits` key, `None` for the implicit parent `default`.
    pub(super) line: Option<usize>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Override {
    pub(super) package: Option<String>,
    pub(super) binary: Option<String>,
    pub(super) test: Option<TestPattern>,
    pub(super) settings: Settings,
}

impl Override {
    /// Returns whether every matcher that the override sets accepts the test.
    pub(super) fn matches(&self, test: &TestIdentity<'_>) -> bool {
        let package = self.package.as_deref().map_or(true, |p| p == test.package);
        let binary = self.binary.as_deref().map_or(true, |b| b == test.binary);
        let name = self.test.as_ref().map_or(true, |t| t.matches(test.name));
        package && binary && name
    }
}

impl Config {
    /// Returns the profiles from `default` down to `name`.
    pub(super) fn inheritance_chain(&self, name: &str) -> Result<Vec<&Profile>, ConfigError> {
        let mut chain = Vec::new();
        let mut next = Some(name);
        while let Some(current) = next {
            let profile = self
                .profiles
                .get(current)
                .ok_or_else(|| self.unknown_profile(name))?;
            chain.push(profile);
            next = profile.parent.as_ref().map(|parent| parent.name.as_str());
            // Parsing rejects cycles, so this bound only guards against a
            // future constructor that skips `check_inheritance`.
            if chain.len() > self.profiles.len() {
                break;
            }
        }
        chain.reverse();
        Ok(chain)
    }

    fn unknown_profile(&self, name: &str) -> ConfigError {
        ConfigError::UnknownProfile {
            path: self.origin.clone(),
            profile: name.to_owned(),
            defined: self.profile_names().join(", "),
            section: format!(
                "[{}]",
                join_path(self.table_prefix, &format!("profile.{name}"))
            ),
        }
    }
}

pub(super) fn check_inheritance(
    source: &Source<'_>,
    profiles: &BTreeMap<String, Profile>,
) -> Result<(), ConfigError> {
    let defined = || profile_list(profiles);
    for (name, profile) in profiles {
        let Some(parent) = &profile.parent else {
            continue;
        };
        if !profiles.contains_key(&parent.name) {
            return Err(ConfigError::UndefinedParent {
                at: source.location(parent.line),
                profile: name.clone(),
                parent: parent.name.clone(),
                defined: defined(),
            });
        }
    }
    for name in profiles.keys() {
        if let Some((cycle, line)) = find_cycle(profiles, name) {
            return Err(ConfigError::InheritanceCycle {
                at: source.location(line),
                cycle: cycle.join(" -> "),
            });
        }
    }
    Ok(())
}

/// Returns the profile names of a cycle reachable from `start`, first name
/// repeated at the end, and the line of the `inherits` key that closes it.
fn find_cycle<'p>(
    profiles: &'p BTreeMap<String, Profile>,
    start: &'p str,
) -> Option<(Vec<&'p str>, Option<usize>)> {
    let mut chain = vec![start];
    let mut current = start;
    while let Some(parent) = profiles.get(current).and_then(|p| p.parent.as_ref()) {
        let parent_name = parent.name.as_str();
        if let Some(position) = chain.iter().position(|name| *name == parent_name) {
            let mut cycle = chain.split_off(position);
            cycle.push(parent_name);
            return Some((cycle, parent.line));
        }
        chain.push(parent_name);
        current = parent_name;
    }
    None
}

fn profile_list(profiles: &BTreeMap<String, Profile>) -> String {
    let others = profiles.keys().filter(|name| *name != DEFAULT_PROFILE);
    std::iter::once(DEFAULT_PROFILE)
        .chain(others.map(String::as_str))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;
    use std::time::Duration;

    #[test]
    fn full_example_override_applies() {
        let config = parse(FULL);
        let settings = resolve(&config, "default", "net::connects");
        assert_eq!(settings.memory, Some(GIB));
        assert_eq!(settings.network, Some(true));
        assert_eq!(settings.budgets.memory, Some(900 * MIB));
        // Budgets the override leaves unset keep the profile's values.
        assert_eq!(settings.budgets.tasks, Some(64));
        assert_eq!(settings.pids, Some(256));
    }

    #[test]
    fn full_example_ci_inherits() {
        let config = parse(FULL);
        let settings = resolve(&config, "ci", "fs::reads");
        assert_eq!(settings.timeout, Some(Duration::from_secs(120)));
        assert_eq!(settings.memory, Some(512 * MIB));
        let settings = resolve(&config, "ci", "net::connects");
        assert_eq!(settings.memory, Some(GIB));
        assert_eq!(settings.timeout, Some(Duration::from_secs(120)));
    }

    #[test]
    fn override_needs_every_matcher() {
        let config = parse(FULL);
        let other_package = TestIdentity {
            package: "other-crate",
            binary: "integration",
            name: "net::connects",
        };
        let other_binary = TestIdentity {
            package: "my-crate",
            binary: "unit",
            name: "net::connects",
        };
        for test in [other_package, other_binary] {
            let settings = config.resolve("default", &test).expect("default resolves");
            assert_eq!(settings.memory, Some(512 * MIB), "{test:?}");
            assert_eq!(settings.network, Some(false), "{test:?}");
        }
    }

    #[test]
    fn inheritance_chain_layers_settings() {
        let config = parse(INHERITANCE);
        let settings = resolve(&config, "nightly", "fs::reads");
        assert_eq!(settings.timeout, Some(Duration::from_secs(120)));
        assert_eq!(settings.memory, Some(512 * MIB));
        assert_eq!(settings.cpus, Some(4.0));
        assert_eq!(settings.pass_env, vec!["CI".to_owned()]);
        assert_eq!(settings.env.get("NIGHTLY").map(String::as_str), Some("1"));
    }

    #[test]
    fn parent_overrides_apply_before_child() {
        let config = parse(INHERITANCE);
        // Matched by both the default glob and the nightly regex: nightly wins.
        let huge = resolve(&config, "nightly", "slow::huge");
        assert_eq!(huge.timeout, Some(Duration::from_secs(5400)));
        // Matched by the default glob only.
        let small = resolve(&config, "nightly", "slow::small");
        assert_eq!(small.timeout, Some(Duration::from_secs(300)));
        // The regex is anchored, so a longer name does not match it.
        let longer = resolve(&config, "nightly", "slow::huge_extra");
        assert_eq!(longer.timeout, Some(Duration::from_secs(300)));
    }

    #[test]
    fn parent_override_beats_child_setting() {
        let config = parse(INHERITANCE);
        // ci sets timeout = "2m", but the default profile's override for
        // slow::* is more specific, so it applies after every plain setting.
        let settings = resolve(&config, "ci", "slow::small");
        assert_eq!(settings.timeout, Some(Duration::from_secs(300)));
    }

    #[test]
    fn later_override_wins() {
        let config = parse(
            r#"
[[profile.default.overrides]]
test = "glob:*"
memory = "1GiB"
pids = 10

[[profile.default.overrides]]
test = "net::connects"
memory = "2GiB"
"#,
        );
        let settings = resolve(&config, "default", "net::connects");
        assert_eq!(settings.memory, Some(2 * GIB));
        assert_eq!(settings.pids, Some(10));
        let settings = resolve(&config, "default", "fs::reads");
        assert_eq!(settings.memory, Some(GIB));
    }

    #[test]
    fn env_and_pass_env_merge() {
        let config = parse(
            r#"
[profile.default]
env = { A = "1", B = "1" }
pass-env = ["HOME", "PATH"]

[profile.ci]
env = { B = "2", C = "2" }
pass-env = ["PATH", "CI"]
"#,
        );
        let settings = resolve(&config, "ci", "t");
        let env: Vec<(&str, &str)> = settings
            .env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        assert_eq!(env, [("A", "1"), ("B", "2"), ("C", "2")]);
        assert_eq!(settings.pass_env, ["HOME", "PATH", "CI"]);
    }

    #[test]
    fn unknown_profile_lists_defined() {
        let config = parse(FULL);
        let error = config
            .resolve("staging", &test_named("t"))
            .expect_err("unknown profile")
            .to_string();
        assert_eq!(
            error,
            "sandbox-test.toml: profile `staging` is not defined; defined profiles: default, ci; \
             add a [profile.staging] table to define it"
        );
    }

    #[test]
    fn undefined_parent_rejected() {
        let error = parse_error("[profile.ci]\ninherits = \"staging\"\n");
        assert_eq!(
            error,
            "sandbox-test.toml:2: profile `ci` inherits from `staging`, which is not defined; \
             defined profiles: default, ci"
        );
    }

    #[test]
    fn inheritance_cycle_rejected() {
        let error = parse_error(
            "[profile.a]\ninherits = \"b\"\n\n[profile.b]\ninherits = \"c\"\n\n[profile.c]\ninherits = \"a\"\n",
        );
        assert_eq!(
            error,
            "sandbox-test.toml:8: profiles inherit from each other in a cycle: a -> b -> c -> a; \
             make one of them inherit from `default`"
        );
        let error = parse_error("[profile.ci]\ninherits = \"ci\"\n");
        assert_contains(
            &error,
            "sandbox-test.toml:2: profiles inherit from each other in a cycle: ci -> ci",
        );
    }
}
