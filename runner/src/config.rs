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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Name of the configuration file at the workspace root.
pub const CONFIG_FILE: &str = "sandbox-test.toml";

const MANIFEST_FILE: &str = "Cargo.toml";
/// Dotted path of the `Cargo.toml` table that accepts the keys of `CONFIG_FILE`.
const METADATA_TABLE: &str = "workspace.metadata.sandbox-test";
const DEFAULT_PROFILE: &str = "default";

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

const SIZE_EXPECTED: &str = "expected a size such as \"256MiB\", \"1GB\" or a number of bytes \
     (units: B, KB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB are powers of 1024)";
const SIZE_ZERO: &str = "a size must be greater than 0 bytes";
const DURATION_EXPECTED: &str =
    "expected a duration such as \"750ms\", \"30s\", \"2m\" or \"1h 30m\"";
const COUNT_EXPECTED: &str = "expected a whole number of at least 1, such as 64";
const CPUS_EXPECTED: &str = "expected a number of CPUs greater than 0, such as 1 or 1.5";
const BOOL_EXPECTED: &str = "expected true or false";
const VARIABLE_NAME_RULE: &str =
    "an environment variable name must not be empty or contain `=` or a NUL byte";

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

/// Returns " (did you mean `KEY`?)" for the known key closest to `key`, or "".
fn did_you_mean(key: &str, known: &[&str]) -> String {
    match suggest_key(key, known) {
        Some(key) => format!(" (did you mean `{key}`?)"),
        None => String::new(),
    }
}

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

/// Parsed configuration: the profiles with their settings and overrides.
#[derive(Debug, Clone)]
pub struct Config {
    origin: PathBuf,
    /// Dotted path, used in messages, of the table that contains the
    /// configuration: empty for `CONFIG_FILE`, `METADATA_TABLE` for `Cargo.toml`.
    table_prefix: &'static str,
    profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Clone, Default)]
struct Profile {
    /// `None` only for `default`, which every chain of profiles ends at.
    parent: Option<Parent>,
    settings: Settings,
    overrides: Vec<Override>,
}

#[derive(Debug, Clone)]
struct Parent {
    name: String,
    /// Line of the `inherits` key, `None` for the implicit parent `default`.
    line: Option<usize>,
}

#[derive(Debug, Clone, Default)]
struct Override {
    package: Option<String>,
    binary: Option<String>,
    test: Option<TestPattern>,
    settings: Settings,
}

#[derive(Debug, Clone)]
enum TestPattern {
    Exact(String),
    Glob(globset::GlobMatcher),
    /// Matches anywhere in the name unless anchored with `^` and `$`.
    Regex(regex::Regex),
}

impl TestPattern {
    fn matches(&self, name: &str) -> bool {
        match self {
            TestPattern::Exact(exact) => exact == name,
            TestPattern::Glob(glob) => glob.is_match(name),
            TestPattern::Regex(regex) => regex.is_match(name),
        }
    }
}

impl Override {
    /// Returns whether every matcher that the override sets accepts the test.
    fn matches(&self, test: &TestIdentity<'_>) -> bool {
        let package = self.package.as_deref().map_or(true, |p| p == test.package);
        let binary = self.binary.as_deref().map_or(true, |b| b == test.binary);
        let name = self.test.as_ref().map_or(true, |t| t.matches(test.name));
        package && binary && name
    }
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

    /// Returns the profiles from `default` down to `name`.
    fn inheritance_chain(&self, name: &str) -> Result<Vec<&Profile>, ConfigError> {
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

fn join_path(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}.{path}"),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&byte| byte == b'\n')
        .count()
        + 1
}

/// Text being parsed, with what error messages need to name a position.
struct Source<'a> {
    text: &'a str,
    path: &'a Path,
    prefix: &'static str,
}

impl Source<'_> {
    fn at(&self, span: Range<usize>) -> Location {
        self.location(Some(line_of(self.text, span.start)))
    }

    fn location(&self, line: Option<usize>) -> Location {
        Location {
            path: self.path.to_owned(),
            line,
        }
    }

    /// Returns a table header such as `[profile.ci]` for messages.
    fn header(&self, path: &str) -> String {
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

    fn invalid(&self, key: &str, span: Range<usize>, reason: impl Into<String>) -> ConfigError {
        ConfigError::InvalidValue {
            at: self.at(span.clone()),
            key: key.to_owned(),
            value: self.written(span),
            reason: reason.into(),
        }
    }

    fn unknown_key(&self, key: &Key<'_>, section: &str, known: &[&'static str]) -> ConfigError {
        let name = key.get_ref().as_ref();
        ConfigError::UnknownKey {
            at: self.at(key.span()),
            key: name.to_owned(),
            section: section.to_owned(),
            known: known.to_vec(),
        }
    }

    fn expect_table<'a, 'i>(
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

fn read_config(source: &Source<'_>, root: &DeTable<'_>) -> Result<Config, ConfigError> {
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

fn check_inheritance(
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

fn read_string(
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

fn read_bool(source: &Source<'_>, key: &str, value: &Value<'_>) -> Result<bool, ConfigError> {
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

fn read_count(source: &Source<'_>, key: &str, value: &Value<'_>) -> Result<u64, ConfigError> {
    integer_value(value.get_ref())
        .and_then(|count| u64::try_from(count).ok())
        .filter(|count| *count >= 1)
        .ok_or_else(|| source.invalid(key, value.span(), COUNT_EXPECTED))
}

fn read_cpus(source: &Source<'_>, key: &str, value: &Value<'_>) -> Result<f64, ConfigError> {
    let cpus = match value.get_ref() {
        DeValue::Float(float) => float.as_str().parse::<f64>().ok(),
        // Precision loss above 2^53 CPUs does not matter for a quota.
        DeValue::Integer(_) => integer_value(value.get_ref()).map(|count| count as f64),
        _ => None,
    };
    cpus.filter(|cpus| cpus.is_finite() && *cpus > 0.0)
        .ok_or_else(|| source.invalid(key, value.span(), CPUS_EXPECTED))
}

fn read_size(source: &Source<'_>, key: &str, value: &Value<'_>) -> Result<u64, ConfigError> {
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

fn read_duration(
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
fn read_positive_duration(
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

fn read_test_pattern(source: &Source<'_>, value: &Value<'_>) -> Result<TestPattern, ConfigError> {
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

fn serialize_duration<S: Serializer>(
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

fn deserialize_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    match Option::<SizeRepr>::deserialize(deserializer)? {
        None => Ok(None),
        Some(SizeRepr::Bytes(0)) => Err(D::Error::custom(SIZE_ZERO)),
        Some(SizeRepr::Bytes(bytes)) => Ok(Some(bytes)),
        Some(SizeRepr::Text(text)) => parse_size(&text).map(Some).map_err(D::Error::custom),
    }
}

fn deserialize_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let text = Option::<String>::deserialize(deserializer)?;
    text.map(|text| parse_duration(&text))
        .transpose()
        .map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = include_str!("../tests/config/full.toml");
    const INHERITANCE: &str = include_str!("../tests/config/inheritance.toml");
    const WORKSPACE_MANIFEST: &str = include_str!("../tests/config/workspace-Cargo.toml");

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn parse(text: &str) -> Config {
        match Config::parse(text, Path::new(CONFIG_FILE)) {
            Ok(config) => config,
            Err(error) => panic!("expected a valid configuration, got: {error}"),
        }
    }

    fn parse_error(text: &str) -> String {
        match Config::parse(text, Path::new(CONFIG_FILE)) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(error) => error.to_string(),
        }
    }

    fn test_named(name: &str) -> TestIdentity<'_> {
        TestIdentity {
            package: "my-crate",
            binary: "integration",
            name,
        }
    }

    fn resolve(config: &Config, profile: &str, name: &str) -> Settings {
        match config.resolve(profile, &test_named(name)) {
            Ok(settings) => settings,
            Err(error) => panic!("expected profile `{profile}` to resolve, got: {error}"),
        }
    }

    fn assert_contains(message: &str, expected: &str) {
        assert!(
            message.contains(expected),
            "expected {expected:?} in the message:\n{message}"
        );
    }

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

    #[test]
    fn long_values_cut() {
        let long = "x".repeat(100);
        let error = parse_error(&format!("[profile.default]\nmemory = \"{long}\"\n"));
        assert_contains(&error, "xxx... for key `memory`");
        assert!(!error.contains(&long), "{error}");
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

    #[test]
    fn line_of_counts_newlines() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
        assert_eq!(line_of("a\nb\nc", 100), 3);
    }
}
