"""Memory cgroups: /proc/PID/cgroup parsing, v1/v2/hybrid layouts, headroom
over the ancestry, and a pool's budget under a real memory limit."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fpm import running_fpm, write_static_config

from exporter.cgroup import (
    CgroupMemory,
    CgroupPaths,
    headroom,
    memory_cgroup,
    memory_chain,
    memory_dirs,
    parse_proc_cgroup,
    read_memory,
    read_state,
)
from exporter.discovery import LiveProcess
from exporter.procfs import CgroupLine, ParseError, parse_proc_cgroup_lines

from conftest import MEMORY_LIMIT, group_value, parse_samples, run_cli, wait_until

MiB = 1 << 20

HYBRID = b"""9:name=systemd:/
4:memory:/system.slice/php8.2-fpm.service
1:cpu:/
0::/system.slice/php8.2-fpm.service
"""


# A hybrid host's /proc/PID/cgroup, with the lines a crafted tree may add.
HYBRID_CGROUP = (
    b"12:memory:/system.slice/a.service\n"
    b"11:cpu,cpuacct:/system.slice/a.service\n"
    b"1:name=systemd:/odd:path (deleted)\n"
    b"no colons here\n"
    b"0::/system.slice/a.service\n"
)


def test_one_proc_cgroup_parser_for_memory_and_templates(tmp_path: Path) -> None:
    """/proc/PID/cgroup is split in one place: the memory cgroup and the
    {{.Cgroups}} template field see the same lines (a path may hold ':')."""
    lines = parse_proc_cgroup_lines(HYBRID_CGROUP)
    assert lines == (
        CgroupLine("12", "memory", "/system.slice/a.service"),
        CgroupLine("11", "cpu,cpuacct", "/system.slice/a.service"),
        CgroupLine("1", "name=systemd", "/odd:path (deleted)"),
        CgroupLine("0", "", "/system.slice/a.service"),
    )
    assert parse_proc_cgroup(HYBRID_CGROUP) == CgroupPaths(
        "/system.slice/a.service", "/system.slice/a.service"
    )
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cgroup").write_bytes(HYBRID_CGROUP)
    proc = LiveProcess(str(tmp_path), 7, "a", 0)
    assert proc.cgroups == tuple(line.path for line in lines)


@pytest.mark.parametrize("separator", ["\x1e", "\x1c", "\x85", "\u2028", "\r", "\v"])
def test_a_cgroup_name_cannot_forge_a_line(separator: str) -> None:
    """A delegated cgroup named 'x<SEP>0::/system.slice/mysql.service' made
    str.splitlines() read a second line: another service's cgroup."""
    data = f"0::/user.slice/x{separator}0::/system.slice/mysql.service\n".encode()
    [line] = parse_proc_cgroup_lines(data)
    assert line.path == f"/user.slice/x{separator}0::/system.slice/mysql.service"
    assert parse_proc_cgroup(data).v2 == line.path


def test_parse_proc_cgroup_layouts() -> None:
    assert parse_proc_cgroup(b"0::/system.slice/php8.2-fpm.service\n") == CgroupPaths(
        None, "/system.slice/php8.2-fpm.service"
    )
    assert parse_proc_cgroup(HYBRID) == CgroupPaths(
        "/system.slice/php8.2-fpm.service", "/system.slice/php8.2-fpm.service"
    )
    assert parse_proc_cgroup(b"5:cpuacct,memory:/a/b (deleted)\n") == CgroupPaths("/a/b", None)
    assert parse_proc_cgroup(b"") == CgroupPaths(None, None)


def write(d: Path, **files: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name.replace("_", ".", 1)).write_text(text + "\n")


def test_v2_headroom_is_the_tightest_limit_on_the_way_up(tmp_path: Path) -> None:
    root = tmp_path / "fs" / "cgroup"
    write(root, cgroup_controllers="memory pids")  # the v2 root has no memory files
    write(root / "web", memory_current=str(900 * MiB), memory_max=str(1024 * MiB))
    write(root / "web" / "fpm", memory_current=str(500 * MiB), memory_max="max")
    dirs = memory_dirs(str(tmp_path), CgroupPaths(None, "/web/fpm"))
    assert dirs == [str(root / "web" / "fpm"), str(root / "web")]
    chain = [read_memory(d) for d in dirs]
    assert chain[0] == CgroupMemory(str(root / "web" / "fpm"), 500 * MiB, None)
    assert headroom(chain) == 124 * MiB  # the parent's limit binds, not the leaf


def test_v1_unlimited_and_hybrid_prefers_the_v1_memory_controller(tmp_path: Path) -> None:
    mem = tmp_path / "fs" / "cgroup" / "memory"
    unlimited = "9223372036854771712"
    write(mem, memory_usage_in_bytes=str(3000 * MiB), memory_limit_in_bytes=unlimited)
    write(mem / "svc", memory_usage_in_bytes=str(300 * MiB), memory_limit_in_bytes=unlimited)
    # A hybrid host also has the v2 unified mount, without memory files.
    (tmp_path / "fs" / "cgroup" / "unified" / "svc").mkdir(parents=True)
    paths = parse_proc_cgroup(b"4:memory:/svc\n0::/svc\n")
    chain = [read_memory(d) for d in memory_dirs(str(tmp_path), paths)]
    assert [c.limit for c in chain] == [None, None]
    assert headroom(chain) is None
    write(mem / "svc", memory_limit_in_bytes=str(512 * MiB))
    chain = [read_memory(d) for d in memory_dirs(str(tmp_path), paths)]
    assert chain[0].usage == 300 * MiB and headroom(chain) == 212 * MiB


def test_missing_hierarchy_gives_no_dirs(tmp_path: Path) -> None:
    assert memory_dirs(str(tmp_path), CgroupPaths(None, None)) == []
    assert memory_dirs(str(tmp_path), CgroupPaths("/gone", None)) == []


@pytest.mark.parametrize("text", ["9" * 400, "-1", "+5", "1_000", "9223372036854775808", ""])
@pytest.mark.parametrize("name", ["memory_current", "memory_max"])
def test_cgroup_number_out_of_range_is_a_parse_error(tmp_path: Path, name: str, text: str) -> None:
    # 400 digits made the whole exposition fail (OverflowError at render).
    d = tmp_path / "cg"
    write(d, memory_current=str(300 * MiB), memory_max=str(512 * MiB))
    write(d, **{name: text})
    with pytest.raises(ParseError, match="count"):
        read_memory(str(d))


# ----------------------------------------------------------------- live


@pytest.mark.live
def test_pool_budget_follows_its_cgroup_limit(tmp_path: Path, limited_cgroup: Path) -> None:
    pool = f"cg_{uuid.uuid4().hex[:6]}"
    conf = write_static_config(tmp_path, {pool: 2})
    with running_fpm(conf, {pool: 2}, cgroup=limited_cgroup, graceful=False):
        group = f"php-fpm:{pool}"
        key = ("pss_group_processes", frozenset({("group", group)}))

        def collected() -> dict | None:
            samples = parse_samples(run_cli("once").stdout)
            return samples if samples.get(key) == 2 else None

        samples = wait_until(f"{group} with 2 processes", collected, timeout=20, interval=0.2)
        assert samples[key] == 2
        pss = group_value(samples, "pss_group_pss_bytes", group)
        budget = group_value(samples, "pss_phpfpm_budget_bytes", group)
        usage_file = next(
            f for f in ("memory.usage_in_bytes", "memory.current")
            if (limited_cgroup / f).exists()
        )  # fmt: skip
        usage = int((limited_cgroup / usage_file).read_text())
        expected = (pss + MEMORY_LIMIT - usage) * 0.9
        # Usage (page cache included) moves a little between the two reads.
        assert budget == pytest.approx(expected, rel=0.02)
        assert budget < MEMORY_LIMIT  # the host's MemAvailable is far larger


def test_paths_from_a_private_cgroup_namespace_are_not_followed(tmp_path: Path) -> None:
    # Seen from inside a cgroup namespace, other cgroups are "/../..".
    (tmp_path / "fs" / "cgroup" / "cgroup.controllers").parent.mkdir(parents=True)
    (tmp_path / "fs" / "cgroup" / "cgroup.controllers").write_text("memory\n")
    assert memory_chain(str(tmp_path), CgroupPaths(None, "/../../system.slice/x")) is None
    assert memory_chain(str(tmp_path), CgroupPaths(None, "/")) is None


def test_hybrid_host_takes_pressure_from_the_unified_hierarchy(tmp_path: Path) -> None:
    mem = tmp_path / "fs" / "cgroup" / "memory" / "svc"
    write(mem, memory_usage_in_bytes=str(MiB), memory_limit_in_bytes=str(8 * MiB))
    unified = tmp_path / "fs" / "cgroup" / "unified" / "svc"
    write(unified, memory_pressure="some avg10=0 avg60=0 avg300=0 total=1500000\n"
          "full avg10=0 avg60=0 avg300=0 total=500000")  # fmt: skip
    cgroup = memory_cgroup(str(tmp_path), parse_proc_cgroup(b"4:memory:/svc\n0::/svc\n"))
    assert cgroup is not None and cgroup.pressure == f"{unified}/memory.pressure"
    state = read_state(cgroup)
    assert state.pressure == {"some": 1.5, "full": 0.5}
    assert (state.usage, state.limit, state.headroom) == (MiB, 8 * MiB, 7 * MiB)
