"""The timed commands: how each is spelled for a crate, whether its tool is
installed, how one run is timed, and how its output is checked."""

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .crates import Crate

# Tests run at once, for every command.
JOBS = 2

BWRAP_INSTALL_HINT = "install it with `apt-get install bubblewrap` (Debian and Ubuntu) or `dnf install bubblewrap` (Fedora)"
NEXTEST_INSTALL_HINT = "install it with `cargo install cargo-nextest --locked`"


@dataclass
class RunReport:
    """Counts and measures read from a finished run's output."""

    passed: int
    # The runner's own peak RSS (VmHWM) in bytes, from its run-finished
    # event; None for other commands and for runners that do not report it.
    runner_peak_rss: int | None = None


@dataclass
class Command:
    """One way of running a crate's tests."""

    key: str
    label: str
    argv: list[str]
    cwd: Path
    parse_output: Callable[[str, str], RunReport]
    env: dict[str, str] = field(default_factory=dict)
    # Why the command cannot run on this machine, or None.
    unavailable: str | None = None
    # A runner flag that may not exist yet. If the runner rejects it, the
    # command is reported as not available rather than as failed.
    new_flag: str | None = None


@dataclass
class Timing:
    """One timed run: wall seconds and where its output went."""

    seconds: float
    returncode: int
    stdout_path: Path
    stderr_path: Path


class CommandFailed(Exception):
    """A run exited non-zero or did not pass every test."""


class FlagRejected(Exception):
    """The runner rejected a flag it does not have yet."""


@dataclass
class Tools:
    """Availability of the optional tools on this machine, with the reason
    for each missing one."""

    nextest_missing: str | None
    bwrap_missing: str | None
    host_triple: str


def detect_tools() -> Tools:
    return Tools(
        nextest_missing=detect_nextest(),
        bwrap_missing=detect_bwrap(),
        host_triple=host_triple(),
    )


def detect_nextest() -> str | None:
    """Return None if `cargo nextest` runs, else why not."""
    if shutil.which("cargo-nextest") is None:
        return f"cargo-nextest is not installed; {NEXTEST_INSTALL_HINT}"
    result = subprocess.run(
        ["cargo", "nextest", "--version"], capture_output=True, text=True
    )
    if result.returncode != 0:
        return f"`cargo nextest --version` failed with exit code {result.returncode}: {result.stderr.strip()}"
    return None


def detect_bwrap() -> str | None:
    """Return None if bwrap can create the namespaces the wrapper requests,
    else why not."""
    if shutil.which("bwrap") is None:
        return f"bwrap is not installed; {BWRAP_INSTALL_HINT}"
    smoke_test = [
        "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "true",
    ]
    result = subprocess.run(smoke_test, capture_output=True, text=True)
    if result.returncode != 0:
        return f"`{' '.join(smoke_test)}` failed with exit code {result.returncode}: {result.stderr.strip()}"
    return None


def host_triple() -> str:
    output = subprocess.run(
        ["rustc", "-vV"], capture_output=True, text=True, check=True
    ).stdout
    for line in output.splitlines():
        if line.startswith("host: "):
            return line.removeprefix("host: ").strip()
    raise RuntimeError(f"`rustc -vV` printed no `host:` line:\n{output}")


def target_runner_variable(triple: str) -> str:
    """Name the environment variable that sets cargo's target runner, which
    nextest also reads, for example CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER."""
    return (
        "CARGO_TARGET_" + triple.upper().replace("-", "_").replace(".", "_") + "_RUNNER"
    )


def bwrap_wrapper(crate: Crate) -> list[str]:
    """Build the bwrap command line that wraps each test process.

    --unshare-all gives each test new IPC, PID, network (with its own
    loopback), UTS and mount namespaces, and user and cgroup namespaces where
    the kernel allows (bwrap(1), bubblewrap 0.8.0). Like the runner's
    containers, the wrapper hides /tmp, /run, /home and /root behind empty
    tmpfs mounts, and binds the crate and its target dir back read-only.
    Unlike the runner, bwrap sets no cgroup caps and gives no copy-on-write
    root.
    """
    wrapper = [
        "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
    ]
    for hidden in ["/tmp", "/run", "/home", "/root"]:
        wrapper += ["--tmpfs", hidden]
    bound = [crate.directory.resolve()]
    target = crate.target_dir.resolve()
    if not target.is_relative_to(bound[0]):
        bound.append(target)
    for path in bound:
        wrapper += ["--ro-bind", str(path), str(path)]
    return wrapper + ["--"]


def whitespace_in_paths(wrapper: list[str]) -> str | None:
    """Return why the wrapper cannot go into the target runner variable, or
    None. Cargo and nextest split that variable's value on whitespace, so a
    path with a space in it would be cut in two."""
    for word in wrapper:
        if any(character.isspace() for character in word):
            return f"the path {word!r} contains whitespace, which the target runner variable cannot carry"
    return None


def commands_for(crate: Crate, runner: Path, tools: Tools) -> list[Command]:
    """List every command for `crate`, in the order each round runs them."""
    target_dir = str(crate.target_dir)
    cargo_test = Command(
        key="cargo-test",
        label="cargo test",
        argv=[
            "cargo",
            "test",
            "--target-dir",
            target_dir,
            "--",
            "--test-threads",
            str(JOBS),
        ],
        cwd=crate.directory,
        parse_output=parse_cargo_test,
    )
    nextest = Command(
        key="nextest",
        label="cargo nextest run",
        argv=[
            "cargo",
            "nextest",
            "run",
            "--target-dir",
            target_dir,
            "--test-threads",
            str(JOBS),
        ],
        cwd=crate.directory,
        parse_output=parse_nextest,
        unavailable=tools.nextest_missing,
    )
    wrapper = bwrap_wrapper(crate)
    nextest_bwrap = Command(
        key="nextest-bwrap",
        label="cargo nextest run + bwrap",
        argv=list(nextest.argv),
        cwd=crate.directory,
        parse_output=parse_nextest,
        env={target_runner_variable(tools.host_triple): " ".join(wrapper)},
        unavailable=tools.nextest_missing
        or tools.bwrap_missing
        or whitespace_in_paths(wrapper),
    )
    runner_argv = [
        str(runner),
        "--manifest-path",
        str(crate.manifest),
        "--target-dir",
        target_dir,
        "-j",
        str(JOBS),
        "--message-format",
        "json",
    ]
    per_test = Command(
        key="runner",
        label="cargo-sandbox-test",
        argv=runner_argv,
        cwd=crate.directory,
        parse_output=parse_runner_events,
    )
    per_binary = Command(
        key="runner-per-binary",
        label="cargo-sandbox-test --per-binary",
        argv=runner_argv + ["--per-binary"],
        cwd=crate.directory,
        parse_output=parse_runner_events,
        new_flag="--per-binary",
    )
    return [cargo_test, nextest, nextest_bwrap, per_test, per_binary]


def command_environment(command: Command) -> dict[str, str]:
    env = dict(os.environ)
    env["CARGO_TERM_COLOR"] = "never"
    # The crates name their target dir with --target-dir; an inherited
    # CARGO_TARGET_DIR must not point a tool elsewhere.
    env.pop("CARGO_TARGET_DIR", None)
    env.update(command.env)
    return env


def time_run(command: Command, log_dir: Path, log_name: str) -> Timing:
    """Run the command once with its output in files, and time it with
    time.perf_counter() around subprocess.run."""
    stdout_path = log_dir / f"{log_name}.stdout"
    stderr_path = log_dir / f"{log_name}.stderr"
    env = command_environment(command)
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        start = time.perf_counter()
        result = subprocess.run(
            command.argv,
            cwd=command.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
        seconds = time.perf_counter() - start
    return Timing(
        seconds=seconds,
        returncode=result.returncode,
        stdout_path=stdout_path,
        stderr_path=stderr_path,
    )


def check_run(command: Command, crate: Crate, timing: Timing) -> RunReport:
    """Check that the run exited 0 and passed every test of the crate.

    Raises FlagRejected if the runner does not know `command.new_flag`, and
    CommandFailed for any other failure.
    """
    stdout = timing.stdout_path.read_text(errors="replace")
    stderr = timing.stderr_path.read_text(errors="replace")
    if timing.returncode != 0:
        if (
            command.new_flag is not None
            and timing.returncode == 2
            and command.new_flag in stderr
        ):
            raise FlagRejected(
                f"the runner rejected {command.new_flag}: {first_error_line(stderr)}"
            )
        raise CommandFailed(
            failure_message(
                command, timing, f"exited with code {timing.returncode}", stderr
            )
        )
    try:
        report = command.parse_output(stdout, stderr)
    except ValueError as error:
        raise CommandFailed(
            failure_message(command, timing, str(error), stderr)
        ) from error
    if report.passed != crate.tests:
        reason = f"passed {report.passed} tests, expected {crate.tests}"
        raise CommandFailed(failure_message(command, timing, reason, stderr))
    return report


def first_error_line(stderr: str) -> str:
    for line in stderr.splitlines():
        if line.startswith("error"):
            return line.strip()
    return stderr.strip().splitlines()[0] if stderr.strip() else "(no output on stderr)"


def failure_message(command: Command, timing: Timing, reason: str, stderr: str) -> str:
    tail = "\n".join("    " + line for line in stderr.splitlines()[-15:])
    return (
        f"{command.label} {reason}\n"
        f"  command: {' '.join(command.argv)}\n"
        f"  in: {command.cwd}\n"
        f"  output: {timing.stdout_path} and {timing.stderr_path}\n"
        f"  last lines of stderr:\n{tail}"
    )


CARGO_TEST_RESULT = re.compile(
    r"^test result: \w+\. (\d+) passed; (\d+) failed", re.MULTILINE
)
NEXTEST_SUMMARY = re.compile(r"Summary \[.*?\] +(\d+) tests? run: (\d+) passed")


def parse_cargo_test(stdout: str, stderr: str) -> RunReport:
    """Sum the passed counts of libtest's `test result:` lines, one line per
    test binary."""
    results = CARGO_TEST_RESULT.findall(stdout)
    if not results:
        raise ValueError("printed no `test result:` line")
    return RunReport(passed=sum(int(passed) for passed, _failed in results))


def parse_nextest(stdout: str, stderr: str) -> RunReport:
    match = NEXTEST_SUMMARY.search(stderr)
    if match is None:
        raise ValueError("printed no `Summary [...] N tests run: N passed` line")
    return RunReport(passed=int(match.group(2)))


def parse_runner_events(stdout: str, stderr: str) -> RunReport:
    """Read the run-finished event of `--message-format json`."""
    finished = None
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event.get("event") == "run-finished":
            finished = event
    if finished is None:
        raise ValueError("printed no run-finished event")
    return RunReport(
        passed=finished["summary"]["passed"],
        runner_peak_rss=finished.get("runner_peak_rss"),
    )


def sample_peak_rss(
    command: Command, log_dir: Path, log_name: str, interval: float = 0.01
) -> int | None:
    """Run the command once, untimed, reading its VmHWM from /proc every
    `interval` seconds. Returns the last value read, in bytes.

    The value is a lower bound of the peak: VmHWM only grows, so the last
    read misses only growth in the final interval before the process exits.
    It measures the runner process alone, where getrusage's ru_maxrss would
    also take in the cargo build the runner waits for.
    """
    env = command_environment(command)
    stdout_path = log_dir / f"{log_name}.stdout"
    stderr_path = log_dir / f"{log_name}.stderr"
    peak = None
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            command.argv,
            cwd=command.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
        status_path = Path(f"/proc/{process.pid}/status")
        # poll() reaps the process only after its last read here, so the
        # pid cannot have been reused by another process when it is read.
        while process.poll() is None:
            value = read_vm_hwm(status_path)
            if value is not None:
                peak = value
            time.sleep(interval)
    if process.returncode != 0:
        return None
    return peak


def read_vm_hwm(status_path: Path) -> int | None:
    """Return VmHWM in bytes, or None once the process is gone or a
    zombie (whose status has no memory lines)."""
    try:
        text = status_path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            kibibytes = int(line.split()[1])
            return kibibytes * 1024
    return None
