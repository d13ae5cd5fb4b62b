//! Build and discovery: builds the test binaries with cargo, lists each
//! binary's tests, and selects them with libtest's filter rules.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use cargo_metadata::{Message, Metadata, MetadataCommand, Package, TargetKind};

/// Cargo options forwarded to `cargo test --no-run`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BuildArgs {
    /// Package to test (repeatable)
    #[arg(
        short = 'p',
        long = "package",
        value_name = "SPEC",
        help_heading = "Package selection"
    )]
    pub package: Vec<String>,
    /// Test every package of the workspace
    #[arg(long, help_heading = "Package selection")]
    pub workspace: bool,
    /// Exclude a package from --workspace (repeatable)
    #[arg(long, value_name = "SPEC", help_heading = "Package selection")]
    pub exclude: Vec<String>,
    /// Test only the library
    #[arg(long, help_heading = "Target selection")]
    pub lib: bool,
    /// Test every binary target
    #[arg(long, help_heading = "Target selection")]
    pub bins: bool,
    /// Test every integration test target
    #[arg(long, help_heading = "Target selection")]
    pub tests: bool,
    /// Test only the named integration test target (repeatable)
    #[arg(long = "test", value_name = "NAME", help_heading = "Target selection")]
    pub test: Vec<String>,
    /// Features to activate, space or comma separated
    #[arg(
        short = 'F',
        long,
        value_name = "FEATURES",
        help_heading = "Feature selection"
    )]
    pub features: Vec<String>,
    /// Activate every feature
    #[arg(long, help_heading = "Feature selection")]
    pub all_features: bool,
    /// Do not activate the default feature
    #[arg(long, help_heading = "Feature selection")]
    pub no_default_features: bool,
    /// Build in release mode
    #[arg(short = 'r', long, help_heading = "Compilation options")]
    pub release: bool,
    /// Build with the named cargo profile
    #[arg(
        long = "cargo-profile",
        value_name = "NAME",
        help_heading = "Compilation options"
    )]
    pub profile: Option<String>,
    /// Directory for all generated artifacts
    #[arg(long, value_name = "DIR", help_heading = "Compilation options")]
    pub target_dir: Option<PathBuf>,
    /// Path to Cargo.toml
    #[arg(long, value_name = "PATH", help_heading = "Manifest options")]
    pub manifest_path: Option<PathBuf>,
    /// Require Cargo.lock to be up to date
    #[arg(long, help_heading = "Manifest options")]
    pub locked: bool,
    /// Run without accessing the network
    #[arg(long, help_heading = "Manifest options")]
    pub offline: bool,
    /// Require Cargo.lock and the cache to be up to date
    #[arg(long, help_heading = "Manifest options")]
    pub frozen: bool,
}

impl BuildArgs {
    fn cargo_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for p in &self.package {
            args.extend(["--package".into(), p.clone()]);
        }
        let flags = [
            (self.workspace, "--workspace"),
            (self.lib, "--lib"),
            (self.bins, "--bins"),
            (self.tests, "--tests"),
            (self.all_features, "--all-features"),
            (self.no_default_features, "--no-default-features"),
            (self.release, "--release"),
            (self.locked, "--locked"),
            (self.offline, "--offline"),
            (self.frozen, "--frozen"),
        ];
        args.extend(
            flags
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, f)| f.to_string()),
        );
        for e in &self.exclude {
            args.extend(["--exclude".into(), e.clone()]);
        }
        for t in &self.test {
            args.extend(["--test".into(), t.clone()]);
        }
        for f in &self.features {
            args.extend(["--features".into(), f.clone()]);
        }
        if let Some(p) = &self.profile {
            args.extend(["--profile".into(), p.clone()]);
        }
        if let Some(d) = &self.target_dir {
            args.extend(["--target-dir".into(), d.display().to_string()]);
        }
        if let Some(m) = &self.manifest_path {
            args.extend(["--manifest-path".into(), m.display().to_string()]);
        }
        args
    }
}

/// Errors of building and listing.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("failed to run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`cargo metadata` failed: {0}")]
    Metadata(#[from] cargo_metadata::Error),
    #[error("build failed: `cargo test --no-run` exited with {status}")]
    Build { status: std::process::ExitStatus },
    #[error(
        "failed to list the tests of {binary} ({path}): {detail}\n\
         hint: a binary with `harness = false` must accept libtest's \
         `--list --format terse` (libtest-mimic does)"
    )]
    List {
        binary: String,
        path: PathBuf,
        detail: String,
    },
}

/// One test binary built by cargo.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestBinary {
    /// `package` for a library, `package::name` for an integration test,
    /// `package::bin/name` for a binary, as nextest names them.
    pub id: String,
    pub package: String,
    /// The cargo target's name.
    pub target: String,
    pub kind: String,
    pub path: PathBuf,
    /// The package root, where the test runs.
    pub cwd: PathBuf,
    /// The environment cargo gives the test process at run time.
    pub env: BTreeMap<String, OsString>,
    /// False for a target with `harness = false` in its manifest.
    pub harness: bool,
}

/// One test of one binary.
#[derive(Debug, Clone)]
pub struct TestCase {
    pub binary: Arc<TestBinary>,
    pub name: String,
    pub ignored: bool,
    /// False when a filter deselects it or when it is ignored and ignored
    /// tests are not run.
    pub run: bool,
    /// A `harness = false` binary that does not list its tests: the whole
    /// binary runs as this one test, with no arguments.
    pub whole_binary: bool,
}

impl TestCase {
    /// Returns the test's display name: `binary-id test::name`.
    pub fn full_name(&self) -> String {
        format!("{} {}", self.binary.id, self.name)
    }
}

/// The test binaries cargo built, and the workspace and target directory.
#[derive(Debug)]
pub struct Build {
    pub binaries: Vec<TestBinary>,
    pub workspace_root: PathBuf,
    pub target_dir: PathBuf,
}

/// Returns the cargo to run: `CARGO` when cargo started the runner, else
/// the toolchain's own cargo, which skips rustup's proxy (about 10 ms per
/// call), else `cargo` from PATH.
fn cargo_program() -> OsString {
    if let Some(cargo) = std::env::var_os("CARGO") {
        return cargo;
    }
    match &Toolchain::current().sysroot {
        Some(sysroot) if sysroot.join("bin/cargo").is_file() => sysroot.join("bin/cargo").into(),
        _ => "cargo".into(),
    }
}

/// Reads the workspace's metadata with the manifest options of `args`.
pub fn workspace_metadata(args: &BuildArgs) -> Result<Metadata, PlanError> {
    let mut metadata_command = MetadataCommand::new();
    metadata_command.cargo_path(cargo_program()).no_deps();
    if let Some(m) = &args.manifest_path {
        metadata_command.manifest_path(m);
    }
    let flags = [
        (args.locked, "--locked"),
        (args.offline, "--offline"),
        (args.frozen, "--frozen"),
    ];
    let other: Vec<String> = flags
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, f)| f.to_string())
        .collect();
    metadata_command.other_options(other);
    Ok(metadata_command.exec()?)
}

/// The pid of the running `cargo test --no-run`, or 0.
static BUILD_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Forwards a termination signal to the cargo build and its children, if
/// a build runs.
pub fn stop_build(signal: i32) {
    let pid = BUILD_PID.load(std::sync::atomic::Ordering::SeqCst);
    if pid > 0 {
        if let Ok(signal) = nix::sys::signal::Signal::try_from(signal) {
            // The pid stays ours until `build` reaps it and clears BUILD_PID.
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal);
        }
    }
}

/// Builds the test binaries and reads them from cargo's messages.
pub fn build(args: &BuildArgs, metadata: Metadata) -> Result<Build, PlanError> {
    let target_dir = match &args.target_dir {
        Some(d) => std::path::absolute(d).unwrap_or_else(|_| d.clone()),
        None => metadata.target_directory.clone().into_std_path_buf(),
    };
    // `..` in a path would defeat the prefix checks that decide which host
    // directories the container must bind back in.
    let target_dir = target_dir.canonicalize().unwrap_or(target_dir);

    let mut command = Command::new(cargo_program());
    command
        .args([
            "test",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .args(args.cargo_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // The runner blocks SIGINT and SIGTERM; cargo must not inherit that.
    // A process group of its own lets the runner stop cargo together with
    // its rustc and build-script children. NOTE: with `stty tostop` the
    // kernel stops a background group that writes to the terminal.
    crate::container::unblock_signals_at_exec(&mut command);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().map_err(|source| PlanError::Spawn {
        command: "cargo test --no-run".into(),
        source,
    })?;
    BUILD_PID.store(child.id() as i32, std::sync::atomic::Ordering::SeqCst);
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut tests = Vec::new();
    let mut bins_by_package: HashMap<String, Vec<(String, PathBuf)>> = HashMap::new();
    for message in Message::parse_stream(BufReader::new(stdout)).flatten() {
        let Message::CompilerArtifact(artifact) = message else {
            continue;
        };
        let Some(executable) = artifact.executable.clone() else {
            continue;
        };
        if artifact.profile.test {
            tests.push(artifact);
        } else if artifact.target.kind.contains(&TargetKind::Bin) {
            bins_by_package
                .entry(artifact.package_id.repr.clone())
                .or_default()
                .push((artifact.target.name.clone(), executable.into_std_path_buf()));
        }
    }
    let status = child.wait().map_err(|source| PlanError::Spawn {
        command: "cargo test --no-run".into(),
        source,
    });
    BUILD_PID.store(0, std::sync::atomic::Ordering::SeqCst);
    let status = status?;
    if !status.success() {
        return Err(PlanError::Build { status });
    }

    let toolchain = Toolchain::current();
    let mut binaries = Vec::new();
    for artifact in tests {
        let Some(package) = metadata
            .packages
            .iter()
            .find(|p| p.id == artifact.package_id)
        else {
            continue;
        };
        let kind = artifact
            .target
            .kind
            .first()
            .map(|k| k.to_string())
            .unwrap_or_default();
        let id = binary_id(&package.name, &artifact.target.name, &kind);
        let path = artifact
            .executable
            .clone()
            .expect("filtered above")
            .into_std_path_buf();
        let bins = bins_by_package
            .get(&artifact.package_id.repr)
            .cloned()
            .unwrap_or_default();
        let env = runtime_env(
            package,
            &artifact.target.name,
            &path,
            &bins,
            &target_dir,
            toolchain,
        );
        let cwd = package
            .manifest_path
            .parent()
            .expect("manifest has a directory")
            .as_std_path()
            .to_path_buf();
        let harness = !no_harness_targets(package).contains(&artifact.target.name);
        binaries.push(TestBinary {
            id,
            package: package.name.to_string(),
            target: artifact.target.name.clone(),
            kind,
            path,
            cwd,
            env,
            harness,
        });
    }
    for binary in &mut binaries {
        if let Ok(path) = binary.path.canonicalize() {
            binary.path = path;
        }
    }
    binaries.sort_by(|a, b| a.id.cmp(&b.id));
    binaries.dedup_by(|a, b| a.path == b.path);
    Ok(Build {
        binaries,
        workspace_root: metadata.workspace_root.into_std_path_buf(),
        target_dir,
    })
}

/// Returns the names of the package's targets with `harness = false`.
/// cargo's metadata leaves the flag out, so it comes from the manifest: a
/// `[lib]` table is named after the package unless it sets `name`.
fn no_harness_targets(package: &Package) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(&package.manifest_path) else {
        return Vec::new();
    };
    let Ok(manifest) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let mut names = Vec::new();
    let no_harness = |t: &toml::Value| t.get("harness").and_then(|h| h.as_bool()) == Some(false);
    if let Some(lib) = manifest.get("lib").filter(|l| no_harness(l)) {
        let name = lib.get("name").and_then(|n| n.as_str()).map(str::to_string);
        names.push(name.unwrap_or_else(|| package.name.replace('-', "_")));
    }
    for section in ["bin", "test", "bench", "example"] {
        let Some(targets) = manifest.get(section).and_then(|t| t.as_array()) else {
            continue;
        };
        for target in targets.iter().filter(|t| no_harness(t)) {
            if let Some(name) = target.get("name").and_then(|n| n.as_str()) {
                names.push(name.to_string());
            }
        }
    }
    names
}

fn binary_id(package: &str, target: &str, kind: &str) -> String {
    match kind {
        "lib" | "rlib" | "dylib" | "cdylib" | "staticlib" | "proc-macro" => package.to_string(),
        "test" => format!("{package}::{target}"),
        other => format!("{package}::{other}/{target}"),
    }
}

/// The toolchain the tests were built with, so nested cargo and rustc
/// calls inside a container use the same one.
#[derive(Debug, Clone, Default)]
pub struct Toolchain {
    pub sysroot: Option<PathBuf>,
    pub rustup_home: Option<PathBuf>,
    pub cargo_home: Option<PathBuf>,
    pub name: Option<String>,
}

impl Toolchain {
    /// Returns the toolchain of this run, detected once.
    pub fn current() -> &'static Toolchain {
        static CURRENT: std::sync::OnceLock<Toolchain> = std::sync::OnceLock::new();
        CURRENT.get_or_init(Toolchain::detect)
    }

    /// Resolves the toolchain from the environment and the sysroot: the
    /// directory above `CARGO` when cargo started the runner from a
    /// toolchain, else what `rustc --print sysroot` prints.
    pub fn detect() -> Toolchain {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let from_env_or_home = |var: &str, dir: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(dir)).filter(|p| p.is_dir()))
        };
        let rustup_home = from_env_or_home("RUSTUP_HOME", ".rustup");
        let cargo_home = from_env_or_home("CARGO_HOME", ".cargo");
        let from_cargo = std::env::var_os("CARGO")
            .map(PathBuf::from)
            .and_then(|cargo| Some(cargo.parent()?.parent()?.to_path_buf()))
            .filter(|root| root.join("lib/rustlib").is_dir());
        let sysroot = from_cargo.or_else(|| {
            let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
            Command::new(rustc)
                .args(["--print", "sysroot"])
                .stderr(Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        });
        let name = std::env::var("RUSTUP_TOOLCHAIN").ok().or_else(|| {
            let sysroot = sysroot.as_ref()?;
            let toolchains = rustup_home.as_ref()?.join("toolchains");
            sysroot
                .strip_prefix(&toolchains)
                .ok()?
                .to_str()
                .map(str::to_string)
        });
        Toolchain {
            sysroot,
            rustup_home,
            cargo_home,
            name,
        }
    }
}

/// Builds the environment `cargo test` gives a test at run time.
fn runtime_env(
    package: &Package,
    target: &str,
    binary: &Path,
    bins: &[(String, PathBuf)],
    target_dir: &Path,
    toolchain: &Toolchain,
) -> BTreeMap<String, OsString> {
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: OsString| {
        env.insert(k.to_string(), v);
    };
    let manifest_dir = package
        .manifest_path
        .parent()
        .expect("manifest has a directory");
    set("CARGO", cargo_program());
    set("CARGO_MANIFEST_DIR", manifest_dir.as_os_str().into());
    set(
        "CARGO_MANIFEST_PATH",
        package.manifest_path.as_os_str().into(),
    );
    set("CARGO_PKG_NAME", package.name.to_string().into());
    set("CARGO_CRATE_NAME", target.replace('-', "_").into());
    let version = &package.version;
    set("CARGO_PKG_VERSION", version.to_string().into());
    set("CARGO_PKG_VERSION_MAJOR", version.major.to_string().into());
    set("CARGO_PKG_VERSION_MINOR", version.minor.to_string().into());
    set("CARGO_PKG_VERSION_PATCH", version.patch.to_string().into());
    set("CARGO_PKG_VERSION_PRE", version.pre.to_string().into());
    set("CARGO_PKG_AUTHORS", package.authors.join(":").into());
    let optional = |v: &Option<String>| OsString::from(v.clone().unwrap_or_default());
    set("CARGO_PKG_DESCRIPTION", optional(&package.description));
    set("CARGO_PKG_HOMEPAGE", optional(&package.homepage));
    set("CARGO_PKG_REPOSITORY", optional(&package.repository));
    set("CARGO_PKG_LICENSE", optional(&package.license));
    set(
        "CARGO_PKG_LICENSE_FILE",
        package
            .license_file
            .as_ref()
            .map(|p| p.as_os_str().into())
            .unwrap_or_default(),
    );
    set(
        "CARGO_PKG_RUST_VERSION",
        package
            .rust_version
            .as_ref()
            .map(|v| v.to_string().into())
            .unwrap_or_default(),
    );
    set(
        "CARGO_PKG_README",
        package
            .readme
            .as_ref()
            .map(|p| p.as_os_str().into())
            .unwrap_or_default(),
    );
    set("CARGO_TARGET_TMPDIR", target_dir.join("tmp").into());
    for (name, path) in bins {
        set(&format!("CARGO_BIN_EXE_{name}"), path.into());
    }
    let mut library_path = Vec::new();
    if let Some(dir) = binary.parent() {
        library_path.push(dir.to_path_buf());
    }
    if let Some(sysroot) = &toolchain.sysroot {
        library_path.push(sysroot.join("lib"));
    }
    if let Some(existing) = std::env::var_os("LD_LIBRARY_PATH") {
        library_path.extend(std::env::split_paths(&existing));
    }
    if let Ok(joined) = std::env::join_paths(library_path) {
        set("LD_LIBRARY_PATH", joined);
    }
    if let Some(p) = &toolchain.rustup_home {
        set("RUSTUP_HOME", p.into());
    }
    if let Some(p) = &toolchain.cargo_home {
        set("CARGO_HOME", p.into());
    }
    if let Some(name) = &toolchain.name {
        set("RUSTUP_TOOLCHAIN", name.into());
    }
    env
}

/// libtest's test selection.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub patterns: Vec<String>,
    pub skip: Vec<String>,
    pub exact: bool,
    /// Run only ignored tests.
    pub ignored: bool,
    /// Run ignored and not ignored tests.
    pub include_ignored: bool,
}

impl Filter {
    fn matches(&self, pattern: &str, name: &str) -> bool {
        if self.exact {
            pattern == name
        } else {
            name.contains(pattern)
        }
    }

    /// Returns whether a test is selected by name.
    pub fn selects(&self, name: &str) -> bool {
        let wanted =
            self.patterns.is_empty() || self.patterns.iter().any(|p| self.matches(p, name));
        wanted && !self.skip.iter().any(|s| self.matches(s, name))
    }

    /// Returns whether a selected test runs, given whether it is ignored.
    pub fn runs(&self, ignored: bool) -> bool {
        if self.include_ignored {
            true
        } else if self.ignored {
            ignored
        } else {
            !ignored
        }
    }
}

/// The output of a listing command: its exit code (`None` when a signal
/// ended it), stdout and stderr.
pub struct ListOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a test binary with the given arguments and returns its output.
/// The runner passes one that runs the binary in a container, because a
/// `harness = false` binary runs its own `main` whatever the arguments.
pub type Lister<'a> = dyn Fn(&TestBinary, &[&str]) -> Result<ListOutput, String> + Sync + 'a;

/// Lists the tests of every binary, `jobs` binaries at a time, and applies
/// the filter. Tests a filter deselects are left out; ignored tests that
/// do not run are kept with `run: false`, so they are reported as ignored.
pub fn list(
    binaries: Vec<TestBinary>,
    filter: &Filter,
    jobs: usize,
    lister: &Lister,
) -> Result<Vec<TestCase>, PlanError> {
    let binaries: Vec<Arc<TestBinary>> = binaries.into_iter().map(Arc::new).collect();
    let mut listed: Vec<Result<Vec<TestCase>, PlanError>> = Vec::new();
    for chunk in binaries.chunks(jobs.max(1)) {
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|b| scope.spawn(|| list_binary(b, lister)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("listing thread panicked"))
                .collect()
        });
        listed.extend(results);
    }
    let mut tests = Vec::new();
    for result in listed {
        for mut test in result? {
            if !filter.selects(&test.name) {
                continue;
            }
            // With --ignored, libtest filters the other tests out rather
            // than reporting them as ignored.
            if filter.ignored && !test.ignored {
                continue;
            }
            test.run = filter.runs(test.ignored);
            tests.push(test);
        }
    }
    Ok(tests)
}

fn list_binary(binary: &Arc<TestBinary>, lister: &Lister) -> Result<Vec<TestCase>, PlanError> {
    let test = |name: String, ignored: bool, whole_binary: bool| TestCase {
        binary: Arc::clone(binary),
        name,
        ignored,
        run: true,
        whole_binary,
    };
    // Both listings at once: each runs in a container of its own.
    let (all, ignored) = std::thread::scope(|scope| {
        let ignored = scope.spawn(|| run_list(binary, true, lister));
        (
            run_list(binary, false, lister),
            ignored.join().expect("listing thread panicked"),
        )
    });
    if !binary.harness {
        // A custom harness that prints libtest's listing format (as
        // libtest-mimic does) gets its tests run one by one. Any other
        // runs as a single test, the way `cargo test` runs it.
        return match all {
            Ok(Some(names)) if !names.is_empty() => {
                let ignored = ignored?.unwrap_or_default();
                Ok(names
                    .into_iter()
                    .map(|n| {
                        let i = ignored.contains(&n);
                        test(n, i, false)
                    })
                    .collect())
            }
            _ => Ok(vec![test(binary.target.clone(), false, true)]),
        };
    }
    let Some(all) = all? else {
        return Err(PlanError::List {
            binary: binary.id.clone(),
            path: binary.path.clone(),
            detail: "its `--list --format terse` output is not in libtest's format; a custom \
                     harness must print `NAME: test` lines, as libtest-mimic does, or set \
                     `harness = false` in Cargo.toml to run as one test"
                .into(),
        });
    };
    let ignored = ignored?.unwrap_or_default();
    Ok(all
        .into_iter()
        .map(|name| {
            let i = ignored.contains(&name);
            test(name, i, false)
        })
        .collect())
}

/// Runs `BINARY --list --format terse [--ignored]` and parses
/// `name: test` lines. Returns `None` when the output has lines in another
/// format, as a binary that ignores its arguments prints.
fn run_list(
    binary: &TestBinary,
    ignored: bool,
    lister: &Lister,
) -> Result<Option<Vec<String>>, PlanError> {
    let mut args = vec!["--list", "--format", "terse"];
    if ignored {
        args.push("--ignored");
    }
    let error = |detail: String| PlanError::List {
        binary: binary.id.clone(),
        path: binary.path.clone(),
        detail,
    };
    let output = lister(binary, &args).map_err(error)?;
    if output.code != Some(0) {
        let mut detail = match output.code {
            Some(code) => format!("exited with code {code}"),
            None => "was killed by a signal".into(),
        };
        if !output.stderr.trim().is_empty() {
            detail.push_str(": ");
            detail.push_str(output.stderr.trim());
        }
        return Err(error(detail));
    }
    let mut names = Vec::new();
    for line in output.stdout.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(name) = line.strip_suffix(": test") {
            names.push(name.to_string());
        } else if line.ends_with(": benchmark") {
            // Benchmarks are not run by `cargo test` either.
        } else {
            return Ok(None);
        }
    }
    Ok(Some(names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_substring_and_skip() {
        let filter = Filter {
            patterns: vec!["net".into()],
            skip: vec!["slow".into()],
            ..Filter::default()
        };
        assert!(filter.selects("net::bind"));
        assert!(!filter.selects("net::slow_bind"));
        assert!(!filter.selects("fs::write"));
    }

    #[test]
    fn filter_exact_matches_whole_name() {
        let filter = Filter {
            patterns: vec!["net".into()],
            exact: true,
            ..Filter::default()
        };
        assert!(filter.selects("net"));
        assert!(!filter.selects("net::bind"));
    }

    #[test]
    fn filter_ignored_modes() {
        let default = Filter::default();
        assert!(default.runs(false));
        assert!(!default.runs(true));
        let only = Filter {
            ignored: true,
            ..Filter::default()
        };
        assert!(!only.runs(false));
        assert!(only.runs(true));
        let both = Filter {
            include_ignored: true,
            ..Filter::default()
        };
        assert!(both.runs(false));
        assert!(both.runs(true));
    }

    #[test]
    fn binary_ids_follow_nextest() {
        assert_eq!(binary_id("pkg", "pkg", "lib"), "pkg");
        assert_eq!(binary_id("pkg", "net", "test"), "pkg::net");
        assert_eq!(binary_id("pkg", "tool", "bin"), "pkg::bin/tool");
    }
}
