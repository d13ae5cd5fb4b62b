"""A check that each command runs tests in the PID namespace it claims:
the host's for cargo test and plain nextest, a private one for bwrap and
the runner. Without it, a wrapper that silently did not apply would make
nextest + bwrap look as cheap as plain nextest."""

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .commands import Command, time_run

# The fixture test that prints "pid-namespace: pid:[INODE]".
PROBE_TEST = "pid_namespace_report"
PROBE_LINE = re.compile(r"pid-namespace: (pid:\[\d+\])")

# Whether each command's tests should share the benchmark's PID namespace.
EXPECTS_HOST_NAMESPACE = {
    "cargo-test": True,
    "nextest": True,
    "nextest-bwrap": False,
    "runner": False,
    "runner-per-binary": False,
}


@dataclass
class NamespaceCheck:
    command_key: str
    expected: str
    host_namespace: str
    test_namespace: str | None
    passed: bool
    detail: str


def probe_argv(command: Command) -> list[str]:
    """Return the command narrowed to the probe test, with the test's
    output shown."""
    if command.key == "cargo-test":
        return command.argv + ["--nocapture", PROBE_TEST]
    if command.key.startswith("nextest"):
        return command.argv + ["--no-capture", PROBE_TEST]
    # The runner's JSON events carry each test's captured stdout.
    return command.argv + [PROBE_TEST]


def check_namespace(command: Command, log_dir: Path) -> NamespaceCheck:
    host = os.readlink("/proc/self/ns/pid")
    expects_host = EXPECTS_HOST_NAMESPACE[command.key]
    expected = "the host's" if expects_host else "a private one"
    probe = Command(
        key=command.key,
        label=command.label,
        argv=probe_argv(command),
        cwd=command.cwd,
        parse_output=command.parse_output,
        env=command.env,
    )
    timing = time_run(probe, log_dir, f"namespace-{command.key}")
    output = timing.stdout_path.read_text(
        errors="replace"
    ) + timing.stderr_path.read_text(errors="replace")
    match = PROBE_LINE.search(output)
    if timing.returncode != 0 or match is None:
        detail = f"probe run exited with code {timing.returncode} and printed no pid-namespace line; see {timing.stderr_path}"
        return NamespaceCheck(command.key, expected, host, None, False, detail)

    namespace = match.group(1)
    passed = (namespace == host) == expects_host
    if passed:
        detail = f"test ran in {namespace}, benchmark in {host}"
    else:
        detail = f"test ran in {namespace}, benchmark in {host}, expected {expected} PID namespace"
    return NamespaceCheck(command.key, expected, host, namespace, passed, detail)
