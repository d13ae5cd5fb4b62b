//! Configuration of caps and budgets: reads `sandbox-test.toml`, or the
//! `[workspace.metadata.sandbox-test]` table of the workspace's `Cargo.toml`,
//! checks every key and value and reports errors with the file and line, and
//! resolves the settings of one test under one profile.
//!
//! A test's settings under profile P are merged in two passes. The first
//! applies the plain settings of each profile from `default` down the
//! `inherits` chain to P. The second applies the matching overrides of the
//! same profiles in the same order, each profile's overrides in file order.
//! A later value replaces an earlier one key by key, so an override beats
//! every plain setting and a child's override beats its parent's. `env`
//! merges per variable and `pass-env` adds names.

mod errors;
mod matching;
mod read;
mod resolve;
#[cfg(test)]
mod test_support;
mod values;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use errors::{did_you_mean, line_of, Source};
use read::read_config;
use resolve::Profile;
use values::{deserialize_duration, deserialize_size, serialize_duration};

pub use errors::Location;
pub use matching::PatternSyntax;
pub use values::{parse_duration, parse_size};

/// Name of the configuration file at the workspace root.
pub const CONFIG_FILE: &str = "sandbox-test.toml";

const MANIFEST_FILE: &str = "Cargo.toml";
/// Dotted path of the `Cargo.toml` table that accepts the keys of `CONFIG_FILE`.
const METADATA_TABLE: &str = "workspace.metadata.sandbox-test";
const DEFAULT_PROFILE: &str = "default";

type Key<'i> = Spanned<Cow<'i, str>>;
type Value<'i> = Spanned<DeValue<'i>>;

/// Caps and options of one test, merged from the profiles and overrides
/// that apply to it.
///
/// `None` means the configuration leaves the value unset, so the built-in or
/// command-line value applies. Serializes with the kebab-case keys of the
/// file, sizes as byte counts and durations as humantime strings such as
/// "1m 30s".
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Settings {
    /// Memory cap in bytes.
    pub memory: Option<u64>,
    /// CPU quota in CPUs, for example 1.5 for one and a half CPUs.
    pub cpus: Option<f64>,
    /// Maximum number of tasks (processes and threads).
    pub pids: Option<u64>,
    /// Wall-clock timeout of the test.
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Option<Duration>,
    /// Whether the test uses the host network.
    pub network: Option<bool>,
    /// Time to wait for leftover processes after the test process exits.
    #[serde(serialize_with = "serialize_duration")]
    pub leak_timeout: Option<Duration>,
    /// Whether leftover processes make the test fail.
    pub fail_on_leak: Option<bool>,
    /// Extra environment variables for the test process.
    pub env: BTreeMap<String, String>,
    /// Names of host environment variables passed through to the test process.
    pub pass_env: Vec<String>,
    /// Limits that the usage measured for the test is judged against.
    pub budgets: Budgets,
}

impl Settings {
    /// Merges `other` into `self`: each value that `other` sets replaces
    /// this one, `env` merges per variable and `pass-env` adds the names
    /// that are not listed yet.
    pub fn merge(&mut self, other: &Settings) {
        self.memory = other.memory.or(self.memory);
        self.cpus = other.cpus.or(self.cpus);
        self.pids = other.pids.or(self.pids);
        self.timeout = other.timeout.or(self.timeout);
        self.network = other.network.or(self.network);
        self.leak_timeout = other.leak_timeout.or(self.leak_timeout);
        self.fail_on_leak = other.fail_on_leak.or(self.fail_on_leak);
        self.env.extend(other.env.clone());
        for name in &other.pass_env {
            if !self.pass_env.contains(name) {
                self.pass_env.push(name.clone());
            }
        }
        self.budgets.merge(&other.budgets);
    }
}

/// Resource budgets: limits on the usage measured for a test, unlike caps,
/// which the kernel enforces while the test runs.
///
/// Serializes and deserializes with kebab-case keys. Sizes serialize as byte
/// counts and deserialize from byte counts or size strings such as "256MiB".
/// Durations serialize as humantime strings such as "1m 30s" and deserialize
/// from any string that [`parse_duration`] accepts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Budgets {
    /// Memory budget in bytes.
    #[serde(default, deserialize_with = "deserialize_size")]
    pub memory: Option<u64>,
    /// CPU time budget.
    #[serde(
        default,
        serialize_with = "serialize_duration",
        deserialize_with = "deserialize_duration"
    )]
    pub cpu_time: Option<Duration>,
    /// Wall-clock time budget.
    #[serde(
        default,
        serialize_with = "serialize_duration",
        deserialize_with = "deserialize_duration"
    )]
    pub wall_time: Option<Duration>,
    /// Budget of tasks (processes and threads).
    #[serde(default)]
    pub tasks: Option<u64>,
}

impl Budgets {
    /// Merges `other` into `self`: each budget that `other` sets replaces this one.
    pub fn merge(&mut self, other: &Budgets) {
        self.memory = other.memory.or(self.memory);
        self.cpu_time = other.cpu_time.or(self.cpu_time);
        self.wall_time = other.wall_time.or(self.wall_time);
        self.tasks = other.tasks.or(self.tasks);
    }
}

/// Names that select the overrides of one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestIdentity<'a> {
    /// Package name, as in `Cargo.toml`.
    pub package: &'a str,
    /// Name of the test binary (the cargo target).
    pub binary: &'a str,
    /// Full test name, such as `net::connects`.
    pub name: &'a str,
}

/// Error in loading, parsing or applying the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A configuration file exists but could not be read.
    #[error("failed to read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML.
    #[error("{at}: invalid TOML: {message}")]
    Syntax { at: Location, message: String },
    /// Both `sandbox-test.toml` and `[workspace.metadata.sandbox-test]` exist.
    #[error(
        "both {} and [{METADATA_TABLE}] in {} configure sandbox-test; \
         keep one of them and delete the other",
        config.display(),
        manifest.display()
    )]
    Conflict { config: PathBuf, manifest: PathBuf },
    /// A table contains a key this module does not read; `known` lists
    /// the keys that table accepts.
    #[error(
        "{at}: unknown key `{key}` in {section}{}; known keys: {}",
        did_you_mean(.key, .known),
        .known.join(", ")
    )]
    UnknownKey {
        at: Location,
        key: String,
        section: String,
        known: Vec<&'static str>,
    },
    /// A value has the wrong type or is out of range. `value` is the text as
    /// written, cut to one short line, and `reason` names what is accepted.
    #[error("{at}: invalid value {value} for key `{key}`: {reason}")]
    InvalidValue {
        at: Location,
        key: String,
        value: String,
        reason: String,
    },
    /// A `test` glob or regex does not compile.
    #[error("{at}: invalid {syntax} {pattern:?} for key `{key}`: {reason}")]
    InvalidPattern {
        at: Location,
        key: String,
        syntax: PatternSyntax,
        pattern: String,
        reason: String,
    },
    /// An override sets none of `package`, `binary` and `test`.
    #[error(
        "{at}: override in {section} has none of the keys `package`, `binary` and `test`; \
         add at least one to select the tests it applies to"
    )]
    MissingMatcher { at: Location, section: String },
    /// A profile's `inherits` names a profile that is not defined.
    #[error(
        "{at}: profile `{profile}` inherits from `{parent}`, which is not defined; \
         defined profiles: {defined}"
    )]
    UndefinedParent {
        at: Location,
        profile: String,
        parent: String,
        defined: String,
    },
    /// Profiles inherit from each other in a cycle, written as `a -> b -> a`.
    #[error(
        "{at}: profiles inherit from each other in a cycle: {cycle}; \
         make one of them inherit from `default`"
    )]
    InheritanceCycle { at: Location, cycle: String },
    /// [`Config::resolve`] was called with a profile that is not defined.
    #[error(
        "{}: profile `{profile}` is not defined; defined profiles: {defined}; \
         add a {section} table to define it",
        path.display()
    )]
    UnknownProfile {
        path: PathBuf,
        profile: String,
        defined: String,
        section: String,
    },
}

/// Parsed configuration: the profiles with their settings and overrides.
#[derive(Debug, Clone)]
pub struct Config {
    origin: PathBuf,
    /// Dotted path, used in messages, of the table that contains the
    /// configuration: empty for `CONFIG_FILE`, `METADATA_TABLE` for `Cargo.toml`.
    table_prefix: &'static str,
    profiles: BTreeMap<String, Profile>,
}

impl Default for Config {
    /// Returns the configuration used when no file exists: an empty `default` profile.
    fn default() -> Config {
        Config::empty(PathBuf::from(CONFIG_FILE), "")
    }
}

impl Config {
    /// Loads `sandbox-test.toml` or `[workspace.metadata.sandbox-test]` from
    /// the workspace root, or returns an empty `default` profile when neither
    /// exists. Both existing is an error, so that no setting is silently
    /// ignored.
    pub fn load(workspace_root: &Path) -> Result<Config, ConfigError> {
        let config_path = workspace_root.join(CONFIG_FILE);
        let manifest_path = workspace_root.join(MANIFEST_FILE);
        let config_text = read_if_exists(&config_path)?;
        let manifest_text = read_if_exists(&manifest_path)?;

        if let (Some(_), Some(manifest)) = (&config_text, &manifest_text) {
            if has_metadata_table(manifest, &manifest_path)? {
                return Err(ConfigError::Conflict {
                    config: config_path,
                    manifest: manifest_path,
                });
            }
        }
        if let Some(text) = config_text {
            return Config::parse(&text, &config_path);
        }
        if let Some(text) = manifest_text {
            if let Some(config) = Config::parse_manifest(&text, &manifest_path)? {
                return Ok(config);
            }
        }
        Ok(Config::empty(config_path, ""))
    }

    /// Parses the text of a `sandbox-test.toml`. Error messages name `origin`
    /// as the file.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let root = parse_document(text, origin)?;
        let source = Source {
            text,
            path: origin,
            prefix: "",
        };
        read_config(&source, root.get_ref())
    }

    /// Parses the `[workspace.metadata.sandbox-test]` table of a `Cargo.toml`,
    /// or returns `Ok(None)` when the manifest has no such table.
    pub fn parse_manifest(text: &str, origin: &Path) -> Result<Option<Config>, ConfigError> {
        let root = parse_document(text, origin)?;
        let Some(value) = find_metadata_table(root.get_ref()) else {
            return Ok(None);
        };
        let source = Source {
            text,
            path: origin,
            prefix: METADATA_TABLE,
        };
        let expected = "expected a table such as [workspace.metadata.sandbox-test.profile.default]";
        let table = source.expect_table(METADATA_TABLE, value, expected)?;
        read_config(&source, table).map(Some)
    }

    /// Returns the path of the file the configuration came from, or would
    /// come from when no file exists.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Returns the names of the defined profiles, `default` first and the
    /// others in alphabetical order.
    pub fn profile_names(&self) -> Vec<String> {
        let others = self.profiles.keys().filter(|name| *name != DEFAULT_PROFILE);
        std::iter::once(DEFAULT_PROFILE.to_owned())
            .chain(others.cloned())
            .collect()
    }

    /// Resolves the settings of one test under one profile. Fails with an
    /// error that lists the defined profiles if `profile` is not one of them.
    pub fn resolve(&self, profile: &str, test: &TestIdentity<'_>) -> Result<Settings, ConfigError> {
        let chain = self.inheritance_chain(profile)?;
        let mut settings = Settings::default();
        for ancestor in &chain {
            settings.merge(&ancestor.settings);
        }
        for ancestor in &chain {
            for matching in ancestor.overrides.iter().filter(|o| o.matches(test)) {
                settings.merge(&matching.settings);
            }
        }
        Ok(settings)
    }

    fn empty(origin: PathBuf, table_prefix: &'static str) -> Config {
        let mut profiles = BTreeMap::new();
        profiles.insert(DEFAULT_PROFILE.to_owned(), Profile::default());
        Config {
            origin,
            table_prefix,
            profiles,
        }
    }
}

fn read_if_exists(path: &Path) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn parse_document<'i>(text: &'i str, origin: &Path) -> Result<Spanned<DeTable<'i>>, ConfigError> {
    DeTable::parse(text).map_err(|error| ConfigError::Syntax {
        at: Location {
            path: origin.to_owned(),
            line: error.span().map(|span| line_of(text, span.start)),
        },
        // The parser's message can span lines, so it is joined to keep each
        // error on one `file:line:` line.
        message: error.message().trim().replace('\n', "; "),
    })
}

fn has_metadata_table(text: &str, origin: &Path) -> Result<bool, ConfigError> {
    let root = parse_document(text, origin)?;
    Ok(find_metadata_table(root.get_ref()).is_some())
}

fn find_metadata_table<'a, 'i>(root: &'a DeTable<'i>) -> Option<&'a Value<'i>> {
    let mut parts = METADATA_TABLE.split('.');
    let mut value = root.get(parts.next()?)?;
    for part in parts {
        value = value.get_ref().as_table()?.get(part)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

    #[test]
    fn empty_file_has_default_profile() {
        let config = parse("");
        assert_eq!(config.profile_names(), ["default"]);
        assert_eq!(resolve(&config, "default", "t"), Settings::default());
        assert_eq!(
            Config::default()
                .resolve("default", &test_named("t"))
                .expect("default resolves"),
            Settings::default()
        );
    }

    #[test]
    fn profile_names_default_first() {
        let config = parse("[profile.zeta]\n[profile.alpha]\n[profile.default]\n");
        assert_eq!(config.profile_names(), ["default", "alpha", "zeta"]);
    }

    #[test]
    fn manifest_metadata_form() {
        let origin = Path::new("Cargo.toml");
        let config = Config::parse_manifest(WORKSPACE_MANIFEST, origin)
            .expect("the manifest parses")
            .expect("the manifest has the table");
        assert_eq!(config.profile_names(), ["default", "ci"]);
        let test = TestIdentity {
            package: "net-tests",
            binary: "net",
            name: "connects",
        };
        let settings = config.resolve("ci", &test).expect("ci resolves");
        assert_eq!(settings.memory, Some(1_000_000_000));
        assert_eq!(settings.timeout, Some(Duration::from_secs(45)));
        assert_eq!(settings.pids, Some(128));
        assert_eq!(settings.network, Some(true));
    }

    #[test]
    fn manifest_without_table() {
        let manifest = "[workspace]\nmembers = [\"runner\"]\n";
        let parsed = Config::parse_manifest(manifest, Path::new("Cargo.toml"));
        assert!(matches!(parsed, Ok(None)), "{parsed:?}");
    }

    #[test]
    fn manifest_errors_name_table() {
        let manifest = "[workspace.metadata.sandbox-test.profile.default]\nmemroy = 1\n";
        let error = Config::parse_manifest(manifest, Path::new("Cargo.toml"))
            .expect_err("unknown key")
            .to_string();
        assert_contains(&error, "Cargo.toml:2: unknown key `memroy`");
        assert_contains(
            &error,
            "in [workspace.metadata.sandbox-test.profile.default]",
        );
        let manifest = "[workspace.metadata.sandbox-test]\nprofiles = 1\n";
        let error = Config::parse_manifest(manifest, Path::new("Cargo.toml"))
            .expect_err("unknown key")
            .to_string();
        assert_contains(
            &error,
            "Cargo.toml:2: unknown key `profiles` in [workspace.metadata.sandbox-test]",
        );
    }

    #[test]
    fn load_without_files() {
        let root = tempfile::tempdir().expect("temporary directory");
        let config = Config::load(root.path()).expect("loads");
        assert_eq!(config.profile_names(), ["default"]);
        assert_eq!(config.origin(), root.path().join(CONFIG_FILE));
    }

    #[test]
    fn load_config_file() {
        let root = tempfile::tempdir().expect("temporary directory");
        std::fs::write(root.path().join(CONFIG_FILE), FULL).expect("write config");
        std::fs::write(root.path().join("Cargo.toml"), "[workspace]\n").expect("write manifest");
        let config = Config::load(root.path()).expect("loads");
        assert_eq!(config.profile_names(), ["default", "ci"]);
        assert_eq!(config.origin(), root.path().join(CONFIG_FILE));
    }

    #[test]
    fn load_manifest_metadata() {
        let root = tempfile::tempdir().expect("temporary directory");
        let manifest = root.path().join("Cargo.toml");
        std::fs::write(&manifest, WORKSPACE_MANIFEST).expect("write manifest");
        let config = Config::load(root.path()).expect("loads");
        assert_eq!(config.profile_names(), ["default", "ci"]);
        assert_eq!(config.origin(), manifest);
    }

    #[test]
    fn load_rejects_both_files() {
        let root = tempfile::tempdir().expect("temporary directory");
        std::fs::write(root.path().join(CONFIG_FILE), FULL).expect("write config");
        std::fs::write(root.path().join("Cargo.toml"), WORKSPACE_MANIFEST).expect("write manifest");
        let error = Config::load(root.path())
            .expect_err("both files")
            .to_string();
        assert_contains(&error, &root.path().join(CONFIG_FILE).display().to_string());
        assert_contains(
            &error,
            &root.path().join("Cargo.toml").display().to_string(),
        );
        assert_contains(&error, "[workspace.metadata.sandbox-test]");
        assert_contains(&error, "keep one of them");
    }

    #[test]
    fn load_reports_line_in_file() {
        let root = tempfile::tempdir().expect("temporary directory");
        let path = root.path().join(CONFIG_FILE);
        std::fs::write(&path, "[profile.default]\n\npids = 0\n").expect("write config");
        let error = Config::load(root.path())
            .expect_err("zero pids")
            .to_string();
        assert_contains(&error, &format!("{}:3:", path.display()));
    }

    #[test]
    fn syntax_error_names_line() {
        let error = parse_error("[profile.default]\nmemory = \"1GiB\"\nmemory = \"2GiB\"\n");
        assert_contains(&error, "sandbox-test.toml:3: invalid TOML");
        assert_contains(&error, "duplicate key");
        let error = parse_error("[profile.default]\ntimeout = 30s\n");
        assert_contains(&error, "sandbox-test.toml:2: invalid TOML");
    }
}
