//! Fixtures and helpers shared by the unit tests of the configuration modules.

use std::path::Path;

use super::{Config, Settings, TestIdentity, CONFIG_FILE};

pub(super) const FULL: &str = include_str!("../../tests/config/full.toml");
pub(super) const INHERITANCE: &str = include_str!("../../tests/config/inheritance.toml");
pub(super) const WORKSPACE_MANIFEST: &str = include_str!("../../tests/config/workspace-Cargo.toml");

pub(super) const MIB: u64 = 1 << 20;
pub(super) const GIB: u64 = 1 << 30;

pub(super) fn parse(text: &str) -> Config {
    match Config::parse(text, Path::new(CONFIG_FILE)) {
        Ok(config) => config,
        Err(error) => panic!("expected a valid configuration, got: {error}"),
    }
}

pub(super) fn parse_error(text: &str) -> String {
    match Config::parse(text, Path::new(CONFIG_FILE)) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(error) => error.to_string(),
    }
}

pub(super) fn test_named(name: &str) -> TestIdentity<'_> {
    TestIdentity {
        package: "my-crate",
        binary: "integration",
        name,
    }
}

pub(super) fn resolve(config: &Config, profile: &str, name: &str) -> Settings {
    match config.resolve(profile, &test_named(name)) {
        Ok(settings) => settings,
        Err(error) => panic!("expected profile `{profile}` to resolve, got: {error}"),
    }
}

pub(super) fn assert_contains(message: &str, expected: &str) {
    assert!(
        message.contains(expected),
        "expected {expected:?} in the message:\n{message}"
    );
}
