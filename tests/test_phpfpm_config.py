"""php-fpm config parsing: fixture trees (Debian and Docker layouts), error
cases, and a real php-fpm that must agree with the parser: its `-tt` dump and
the pool titles of its workers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from fpm import global_section, running_fpm

import exporter.phpfpm_config
from exporter.grouping import fpm_role
from exporter.phpfpm_config import (
    MAX_FILES,
    MAX_INCLUDE_DEPTH,
    MAX_LOAD_CHARS,
    FpmConfigError,
    PoolSettings,
    load_fpm_config,
    parse_ini,
    parse_php_size,
    parse_value,
)

from conftest import FIXTURES, free_port, require_binary

DEBIAN = FIXTURES / "phpfpm" / "debian"
DEBIAN_CONF = "/etc/php/8.2/fpm/php-fpm.conf"
M = 1 << 20

# What the Debian fixture tree defines; see the comments in its files.
DEBIAN_POOLS = {
    "api": PoolSettings(
        name="api",
        pm="ondemand",
        max_children=4,
        start_servers=None,
        min_spare_servers=None,
        max_spare_servers=None,
        max_requests=0,
        listen="/run/php/api.sock",
        status_path=None,
        memory_limit=160 * M,  # conf.d/20-limits.ini, after php.ini's 192M
    ),
    "shop": PoolSettings(
        name="shop",
        pm="dynamic",
        max_children=24,  # conf.extra/shop-tuning.conf overrides pool.d/shop.conf
        start_servers=4,
        min_spare_servers=2,
        max_spare_servers=6,
        max_requests=500,
        listen="127.0.0.1:9001",
        status_path="/fpm-shop",
        memory_limit=64 * M,  # php_value
    ),
    "www": PoolSettings(
        name="www",
        pm="static",
        max_children=8,
        start_servers=None,
        min_spare_servers=None,
        max_spare_servers=None,
        max_requests=1000,
        listen="/run/php/php8.2-fpm-www.sock",
        status_path="/status-www",
        memory_limit=256 * M,  # php_admin_value beats php_value's 512M
    ),
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Write {relative path: text} under root; returns root."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def load_error(main: str, root: Path) -> str:
    with pytest.raises(FpmConfigError) as info:
        load_fpm_config(main, root=str(root))
    return str(info.value)


# ------------------------------------------------------------ pure parsers


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (" 127.0.0.1:9000   ; comment", "127.0.0.1:9000"),
        (' "/run/php/a;b.sock" ; comment', "/run/php/a;b.sock"),
        (" '/raw\\path;x'", "/raw\\path;x"),
        (' "/p"ing', "/ping"),  # adjacent pieces concatenate, as php-fpm does
        (' a "b" c', "abc"),
        (" /tmp/a b  c ", "/tmp/a b  c"),
        (' "a\\"b\\\\c\\$d\\n"', 'a"b\\c$d\\n'),
        (" ${HOME}/x.sock", "${HOME}/x.sock"),  # environment left unexpanded
        (" /run/$pool.sock", "/run/$pool.sock"),
        (" it's", "it"),  # an unclosed ' after text drops the rest, as in php
        (" x'y'z'w", "xyz"),
        (" Yes", "1"),
        (" none", ""),
        (' "true"', "true"),
        ("", ""),
    ],
)
def test_parse_value(raw: str, value: str) -> None:
    assert parse_value(raw) == value


@pytest.mark.parametrize("raw", [' "/run/php.sock', " 'raw"])
def test_parse_value_rejects_unterminated_quotes(raw: str) -> None:
    with pytest.raises(ValueError, match="unterminated"):
        parse_value(raw)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("134217728", 134217728),
        ("128M", 128 * M),
        ("64m", 64 * M),
        (" 2G ", 2 << 30),
        ("1g", 1 << 30),
        ("512K", 512 << 10),
        ("512k", 512 << 10),
        ("0", 0),
        ("-1", None),
    ],
)
def test_parse_php_size(text: str, size: int | None) -> None:
    assert parse_php_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "1.5G", "128MB", "-2", "M"])
def test_parse_php_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_php_size(text)


def test_parse_ini_entries_sections_and_lines() -> None:
    text = (
        "; comment\n"
        "pid = /run/fpm.pid\n"
        "\n"
        "[ www ] ; the pool\n"
        "php_admin_value[ memory_limit] = 256M\n"
        "listen = '/run/$pool.sock'\n"
    )
    assert [tuple(e) for e in parse_ini(text, "a.conf")] == [
        (None, "pid", "/run/fpm.pid", 2),
        ("www", None, "", 4),
        ("www", "php_admin_value[memory_limit]", "256M", 5),
        ("www", "listen", "/run/$pool.sock", 6),
    ]


@pytest.mark.parametrize("separator", ["\x1e", "\x85", "\u2028", "\x0c"])
def test_parse_ini_lines_end_where_php_ends_them(separator: str) -> None:
    """php's INI scanner ends lines at \\n, \\r\\n and \\r only; str.splitlines()
    also split at these, so a tenant's value could hide a line php-fpm never
    reads (here a pm.max_children the exporter alone would see)."""
    text = f"[www]\r\nlisten = /run/a.sock{separator}pm.max_children = 999\rpm = static\n"
    assert [tuple(e) for e in parse_ini(text, "a.conf")] == [
        ("www", None, "", 1),
        ("www", "listen", f"/run/a.sock{separator}pm.max_children = 999", 2),
        ("www", "pm", "static", 3),
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("listen", "malformed line, expected 'key = value'"),
        ("# not a comment since php 7", "malformed line, expected 'key = value'"),
        ("[www", "malformed section header"),
        ('listen = "/run/a.sock', "unterminated double-quoted value"),
    ],
)
def test_parse_ini_malformed_line(line: str, reason: str) -> None:
    with pytest.raises(FpmConfigError) as info:
        parse_ini(f"[www]\npm = static\n{line}\n", "/etc/fpm/www.conf")
    assert str(info.value) == f"/etc/fpm/www.conf:3: {reason}"
    # php.ini is read leniently: the malformed line is skipped.
    lenient = parse_ini(f"[www]\n{line}\nmemory_limit = 1G\n", "php.ini", strict=False)
    assert [(e.key, e.value) for e in lenient] == [(None, ""), ("memory_limit", "1G")]


# ------------------------------------------------------------ fixture trees


def test_debian_tree() -> None:
    pools = load_fpm_config(DEBIAN_CONF, root=str(DEBIAN))
    assert pools == DEBIAN_POOLS
    assert list(pools) == ["api", "shop", "www"]  # php-fpm's order: glob order


def test_root_resolves_includes_and_absolute_symlinks_inside_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(DEBIAN, root)
    conf_d = root / "etc/php/8.2/fpm/conf.d"
    # An absolute link as a container holds it: it points inside the root,
    # not at the host's /etc (which has no such file).
    (conf_d / "30-unlimited.ini").symlink_to("/etc/php/8.2/mods-available/unlimited.ini")
    pools = load_fpm_config(DEBIAN_CONF, root=str(root))
    assert pools["api"].memory_limit is None  # memory_limit = -1
    assert {n: p for n, p in pools.items() if n != "api"} == {
        n: p for n, p in DEBIAN_POOLS.items() if n != "api"
    }
    # Messages name the in-root path.
    (root / "etc/php/8.2/fpm/pool.d/www.conf").write_text("[www]\npm.max_children = many\n")
    assert load_error(DEBIAN_CONF, root) == (
        "/etc/php/8.2/fpm/pool.d/www.conf:2: bad value for pm.max_children: "
        "'many' is not an integer"
    )


def test_docker_layout_include_relative_to_prefix() -> None:
    pools = load_fpm_config("/usr/local/etc/php-fpm.conf", root=str(FIXTURES / "phpfpm/docker"))
    assert pools == {
        "www": PoolSettings(
            name="www",
            pm="dynamic",
            max_children=5,
            start_servers=2,
            min_spare_servers=1,
            max_spare_servers=3,
            max_requests=0,
            listen="9000",  # zz-docker.conf comes last
            status_path=None,
            memory_limit=512 * M,  # php/conf.d; php.ini-production is not read
        )
    }


def test_current_section_carries_across_includes(tmp_path: Path) -> None:
    # php-fpm keeps one current section: an included file without a header
    # continues the including one, and lines after an include continue the
    # last section the included files opened (checked with php-fpm 8.2 -tt).
    write_tree(
        tmp_path,
        {
            "fpm/php-fpm.conf": (
                "[global]\ninclude = pools/*.conf\npm.max_requests = 7\n"
                "[gamma]\ninclude = /fpm/common/gamma.conf\n"
            ),
            "fpm/pools/a.conf": "[alpha]\npm = static\n[beta]\npm = static\n",
            "fpm/common/gamma.conf": "pm = dynamic\npm.min_spare_servers = 2\n"
            "pm.max_spare_servers = 7\npm.start_servers = 0\n",
        },
    )
    pools = load_fpm_config("/fpm/php-fpm.conf", root=str(tmp_path))
    assert {n: (p.pm, p.max_requests) for n, p in pools.items()} == {
        "alpha": ("static", 0),
        "beta": ("static", 7),
        "gamma": ("dynamic", 0),
    }
    assert pools["gamma"].start_servers == 4  # php-fpm's default: 2 + (7 - 2) / 2


def test_memory_limit_falls_back_to_php_default(tmp_path: Path) -> None:
    write_tree(tmp_path, {"fpm/php-fpm.conf": "[w]\npm = static\n"})
    pools = load_fpm_config("/fpm/php-fpm.conf", root=str(tmp_path))
    assert pools["w"].memory_limit == 128 * M


# -------------------------------------------------------------- error cases


def test_missing_main_file(tmp_path: Path) -> None:
    assert load_error("/etc/php-fpm.conf", tmp_path) == (
        "/etc/php-fpm.conf: cannot read: No such file or directory"
    )


def test_malformed_line_in_included_file(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "fpm/php-fpm.conf": "[global]\ninclude=/fpm/pool.d/*.conf\n",
            "fpm/pool.d/www.conf": "[www]\n; fine\npm = static\npm.max_children 5\n",
        },
    )
    assert load_error("/fpm/php-fpm.conf", tmp_path) == (
        "/fpm/pool.d/www.conf:4: malformed line, expected 'key = value'"
    )


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ("pm.max_children = 5x", "bad value for pm.max_children: '5x' is not an integer"),
        ("pm.max_requests = 1e3", "bad value for pm.max_requests: '1e3' is not an integer"),
        ("pm = adaptive", "bad value for pm: 'adaptive' is not one of static, dynamic, ondemand"),
        (
            "php_value[memory_limit] = lots",
            "bad value for memory_limit: 'lots' is not a size (bytes, or with a K, M or G suffix)",
        ),
        # Numbers php-fpm keeps in a C int, PHP in a 64-bit one: beyond, the
        # value is garbage (and 400 digits do not render as a float).
        (
            "pm.max_children = " + "9" * 400,
            f"bad value for pm.max_children: '{'9' * 36}... is out of range (0 to 2147483647)",
        ),
        (
            "pm.max_requests = 2147483648",
            "bad value for pm.max_requests: '2147483648' is out of range (0 to 2147483647)",
        ),
        (
            "pm.max_children = -1",
            "bad value for pm.max_children: '-1' is out of range (0 to 2147483647)",
        ),
        (
            "php_admin_value[memory_limit] = " + "9" * 400 + "M",
            f"bad value for memory_limit: '{'9' * 36}... is out of range (at most 2**62 bytes)",
        ),
        (
            "php_value[memory_limit] = 4294967297G",
            "bad value for memory_limit: '4294967297G' is out of range (at most 2**62 bytes)",
        ),
    ],
)
def test_bad_values(tmp_path: Path, setting: str, reason: str) -> None:
    write_tree(tmp_path, {"fpm/php-fpm.conf": f"[www]\nlisten = 9000\n{setting}\n"})
    assert load_error("/fpm/php-fpm.conf", tmp_path) == f"/fpm/php-fpm.conf:3: {reason}"


def test_bad_memory_limit_in_php_ini(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {"fpm/php-fpm.conf": "[www]\npm = static\n", "fpm/php.ini": "[PHP]\nmemory_limit = 1.5G\n"},
    )
    assert load_error("/fpm/php-fpm.conf", tmp_path) == (
        "/fpm/php.ini:2: bad value for memory_limit: "
        "'1.5G' is not a size (bytes, or with a K, M or G suffix)"
    )


def test_include_loop(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "fpm/php-fpm.conf": "[global]\ninclude = a.conf\n",
            "fpm/a.conf": "[www]\npm = static\ninclude = /fpm/b.conf\n",
            "fpm/b.conf": "; back to a\ninclude = /fpm/a.conf\n",
        },
    )
    assert load_error("/fpm/php-fpm.conf", tmp_path) == (
        "/fpm/b.conf:2: include loop: /fpm/a.conf -> /fpm/b.conf -> /fpm/a.conf"
    )


def test_include_depth_limit(tmp_path: Path) -> None:
    # php-fpm itself refuses more than 5 nested files (checked with 8.2).
    files = {f"fpm/{i}.conf": f"include = /fpm/{i + 1}.conf\n" for i in range(6)}
    write_tree(tmp_path, {**files, "fpm/6.conf": "[www]\npm = static\n"})
    assert load_fpm_config("/fpm/2.conf", root=str(tmp_path))["www"].pm == "static"
    assert load_error("/fpm/1.conf", tmp_path) == (
        f"/fpm/{MAX_INCLUDE_DEPTH}.conf:1: includes nested more than {MAX_INCLUDE_DEPTH} files deep"
    )


def test_include_count_limit(tmp_path: Path) -> None:
    # 10 files per level, each including all 10 of the next level: 40 files
    # on disk, 11111 reads four levels down. Read depth first, each l1 file
    # costs 1111 reads: the guard stops at the 10th (read 10001).
    files = {"fpm/php-fpm.conf": "include = l1/*.conf\n"}
    for level in range(1, 5):
        for i in range(10):
            files[f"fpm/l{level}/{i}.conf"] = f"include = l{level + 1}/*.conf\n"
    write_tree(tmp_path, files)
    assert MAX_FILES == 10_000
    assert load_error("/fpm/php-fpm.conf", tmp_path) == (
        "/fpm/l1/9.conf: more than 10000 files in the configuration"
    )


def test_relative_main_path_is_refused(tmp_path: Path) -> None:
    assert load_error("php-fpm.conf", tmp_path) == "php-fpm.conf: not an absolute path"


# ------------------------------------------------------------- real php-fpm

STATIC_POOL, DYNAMIC_POOL = "static_pool", "dynamic_pool"


@pytest.fixture
def fpm_conf(tmp_path: Path) -> Path:
    """A config php-fpm accepts, with a relative include and $pool; its
    directory is passed as php-fpm's prefix (-p) so relative paths agree."""
    d = tmp_path / "fpm"
    write_tree(
        d,
        {
            "php-fpm.conf": (
                global_section(d) + "include = pool.d/*.conf\n"
                "; php-fpm keeps the current section: this goes to the last pool included\n"
                "pm.max_requests = 250\n"
            ),
            "pool.d/a.conf": (
                f"[{STATIC_POOL}]\n"
                f"listen = 127.0.0.1:{free_port()}\n"
                "pm = static\n"
                "pm.max_children = 2\n"
                "pm.status_path = /status-$pool\n"
                "php_admin_value[memory_limit] = 96M\n"
            ),
            "pool.d/b.conf": (
                f"[{DYNAMIC_POOL}]\n"
                'listen = "$pool.sock" ; relative to the prefix\n'
                "pm = dynamic\n"
                "pm.max_children = 4\n"
                "pm.min_spare_servers = 1\n"
                "pm.max_spare_servers = 3\n"
                "php_value[memory_limit] = 48M\n"
            ),
        },
    )
    return d / "php-fpm.conf"


def fpm_command(conf: Path, *args: str) -> list[str]:
    return [require_binary("php-fpm8.2"), *args, "-R", "-p", str(conf.parent), "-y", str(conf)]


def parse_fpm_dump(text: str) -> dict[str, dict[str, str]]:
    """`php-fpm -tt` output ('[date] NOTICE: [pool]' then
    '[date] NOTICE: \\tkey = value' lines): {section: {key: value}}."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        rest = line.partition("NOTICE: ")[2]
        header = re.fullmatch(r"\[(.+)\]", rest)
        setting = re.fullmatch(r"\t(\S+) = (.*)", rest)
        if header:
            current = sections.setdefault(header.group(1), {})
        elif setting and current is not None:
            current[setting.group(1)] = setting.group(2)
    return sections


def dump_view(d: dict[str, str]) -> dict[str, object]:
    """The settings compared, from one pool of php-fpm's -tt dump."""
    spares = ("pm.start_servers", "pm.min_spare_servers", "pm.max_spare_servers")
    limit = d.get("php_admin_value[memory_limit]") or d["php_value[memory_limit]"]
    return {
        "pm": d["pm"],
        "max_children": int(d["pm.max_children"]),
        "spares": tuple(int(d[k]) for k in spares) if d["pm"] == "dynamic" else None,
        "max_requests": int(d["pm.max_requests"]),
        "listen": d["listen"],
        "status_path": None if d["pm.status_path"] == "undefined" else d["pm.status_path"],
        "memory_limit": parse_php_size(limit),
    }


def parser_view(s: PoolSettings) -> dict[str, object]:
    """The same settings from the parser."""
    spares = (s.start_servers, s.min_spare_servers, s.max_spare_servers)
    return {
        "pm": s.pm,
        "max_children": s.max_children,
        "spares": spares if s.pm == "dynamic" else None,
        "max_requests": s.max_requests,
        "listen": s.listen,
        "status_path": s.status_path,
        "memory_limit": s.memory_limit,
    }


@pytest.mark.live
def test_parser_agrees_with_php_fpm_dump(fpm_conf: Path) -> None:
    result = subprocess.run(fpm_command(fpm_conf, "-tt"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    dump = parse_fpm_dump(result.stderr)
    pools = load_fpm_config(str(fpm_conf))
    assert set(pools) == set(dump) - {"global"} == {STATIC_POOL, DYNAMIC_POOL}
    views = {name: parser_view(s) for name, s in pools.items()}
    assert views == {name: dump_view(dump[name]) for name in pools}
    # The values both agree on are the intended ones, not a shared mistake.
    assert views[DYNAMIC_POOL] == {
        "pm": "dynamic",
        "max_children": 4,
        "spares": (2, 1, 3),  # start_servers: php-fpm's default, min + (max - min) / 2
        "max_requests": 250,  # from the line after the include in php-fpm.conf
        "listen": f"{fpm_conf.parent}/{DYNAMIC_POOL}.sock",  # $pool, made absolute
        "status_path": None,
        "memory_limit": 48 * M,
    }
    assert (views[STATIC_POOL]["status_path"], views[STATIC_POOL]["max_requests"]) == (
        f"/status-{STATIC_POOL}",
        0,
    )


def worker_pools(master: int) -> set[str]:
    """Pool names in the titles of master's children ('php-fpm: pool NAME')."""
    names = set()
    for child in psutil.Process(master).children():
        try:
            role = fpm_role(child.name(), child.cmdline)
        except psutil.NoSuchProcess:
            continue
        if role is not None and not role.is_master:
            names.add(role.name)
    return names


@pytest.fixture
def fpm_master(fpm_conf: Path) -> Iterator[int]:
    """A running php-fpm on fpm_conf, once both pools have workers; its PID."""
    prefix = ("-p", str(fpm_conf.parent))
    with running_fpm(fpm_conf, {STATIC_POOL: 1, DYNAMIC_POOL: 1}, args=prefix) as proc:
        yield proc.pid


@pytest.mark.live
def test_running_master_pools_match_its_workers(fpm_conf: Path, fpm_master: int) -> None:
    # As the exporter does: the config path from the master's title, read
    # through /proc/PID/root.
    master = psutil.Process(fpm_master)
    role = fpm_role(master.name(), master.cmdline)
    assert role is not None and role.is_master and role.name == str(fpm_conf)
    pools = load_fpm_config(role.name, root=f"/proc/{fpm_master}/root")
    assert set(pools) == worker_pools(fpm_master) == {STATIC_POOL, DYNAMIC_POOL}
    assert pools == load_fpm_config(str(fpm_conf))


def test_a_fifo_or_a_nul_byte_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """A tenant's config must not stall the collection: a FIFO where a file is
    expected is refused at once, and a NUL byte in an include path is an error."""
    (tmp_path / "pool.d").mkdir()
    os.mkfifo(tmp_path / "pool.d" / "x.conf")
    main = tmp_path / "php-fpm.conf"
    main.write_text(f"[global]\ninclude={tmp_path}/pool.d/*.conf\n")
    with pytest.raises(FpmConfigError, match=r"x\.conf: cannot read: not a regular file"):
        load_fpm_config(str(main))
    with pytest.raises(FpmConfigError, match="embedded null byte"):
        load_fpm_config(str(main) + "\0x")


# ------------------------------------------------- hostile include patterns


def test_include_glob_follows_symlinks_inside_the_root(tmp_path: Path) -> None:
    """A directory link in a container's config tree points inside the
    container: an include pattern through it (behind a wildcard directory)
    is matched there, never against the host's directories."""
    write_tree(
        tmp_path,
        {
            "fpm/php-fpm.conf": "[global]\ninclude = /fpm/sites/*/pool/*.conf\n",
            "fpm/real/a.conf": "[www]\npm = static\npm.max_children = 3\n",
        },
    )
    (tmp_path / "fpm/sites/shop").mkdir(parents=True)
    (tmp_path / "fpm/sites/shop/pool").symlink_to("/fpm/real")  # the root's /fpm/real
    pools = load_fpm_config("/fpm/php-fpm.conf", root=str(tmp_path))
    assert pools["www"].max_children == 3


def test_include_pattern_that_walks_too_many_entries_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`include = /*/*/*/*/*.conf` would list a whole filesystem (/proc
    included) on every load: the directory entries a pattern looks at are
    bounded, for all the patterns of a load together (a config may repeat
    one), and beyond the bound the config is in error."""
    monkeypatch.setattr(exporter.phpfpm_config, "MAX_GLOB_ENTRIES", 50)
    files = {f"fpm/d{i}/x{j}": "" for i in range(5) for j in range(8)}
    include = "include = /fpm/*/*.conf\n"
    write_tree(tmp_path, {**files, "fpm/php-fpm.conf": include + include})
    assert load_error("/fpm/php-fpm.conf", tmp_path) == (
        "/fpm/php-fpm.conf:2: include /fpm/*/*.conf: more than 50 directory entries listed"
    )


def test_configuration_bytes_are_bounded_per_load(tmp_path: Path) -> None:
    """Includes may repeat a file: 17 includes of a 1 MiB file are 17 MiB
    for every load (10,000 would be 10 GiB). What one load reads is bounded."""
    big = ";" + "x" * 1022 + "\n"
    write_tree(
        tmp_path,
        {
            "fpm/big.conf": big * 1000,
            "fpm/php-fpm.conf": "[www]\npm = static\n" + "include = /fpm/big.conf\n" * 17,
        },
    )
    assert load_error("/fpm/php-fpm.conf", tmp_path) == (
        f"/fpm/big.conf: cannot read: configuration longer than {MAX_LOAD_CHARS} characters in all"
    )


def test_php_ini_chain_that_cannot_be_listed_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Looking for the php.ini chain lists directories too (a config
    directory with '[' in its name is matched as a pattern): when that
    fails, it is the config's error, never an OSError out of the load (which
    would fail the whole collection)."""
    monkeypatch.setattr(exporter.phpfpm_config, "MAX_GLOB_ENTRIES", 0)
    write_tree(tmp_path, {"fpm[1]/php-fpm.conf": "[www]\npm = static\n"})
    assert load_error("/fpm[1]/php-fpm.conf", tmp_path) == (
        "/fpm[1]/php-fpm.conf: php.ini chain /fpm[[]1]/php.ini: "
        "more than 0 directory entries listed"
    )
