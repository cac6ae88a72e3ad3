"""A title any user can set cannot stall a collection, whatever the rules.

Classic ReDoS patterns as process_names rules, and real processes titled to
make a backtracking engine (Python's re) take 2^n steps: the collection
must finish within its interval. RE2 matches in time linear in the title,
so the bound is the interval itself, with room to spare on a loaded CI box.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import group_value, parse_samples, run_cli

pytestmark = pytest.mark.live

INTERVAL = 1.0  # seconds: collection.interval of the config
MARK = "317.25"  # sleep's argument: names the hostile processes only

# pattern -> the title (argv[0]) that makes a backtracking engine explode
REDOS = {
    r"^(a+)+$": "a" * 34 + "b",
    r"^(a|aa)+$": "a" * 60 + "b",
    r"^(a|a?)+$": "a" * 40 + "b",
    r"^(\w+\s?)+$": "word " * 30 + "!",
    r"^([a-z0-9]+[._]?)+@example\.com$": "a" * 40 + "!",  # the e-mail check
    r"(x+x+)+y": "x" * 5000,
    r"^(([a-z])+.)+[A-Z]([a-z])+$": "a" * 40 + "!",
}


@pytest.fixture
def hostile() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [subprocess.Popen([title, MARK], executable="/bin/sleep") for title in REDOS.values()]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_redos_titles_cannot_delay_a_collection(
    tmp_path: Path, hostile: list[subprocess.Popen[bytes]]
) -> None:
    rules = [{"name": f"redos{i}", "cmdline": [p]} for i, p in enumerate(REDOS)]
    rules.append({"name": "hostile", "cmdline": [rf" {MARK}$"]})
    config = tmp_path / "redos.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "collection": {"interval": "1s"},
                "accounting": {"enabled": False},
                "process_names": rules,
            }
        )
    )
    # A backtracking engine takes hours here: the timeout makes it a failure.
    result = run_cli("once", "--config", str(config), timeout=30)
    assert result.returncode == 0, result.stderr
    samples = parse_samples(result.stdout)
    # Every hostile process was matched against every rule and seen...
    assert group_value(samples, "pss_group_processes", "hostile") == len(hostile)
    # ...within the interval.
    duration = samples[("pss_exporter_collection_duration_seconds", frozenset())]
    assert duration < INTERVAL, duration
