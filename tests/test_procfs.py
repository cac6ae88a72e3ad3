"""The pure procfs parsers on fixture bytes from several kernel generations.

Every expected number below is read off the fixture file by hand (kB * 1024).
"""

from __future__ import annotations

import pytest

from exporter.procfs import (
    MAX_VALUE,
    ZERO_MEMORY,
    Memory,
    ParseError,
    Stat,
    Watermarks,
    parse_cmdline,
    parse_key_values,
    parse_meminfo,
    parse_pressure,
    parse_smaps,
    parse_stat,
    parse_zoneinfo,
)

from conftest import FIXTURES

BYTES = FIXTURES / "bytes"
KB = 1024


def fixture(name: str) -> bytes:
    return (BYTES / name).read_bytes()


# ------------------------------------------------------------- smaps_rollup


def test_rollup_4_14_has_no_pss_split() -> None:
    # 4.14 introduced smaps_rollup without Pss_Anon/Pss_File/Pss_Shmem (and Pss_Dirty).
    assert parse_smaps(fixture("smaps_rollup-4.14")) == Memory(
        rss=5860 * KB,
        pss=1123 * KB,
        uss=(328 + 752) * KB,
        swap=64 * KB,
        swap_pss=40 * KB,
        pss_anon=None,
        pss_file=None,
        pss_shmem=None,
    )


def test_rollup_5_10_has_pss_split() -> None:
    assert parse_smaps(fixture("smaps_rollup-5.10")) == Memory(
        rss=3932 * KB,
        pss=741 * KB,
        uss=(172 + 452) * KB,
        swap=128 * KB,
        swap_pss=96 * KB,
        pss_anon=452 * KB,
        pss_file=287 * KB,
        pss_shmem=2 * KB,
    )


def test_rollup_6_x_ignores_pss_dirty_and_ksm() -> None:
    # Shape of this machine's /proc/self/smaps_rollup: Pss_Dirty and KSM are extra keys.
    assert parse_smaps(fixture("smaps_rollup-6.x")) == Memory(
        rss=5596 * KB,
        pss=1612 * KB,
        uss=(0 + 120) * KB,
        swap=0,
        swap_pss=0,
        pss_anon=1462 * KB,
        pss_file=148 * KB,
        pss_shmem=1 * KB,
    )


def test_smaps_fallback_sums_every_mapping() -> None:
    # Four mappings, with THPeligible, ProtectionKey and VmFlags lines between them.
    assert parse_smaps(fixture("smaps-6.x")) == Memory(
        rss=(1836 + 2360 + 1024 + 44) * KB,
        pss=(612 + 2360 + 1024 + 44) * KB,
        uss=(12 + 2360 + 1012 + 44) * KB,
        swap=(88 + 40) * KB,
        swap_pss=(88 + 20) * KB,
        pss_anon=None,  # per-mapping smaps never reports the split
        pss_file=None,
        pss_shmem=None,
    )


def test_empty_rollup_is_zero() -> None:
    # Zombies, kernel threads and exiting processes have an empty smaps_rollup.
    # They hold nothing of every kind: a None split would hide their group's.
    assert parse_smaps(fixture("smaps_rollup-empty")) == Memory(0, 0, 0, 0, 0, 0, 0, 0)
    assert parse_smaps(fixture("smaps_rollup-empty")) == ZERO_MEMORY


def test_truncated_rollup_line_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="Private_Dirty"):
        parse_smaps(fixture("smaps_rollup-truncated"))


@pytest.mark.parametrize(
    "line",
    [b"Pss:                30x0 kB", b"Pss:                 100 MB", b"Pss:                 100"],
)
def test_malformed_rollup_value_is_a_parse_error(line: bytes) -> None:
    data = fixture("smaps_rollup-6.x").replace(b"Pss:                1612 kB", line)
    assert data != fixture("smaps_rollup-6.x")
    with pytest.raises(ParseError):
        parse_smaps(data)


def test_rollup_without_pss_is_a_parse_error() -> None:
    # Text that is not empty but holds no Pss line is not a smaps file.
    with pytest.raises(ParseError, match="no Pss"):
        parse_smaps(b"Rss:                 100 kB\n")


# --------------------------------------------------------------------- stat


def test_stat_comm_with_space_paren_and_newline() -> None:
    assert parse_stat(fixture("stat-odd-comm")) == Stat(
        comm="my) proc\nx", state="S", ppid=4200, flags=4194304, starttime=98765
    )
    assert not parse_stat(fixture("stat-odd-comm")).is_kernel_thread


def test_stat_kernel_thread_flag() -> None:
    st = parse_stat(fixture("stat-kthread"))
    assert st == Stat(comm="kworker/1:0-events", state="I", ppid=2, flags=0x4208060, starttime=57)
    assert st.is_kernel_thread


@pytest.mark.parametrize(
    "data",
    [
        b"4242 (sh) S 1 4242 4242 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0\n",  # 21 fields
        b"4242 sh S 1 4242 4242 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 77 0 0\n",  # no parens
        b"4242 (sh) S 1 4242 4242 0 -1 0x400 0 0 0 0 0 0 0 0 20 0 1 0 77 0 0\n",  # flags
    ],
)
def test_stat_malformed_is_a_parse_error(data: bytes) -> None:
    with pytest.raises(ParseError):
        parse_stat(data)


# ------------------------------------------------------------------ cmdline


def test_cmdline_nul_separated() -> None:
    # An argument with a space stays one argument; an empty argument in the middle stays.
    assert parse_cmdline(fixture("cmdline-args")) == (
        "/usr/bin/python3",
        "/srv/my app.py",
        "--title",
        "",
        "--port",
        "8080",
    )


def test_cmdline_php_fpm_titles_padded_with_nuls() -> None:
    assert parse_cmdline(fixture("cmdline-fpm-pool")) == ("php-fpm: pool www",)
    assert parse_cmdline(fixture("cmdline-fpm-master")) == (
        "php-fpm: master process (/etc/php/8.2/fpm/php-fpm.conf)",
    )


def test_cmdline_empty() -> None:
    assert parse_cmdline(b"") == ()


# ---------------------------------------------------------------- meminfo


def test_meminfo() -> None:
    info = parse_meminfo(fixture("meminfo-6.x"))
    assert info["MemTotal"] == 24684084 * KB
    assert info["MemAvailable"] == 24289192 * KB
    assert info["Active(anon)"] == 1560 * KB
    assert info["Hugepagesize"] == 2048 * KB
    assert info["HugePages_Total"] == 0  # a count, not kB
    assert len(info) == 54


def test_meminfo_huge_page_counts_stay_counts() -> None:
    assert parse_meminfo(b"HugePages_Total:      16\nHugepagesize:       2048 kB\n") == {
        "HugePages_Total": 16,
        "Hugepagesize": 2048 * KB,
    }


def test_meminfo_malformed() -> None:
    with pytest.raises(ParseError):
        parse_meminfo(b"MemTotal:       lots kB\n")


# ---------------------------------------------------- hostile numbers
# A crafted --path.procfs can hold any bytes. Every parser takes ASCII digits
# only (int() also takes '+5', ' 5', '1_000' and '٣'), bounds every value to
# 0..2**63-1 (sizes once in bytes) and raises nothing but ParseError.

HOSTILE = [b"-5", b"+5", b"1_000", b"9" * 400, b"9223372036854775808"]


@pytest.mark.parametrize("field", ["ppid", "starttime"])
@pytest.mark.parametrize("number", HOSTILE)
def test_stat_hostile_number_is_a_parse_error(number: bytes, field: str) -> None:
    old, new = {"ppid": (b") S 4200 ", b") S %s "), "starttime": (b" 0 98765 ", b" 0 %s ")}[field]
    data = fixture("stat-odd-comm")
    assert data.count(old) == 1
    with pytest.raises(ParseError, match=field):
        parse_stat(data.replace(old, new % number))


@pytest.mark.parametrize("number", [*HOSTILE, b"9007199254740992"])  # 2**53 kB = 2**63 bytes
def test_rollup_hostile_number_is_a_parse_error(number: bytes) -> None:
    data = fixture("smaps_rollup-6.x").replace(b"1612 kB", number + b" kB", 1)
    with pytest.raises(ParseError):
        parse_smaps(data)


def test_rollup_sizes_up_to_the_bound() -> None:
    kb = MAX_VALUE // 1024  # the largest size in kB that is still in range as bytes
    assert parse_smaps(b"Pss: %d kB\n" % kb).pss == kb * 1024
    # Summed over mappings (full smaps), the total is bounded too.
    with pytest.raises(ParseError, match="beyond"):
        parse_smaps(b"Pss: %d kB\nPss: 1 kB\n" % kb)


@pytest.mark.parametrize("number", [*HOSTILE, b"9007199254740992"])
def test_meminfo_hostile_number_is_a_parse_error(number: bytes) -> None:
    with pytest.raises(ParseError):
        parse_meminfo(b"MemTotal:       " + number + b" kB\n")


@pytest.mark.parametrize("number", HOSTILE)
def test_pressure_hostile_number_is_a_parse_error(number: bytes) -> None:
    # 400 digits: int() took them, the division by 1e6 raised OverflowError.
    with pytest.raises(ParseError):
        parse_pressure(b"some avg10=0.00 avg60=0.00 avg300=0.00 total=" + number + b"\n")


ZONE = b"""Node 0, zone   Normal
  pages free     4096
        min      10
        low      20
        high     30
        managed  1000
        protection: (0, 0, 0)
    pagesets
    cpu: 0
              count: 7
"""


@pytest.mark.parametrize(
    "old, new",
    [
        (b"low      20", b"low      abc"),  # raised ValueError, not ParseError
        (b"low      20", b"low      -20"),
        (b"count: 7", b"count: " + b"9" * 400),
        (b"count: 7", b"count: 9223372036854775807\n              count: 1"),  # the sum
        (b"(0, 0, 0)", b"(0, x, 0)"),
    ],
)
def test_zoneinfo_malformed_is_a_parse_error(old: bytes, new: bytes) -> None:
    assert parse_zoneinfo(ZONE) == Watermarks(low=20, reserve=30, pcp_free=7)
    assert ZONE.count(old) == 1
    with pytest.raises(ParseError):
        parse_zoneinfo(ZONE.replace(old, new))


def test_key_values_skip_what_is_not_a_count() -> None:
    # memory.events / memory.oom_control: a garbled line loses only its key.
    data = b"low 0\nhigh --5\nmax -3\noom +2\noom_kill " + b"9" * 400 + b"\noom_group_kill 4\n"
    assert parse_key_values(data) == {"low": 0, "oom_group_kill": 4}
