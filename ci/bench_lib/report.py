"""Results: one row per crate and command, the targets, the printed table
and the JSON file."""

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .commands import Command
from .crates import Crate

MIB = 1024 * 1024

# The reference command that ratios are taken against.
REFERENCE_KEY = "runner"

OK = "ok"
NOT_AVAILABLE = "not available"
FAILED = "failed"


@dataclass
class Row:
    """The timed runs of one command on one crate."""

    crate: Crate
    command: Command
    status: str = OK
    reason: str | None = None
    seconds: list[float] = field(default_factory=list)
    runner_peak_rss: int | None = None
    # "reported" (the runner's run-finished event) or "sampled" (VmHWM read
    # from /proc during an extra untimed run, a lower bound).
    rss_source: str | None = None

    @property
    def timed(self) -> bool:
        return self.status == OK and bool(self.seconds)

    def median(self) -> float:
        return statistics.median(self.seconds)

    def per_test_ms(self) -> float:
        return self.median() / self.crate.tests * 1000


def find_row(rows: list[Row], crate_name: str, key: str) -> Row | None:
    for row in rows:
        if row.crate.name == crate_name and row.command.key == key:
            return row
    return None


def ratio_to_reference(rows: list[Row], row: Row) -> float | None:
    reference = find_row(rows, row.crate.name, REFERENCE_KEY)
    if reference is None or not reference.timed or not row.timed:
        return None
    return row.median() / reference.median()


@dataclass
class Target:
    """A goal the runner is measured against; status is PASS, FAIL or NOT
    CHECKED."""

    description: str
    value: float | None
    limit: str
    status: str
    note: str = ""


def median_ratio(
    rows: list[Row], crate_name: str, numerator_key: str, denominator_key: str
) -> tuple[float | None, str]:
    """Return median(numerator) / median(denominator) on one crate, or None
    and the reason it cannot be computed."""
    numerator = find_row(rows, crate_name, numerator_key)
    denominator = find_row(rows, crate_name, denominator_key)
    for row, key in [(numerator, numerator_key), (denominator, denominator_key)]:
        if row is None:
            return None, f"{crate_name} was not run"
        if not row.timed:
            return (
                None,
                f"{row.command.label} on {crate_name}: {row.status} ({row.reason})",
            )
    return numerator.median() / denominator.median(), ""


def ratio_target(
    description: str, value: float | None, why_missing: str, limit: float, at_most: bool
) -> Target:
    limit_text = f"<= {limit}" if at_most else f">= {limit}"
    if value is None:
        return Target(description, None, limit_text, "NOT CHECKED", why_missing)
    passed = value <= limit if at_most else value >= limit
    return Target(description, value, limit_text, "PASS" if passed else "FAIL")


def evaluate_targets(rows: list[Row]) -> list[Target]:
    """Check the runner's goals. Ratios that name no crate are taken on the
    500-test crate, the one every run (--quick too) includes."""
    targets = []

    value, missing_reason = median_ratio(rows, "trivial-500", "runner", "nextest")
    targets.append(
        ratio_target(
            "container per test / cargo nextest run, 500 tests",
            value,
            missing_reason,
            1.0,
            at_most=True,
        )
    )

    value, missing_reason = median_ratio(rows, "trivial-500", "nextest-bwrap", "runner")
    targets.append(
        ratio_target(
            "nextest + bwrap / container per test, 500 tests",
            value,
            missing_reason,
            2.0,
            at_most=False,
        )
    )

    value, missing_reason = median_ratio(
        rows, "trivial-500", "runner-per-binary", "cargo-test"
    )
    targets.append(
        ratio_target(
            "--per-binary / cargo test, 500 tests",
            value,
            missing_reason,
            2.0,
            at_most=True,
        )
    )

    small = find_row(rows, "trivial-500", "runner")
    large = find_row(rows, "trivial-2000", "runner")
    if small is None or large is None:
        value, missing_reason = None, "the 2,000-test crate was not run (--quick)"
    elif not small.timed or not large.timed:
        value, missing_reason = None, "a runner row did not finish"
    else:
        value, missing_reason = large.median() / small.median(), ""
    targets.append(
        ratio_target(
            "container per test, 2,000 tests / 500 tests",
            value,
            missing_reason,
            4.2,
            at_most=True,
        )
    )

    targets.append(peak_rss_target(large))
    return targets


def peak_rss_target(row: Row | None) -> Target:
    description = "runner peak RSS, 2,000 tests (MiB)"
    limit = "< 50"
    if row is None:
        return Target(
            description,
            None,
            limit,
            "NOT CHECKED",
            "the 2,000-test crate was not run (--quick)",
        )
    if row.runner_peak_rss is None:
        return Target(
            description,
            None,
            limit,
            "NOT CHECKED",
            "no peak RSS was reported or sampled",
        )
    value = row.runner_peak_rss / MIB
    note = ""
    if row.rss_source == "sampled":
        note = "sampled from /proc (a lower bound); the runner did not report runner_peak_rss"
    return Target(description, value, limit, "PASS" if value < 50 else "FAIL", note)


def format_table(rows: list[Row]) -> str:
    header = f"{'crate':<16} {'tests':>5}  {'command':<33} {'median s':>9} {'min s':>8} {'max s':>8} {'ms/test':>8} {'x runner':>9} {'peak RSS':>11}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(format_row(rows, row))
    if any(row.rss_source == "sampled" for row in rows):
        lines.append("")
        lines.append(
            "* peak RSS sampled from /proc/PID/status (VmHWM) during an extra untimed run: a lower bound,"
        )
        lines.append(
            "  because the runner's run-finished event has no runner_peak_rss field."
        )
    return "\n".join(lines)


def format_row(rows: list[Row], row: Row) -> str:
    start = f"{row.crate.name:<16} {row.crate.tests:>5}  {row.command.label:<33}"
    if row.status != OK:
        return f"{start} {row.status}: {row.reason}"
    ratio = ratio_to_reference(rows, row)
    ratio_text = f"{ratio:.2f}x" if ratio is not None else "n/a"
    return (
        f"{start} {row.median():>9.3f} {min(row.seconds):>8.3f} {max(row.seconds):>8.3f}"
        f" {row.per_test_ms():>8.2f} {ratio_text:>9} {format_rss(row):>11}"
    )


def format_rss(row: Row) -> str:
    if row.runner_peak_rss is None:
        return "n/a"
    mark = "*" if row.rss_source == "sampled" else ""
    return f"{row.runner_peak_rss / MIB:.1f} MiB{mark}"


def format_targets(targets: list[Target]) -> str:
    lines = []
    for target in targets:
        value = f"{target.value:.2f}" if target.value is not None else "n/a"
        line = (
            f"{target.status:<11} {target.description}: {value} (target {target.limit})"
        )
        if target.note:
            line += f"; {target.note}"
        lines.append(line)
    return "\n".join(lines)


def row_json(rows: list[Row], row: Row) -> dict:
    data = {
        "crate": row.crate.name,
        "tests": row.crate.tests,
        "command": row.command.key,
        "label": row.command.label,
        "argv": row.command.argv,
        "env": row.command.env,
        "status": row.status,
        "reason": row.reason,
        "seconds": row.seconds,
        "runner_peak_rss": row.runner_peak_rss,
        "runner_peak_rss_source": row.rss_source,
    }
    if row.timed:
        data["median_seconds"] = row.median()
        data["min_seconds"] = min(row.seconds)
        data["max_seconds"] = max(row.seconds)
        data["per_test_ms"] = row.per_test_ms()
        data["ratio_to_runner"] = ratio_to_reference(rows, row)
    return data


def write_json(
    path: Path, header: dict, rows: list[Row], targets: list[Target], extras: dict
) -> None:
    document = dict(header)
    document["results"] = [row_json(rows, row) for row in rows]
    document["targets"] = [
        {
            "description": t.description,
            "value": t.value,
            "limit": t.limit,
            "status": t.status,
            "note": t.note,
        }
        for t in targets
    ]
    document.update(extras)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
