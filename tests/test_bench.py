"""The benchmark (bench/bench.py) on a small fleet: it runs, reports every
section, and measured what it says it measured. No timing assertions: only
counts, labels and the accuracy of change detection are checked."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, require_binary

pytestmark = [pytest.mark.live, pytest.mark.slow]

BENCH = ROOT / "bench" / "bench.py"
PROCESS_EXPORTER = "/usr/bin/prometheus-process-exporter"
WORKERS, LARGE, REQUESTS, TREE, CHURN = 4, 1, 150, 2000, 200
SYNTHETIC_GROUPS = 1000
ARGS = {
    "--workers": WORKERS,
    "--large": LARGE,
    "--large-size": 64,
    "--seconds": 3,
    "--cycles": 3,
    "--scrapes": 2,
    "--runs": 1,
    "--requests": REQUESTS,
    "--tree-processes": TREE,
    "--churn": CHURN,
    "--churn-per-cycle": 20,
}

Table = list[dict[str, str]]


def sections(text: str) -> dict[str, str]:
    """{title: body} of the report's '## title' sections."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}


def table(body: str) -> Table:
    """The first markdown table in body, as one dict per row."""
    lines = [line for line in body.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    head, rows = cells[0], cells[2:]
    return [dict(zip(head, row)) for row in rows]


def by(rows: Table, column: str) -> dict[str, dict[str, str]]:
    return {row[column]: row for row in rows}


def cmdlines() -> list[str]:
    out = []
    for name in os.listdir("/proc"):
        try:
            out.append(Path(f"/proc/{name}/cmdline").read_bytes().decode(errors="replace"))
        except OSError:
            continue
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> str:
    require_binary("php-fpm8.2")
    out = tmp_path_factory.mktemp("bench") / "report.md"
    args = [str(a) for pair in ARGS.items() for a in pair]
    run = subprocess.run(
        [sys.executable, str(BENCH), *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr
    text = out.read_text()
    assert run.stdout == text  # printed and written alike
    return text


@pytest.fixture(scope="module")
def cpu(report: str) -> dict[str, dict[str, str]]:
    return by(table(sections(report)["CPU per cycle"]), "measurement")


def test_report_has_every_section(report: str) -> None:
    assert list(sections(report)) == [
        "CPU per cycle",
        "Change detection",
        "/metrics latency",
        "Exporter RSS",
        "Targets",
    ]


def test_bare_loop_and_exporter_read_the_same_processes(
    report: str, cpu: dict[str, dict[str, str]]
) -> None:
    column = "smaps reads/cycle"
    bare = float(cpu["bare loop (kernel floor)"][column])
    # The fleet (workers, their master, the large processes) is among them.
    assert bare >= WORKERS + 1 + LARGE
    churn = re.search(r"start or exit during the full-freshness rounds: (\d+)", report)
    assert churn
    full = [name for name in cpu if name.startswith("pss-exporter full")]
    assert len(full) == 4  # collect(), collect()+render(), 2 and 4 threads
    for name in full:
        # Equal on a quiet machine; other programs' processes starting or
        # exiting between the cycles may move a count by at most that churn.
        assert abs(float(cpu[name][column]) - bare) <= int(churn.group(1)), name
        assert float(cpu[name]["CPU ms/cycle"]) > 0


def test_default_settings_reuse_most_reads(report: str, cpu: dict[str, dict[str, str]]) -> None:
    default = float(cpu["pss-exporter default: collect()"]["smaps reads/cycle"])
    bare = float(cpu["bare loop (kernel floor)"]["smaps reads/cycle"])
    # The idle fleet's statm does not change: its processes are reused.
    assert default <= bare - (WORKERS + LARGE)
    reused = re.search(r"(\d+(?:\.\d+)?) reused", sections(report)["Change detection"])
    assert reused and float(reused.group(1)) >= WORKERS + LARGE


def test_exporter_grouped_the_fleet(report: str) -> None:
    line = next(x for x in report.splitlines() if x.startswith("Fleet as pss-exporter"))
    groups = {g: int(n) for g, n in re.findall(r"`([^`]+)` (\d+)", line)}
    pools = {g: n for g, n in groups.items() if g.startswith("php-fpm:bench")}
    assert len(pools) == 3
    assert sum(pools.values()) == WORKERS
    assert groups["bench-large"] == LARGE


def test_fleet_is_stopped_afterwards(report: str) -> None:
    tag = re.search(r"run tag `(\w+)`", report)
    assert tag
    # php-fpm titles name the pools (benchI_TAG); hog.py has TAG as argument.
    assert [c for c in cmdlines() if tag.group(1) in c] == []


def test_accuracy_of_the_fleet_within_one_percent(report: str) -> None:
    body = sections(report)["Change detection"]
    compared = re.search(r"(\d+) groups compared", body)
    assert compared and int(compared.group(1)) >= 4  # 3 pools + bench-large at least
    summary = by(table(body), "default snapshot against")
    # The steady fleet, reused since the first cycle (3 s < max_age 5 s).
    fleet = summary["the same, the fleet's groups only"]
    assert float(fleet["max relative PSS difference"].rstrip("%")) <= 1.0, body
    everyone = summary["the range of the full reads just before and after"]
    assert float(everyone["max relative PSS difference"].rstrip("%")) >= float(
        fleet["max relative PSS difference"].rstrip("%")
    )


def test_latency_counts_requests_and_groups(report: str) -> None:
    rows = table(sections(report)["/metrics latency"])
    scenarios = {("1000", "15s"), (str(TREE), "15s"), (str(TREE), "1s")}
    assert {(r["processes"], r["collection interval"], r["encoding"]) for r in rows} == {
        (*scenario, enc) for scenario in scenarios for enc in ("text", "OpenMetrics+gzip")
    }
    for row in rows:
        assert int(row["requests"]) == REQUESTS
        assert int(row["groups in /metrics"]) == SYNTHETIC_GROUPS
        assert float(row["p50 ms"]) <= float(row["p99 ms"]) <= float(row["max ms"])


def test_rss_run_did_the_churn(report: str) -> None:
    (row,) = table(sections(report)["Exporter RSS"])
    assert int(row["processes"]) == TREE
    assert int(row["groups"]) == SYNTHETIC_GROUPS
    assert int(row["spawn/exit"]) == CHURN
    assert float(row["VmRSS after imports MiB"]) < float(row["after warm-up MiB"])
    series = re.search(
        r"tenth of the churn \(MiB\): ([\d., ]+)\.", sections(report)["Exporter RSS"]
    )
    assert series and len(series.group(1).split(", ")) == 10


def test_reference_tools_present(cpu: dict[str, dict[str, str]]) -> None:
    pe = next(row for name, row in cpu.items() if name.startswith("process-exporter"))
    if os.path.exists(PROCESS_EXPORTER):
        assert pe["note"] == "its utime + stime"
        assert float(pe["smaps reads/cycle"]) >= WORKERS + 1 + LARGE
    else:
        assert pe["note"] == "not installed"
    smem = cpu['smem -c "pid pss"']
    if shutil.which("smem"):
        assert float(smem["smaps reads/cycle"]) >= WORKERS + 1 + LARGE
    else:
        assert smem["note"] == "not installed"
    psutil_row = cpu["psutil memory_full_info()"]
    assert float(psutil_row["smaps reads/cycle"]) >= WORKERS + 1 + LARGE


def test_every_target_has_a_verdict(report: str) -> None:
    rows = table(sections(report)["Targets"])
    assert len(rows) == 8
    assert {r["result"] for r in rows} <= {"met", "NOT MET", "not measured"}
