//! Toolchain checks: `cargo` and `rustc` found the way the runner starts
//! them, the sysroot, and the `RUSTUP_HOME` and `CARGO_HOME` directories.

use std::path::{Path, PathBuf};

use crate::plan::Toolchain;

use super::Check;

/// A program found through its environment variable or PATH.
#[derive(Debug, Clone, PartialEq)]
struct Found {
    path: PathBuf,
    /// `CARGO`, `RUSTC` or `PATH`.
    source: String,
}

/// Toolchain facts read from the environment.
#[derive(Debug, Clone)]
pub(super) struct ToolchainFacts {
    /// The program, or why it was not found.
    cargo: Result<Found, String>,
    rustc: Result<Found, String>,
    pub(super) toolchain: Toolchain,
    rustup_home_from_env: bool,
    cargo_home_from_env: bool,
    rustup_home_is_dir: bool,
    cargo_home_is_dir: bool,
}

impl ToolchainFacts {
    pub(super) fn detect() -> ToolchainFacts {
        let toolchain = Toolchain::detect();
        let is_dir = |dir: &Option<PathBuf>| dir.as_ref().is_some_and(|d| d.is_dir());
        ToolchainFacts {
            cargo: find_program("CARGO", "cargo"),
            rustc: find_program("RUSTC", "rustc"),
            rustup_home_from_env: std::env::var_os("RUSTUP_HOME").is_some(),
            cargo_home_from_env: std::env::var_os("CARGO_HOME").is_some(),
            rustup_home_is_dir: is_dir(&toolchain.rustup_home),
            cargo_home_is_dir: is_dir(&toolchain.cargo_home),
            toolchain,
        }
    }
}

/// Finds a program the way the runner starts it: the path in `variable`
/// if set, else `name` in PATH.
fn find_program(variable: &str, name: &str) -> Result<Found, String> {
    if let Some(value) = std::env::var_os(variable) {
        let path = PathBuf::from(&value);
        if path.components().count() > 1 {
            if is_executable(&path) {
                return Ok(Found {
                    path,
                    source: variable.into(),
                });
            }
            return Err(format!(
                "{variable}={} is not an executable file",
                path.display()
            ));
        }
        // A bare name such as CARGO=cargo is looked up in PATH, as
        // `Command` does.
        return search_path(&path)
            .ok_or_else(|| format!("{variable}={} not found in PATH", path.display()));
    }
    search_path(Path::new(name))
        .ok_or_else(|| format!("not found: {variable} is unset and PATH has no `{name}`"))
}

fn search_path(name: &Path) -> Option<Found> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .map(|path| Found {
            path,
            source: "PATH".into(),
        })
}

fn is_executable(path: &Path) -> bool {
    path.is_file() && nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok()
}

const TOOLCHAIN_FIX: &str = "install Rust with rustup (https://rustup.rs), or put the \
     toolchain's bin directory in PATH";
const TOOLCHAIN_HOME_FIX: &str = "set RUSTUP_HOME and CARGO_HOME to the toolchain's directories";

pub(super) fn toolchain_checks(facts: &ToolchainFacts) -> Vec<Check> {
    let cargo = match &facts.cargo {
        Ok(found) => Check::ok(
            "toolchain.cargo",
            format!("{} (from {})", found.path.display(), found.source),
        ),
        Err(why) => Check::missing("toolchain.cargo", why, TOOLCHAIN_FIX),
    };
    let rustc = match (&facts.rustc, &facts.toolchain.sysroot) {
        (Ok(found), Some(sysroot)) => {
            let mut detail = format!(
                "{} (from {}); sysroot {}",
                found.path.display(),
                found.source,
                sysroot.display()
            );
            if let Some(name) = &facts.toolchain.name {
                detail.push_str(&format!("; toolchain {name}"));
            }
            Check::ok("toolchain.rustc", detail)
        }
        (Ok(found), None) => Check::missing(
            "toolchain.rustc",
            format!(
                "{} found, but `rustc --print sysroot` failed",
                found.path.display()
            ),
            "check that the toolchain is installed: `rustup show`",
        ),
        (Err(why), _) => Check::missing("toolchain.rustc", why, TOOLCHAIN_FIX),
    };
    let home = |name: &'static str,
                variable: &str,
                default: &str,
                dir: &Option<PathBuf>,
                from_env: bool,
                is_dir: bool| {
        let effect =
            "tests that run cargo or rustc see only toolchains outside /root, /home, /run and /tmp";
        let source = if from_env {
            variable.to_string()
        } else {
            format!("$HOME/{default}")
        };
        match dir {
            Some(dir) if is_dir => Check::ok(name, format!("{} (from {source})", dir.display())),
            Some(dir) => Check::degraded(
                name,
                format!(
                    "{} (from {source}) is not a directory this user can read; {effect}",
                    dir.display()
                ),
                TOOLCHAIN_HOME_FIX,
            ),
            None => Check::degraded(
                name,
                format!("{variable} is unset and $HOME/{default} does not exist; {effect}"),
                TOOLCHAIN_HOME_FIX,
            ),
        }
    };
    vec![
        cargo,
        rustc,
        home(
            "toolchain.rustup-home",
            "RUSTUP_HOME",
            ".rustup",
            &facts.toolchain.rustup_home,
            facts.rustup_home_from_env,
            facts.rustup_home_is_dir,
        ),
        home(
            "toolchain.cargo-home",
            "CARGO_HOME",
            ".cargo",
            &facts.toolchain.cargo_home,
            facts.cargo_home_from_env,
            facts.cargo_home_is_dir,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::test_support::*;
    use crate::doctor::Status;

    #[test]
    fn missing_cargo_is_missing() {
        let facts = ToolchainFacts {
            cargo: Err("not found: CARGO is unset and PATH has no `cargo`".into()),
            rustc: Err("not found: RUSTC is unset and PATH has no `rustc`".into()),
            toolchain: Toolchain::default(),
            rustup_home_from_env: false,
            cargo_home_from_env: false,
            rustup_home_is_dir: false,
            cargo_home_is_dir: false,
        };
        let checks = toolchain_checks(&facts);
        assert_eq!(status_of(&checks, "toolchain.cargo"), Status::Missing);
        assert_eq!(status_of(&checks, "toolchain.rustc"), Status::Missing);
        let home = find(&checks, "toolchain.rustup-home");
        assert_eq!(home.status, Status::Degraded);
        assert!(
            home.detail
                .starts_with("RUSTUP_HOME is unset and $HOME/.rustup does not exist"),
            "{}",
            home.detail
        );
    }
}
