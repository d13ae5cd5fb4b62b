"""Helpers of ci/bench: test crates, the timed commands, machine facts and
the report."""
