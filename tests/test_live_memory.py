"""Live: real processes holding known memory, measured by `pss-exporter once`.

One memhog process writes N MiB of private anonymous memory; a memhog pair
(parent and forked child) both map one M MiB anonymous MAP_SHARED mapping and
write every page of it, and each writes P MiB of its own private memory. A
cmdline rule with a named capture groups them into hog-private and hog-shared.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from conftest import group_value, parse_samples, run_cli
from memhog import MIB, Hog, running_hog

pytestmark = pytest.mark.live

# Large next to an idle interpreter (~10 MB, of which ~2 MB are file pages
# shared with every other Python process on the machine: its share of them
# moves, and some of them turn private, as interpreters start and exit, e.g.
# the exporter's own), so that movement stays well below the 1% tolerance.
PRIVATE_MIB = 128  # N
SHARED_MIB = 128  # M
PAIR_PRIVATE_MIB = 16  # P: gives the pair's USS the same margin


@dataclass(frozen=True)
class Live:
    hogs: dict[str, Hog]  # by role
    samples: dict  # the exporter's exposition, parsed
    psutil_mem: dict[int, dict[str, int]]  # memory_full_info() by PID, read after the exporter


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    marker = uuid.uuid4().hex
    cfg = tmp_path_factory.mktemp("live") / "config.yaml"
    cfg.write_text(
        "collection: {interval: 200ms}\n"
        "php_fpm: {enabled: false}\n"
        "process_names:\n"
        '  - name: "hog-{{.Matches.role}}"\n'
        f"    cmdline: ['memhog\\.py (?P<role>private|shared) {marker}']\n"
    )
    with (
        running_hog("private", marker, PRIVATE_MIB) as private,
        running_hog("shared", marker, PAIR_PRIVATE_MIB, SHARED_MIB) as shared,
    ):
        result = run_cli("once", "--config", str(cfg))
        assert result.returncode == 0, result.stderr
        # The hogs are idle (blocked reading stdin): read them at once.
        mem = {
            pid: psutil.Process(pid).memory_full_info()._asdict()
            for pid in (*private.pids, *shared.pids)
        }
        yield Live({"private": private, "shared": shared}, parse_samples(result.stdout), mem)


def mapping_kb(pid: int, address: int) -> dict[str, int]:
    """The kB fields of the one /proc/PID/smaps block of the mapping at address."""
    fields: dict[str, int] = {}
    inside = False
    header = f"{address:x}-"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        key, _, value = line.partition(":")
        if " " in key or "-" in key:  # a mapping header line: "start-end perms ..."
            if inside:
                break
            inside = line.startswith(header)
        elif inside and value.strip().endswith(" kB"):
            fields[key] = int(value.split()[0])
    assert fields, f"no mapping at {address:#x} in /proc/{pid}/smaps"
    return fields


def test_group_uss_covers_the_private_memory(live: Live) -> None:
    s = live.samples
    assert group_value(s, "pss_group_processes", "hog-private") == 1
    assert group_value(s, "pss_group_uss_bytes", "hog-private") >= PRIVATE_MIB * MIB
    # The shared mapping is no one's private memory: only the pair's own pages.
    pair_uss = group_value(s, "pss_group_uss_bytes", "hog-shared")
    assert 2 * PAIR_PRIVATE_MIB * MIB <= pair_uss < 2 * PAIR_PRIVATE_MIB * MIB + SHARED_MIB * MIB


def test_shared_mapping_pss_of_the_pair_sums_to_its_size(live: Live) -> None:
    # What is exactly verifiable: each page of the shared mapping is mapped by
    # exactly these two processes (nothing else can map an anonymous shared
    # mapping), so the kernel charges each of them half of every page: the
    # mapping's Pss summed over the pair is M MiB, up to the kB rounding of
    # each smaps line. Read that by hand from the mapping's own smaps block.
    pids = live.hogs["shared"].pids
    blocks = [mapping_kb(pid, live.hogs["shared"].address) for pid in pids]
    assert [b["Rss"] for b in blocks] == [SHARED_MIB * 1024] * 2  # both map every page
    assert sum(b["Pss"] for b in blocks) == pytest.approx(SHARED_MIB * 1024, rel=0.02)
    # The interpreter itself maps no shmem (the lone private hog shows it), so
    # the pair's Pss_Shmem, which the exporter sums from smaps_rollup, is that
    # same mapping's PSS: M MiB.
    s = live.samples
    assert group_value(s, "pss_group_pss_shmem_bytes", "hog-private") == 0
    assert group_value(s, "pss_group_processes", "hog-shared") == 2
    assert group_value(s, "pss_group_pss_shmem_bytes", "hog-shared") == pytest.approx(
        SHARED_MIB * MIB, rel=0.02
    )


@pytest.mark.parametrize("role", ["private", "shared"])
def test_group_values_match_psutil(live: Live, role: str) -> None:
    s, group = live.samples, f"hog-{role}"
    mems = [live.psutil_mem[pid] for pid in live.hogs[role].pids]
    # Group sums against psutil's smaps_rollup (uss, pss, swap) and statm (rss).
    for metric in ("uss", "pss", "swap", "rss"):
        expected = sum(m[metric] for m in mems)
        assert group_value(s, f"pss_group_{metric}_bytes", group) == pytest.approx(
            expected, rel=0.01
        ), metric
    # Each process's own PSS and USS: with one or two workers, the median and
    # the max (nearest rank) are the smallest and largest value.
    assert group_value(s, "pss_group_workers", group) == len(mems)
    for metric in ("pss", "uss"):
        per_process = sorted(m[metric] for m in mems)
        reported = [
            group_value(s, f"pss_group_worker_{metric}_{q}_bytes", group) for q in ("median", "max")
        ]
        assert reported == pytest.approx([per_process[0], per_process[-1]], rel=0.01), metric
