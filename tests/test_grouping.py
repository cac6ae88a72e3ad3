"""process_names rules (process-exporter's format) and php-fpm title grouping,
matched against a small in-memory ProcessView."""

from __future__ import annotations

import datetime
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.classify import Grouper
from exporter.config import Config, ConfigError, build_config
from exporter.discovery import LiveProcess
from exporter.grouping import (
    FpmMaster,
    FpmRole,
    compile_go_regex,
    compile_rule,
    fpm_pool_groups,
    fpm_role,
    outside_fpm_groups,
)
from exporter.phpfpm import Loads, PhpFpmSource
from exporter.phpfpm_config import PoolSettings
from exporter.procfs import Stat, parse_cmdline
from exporter.sources import Cycle, pool_refs
from exporter.tracking import Proc

from conftest import FIXTURES


@dataclass(frozen=True)
class FakeProc:
    """A ProcessView with every attribute given up front."""

    comm: str
    cmdline: tuple[str, ...] = ()
    pid: int = 4242
    starttime: int = 1000
    username: str = "www-data"
    cgroups: tuple[str, ...] = ("/system.slice/app.service",)
    cwd: str = "/srv/app"
    start_time: datetime.datetime = field(
        default=datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
    )


class Guarded:
    """A ProcessView that fails the test when grouping reads a forbidden attribute."""

    def __init__(self, proc: FakeProc, *forbidden: str) -> None:
        self._proc, self._forbidden = proc, forbidden

    def __getattr__(self, name: str) -> Any:
        if name in self._forbidden:
            raise AssertionError(f"grouping read {name}, which the rule does not need")
        return getattr(self._proc, name)


PY_APP = FakeProc("python3", ("/usr/bin/python3", "/srv/app/app.py", "--port", "8080"))


def name_of(rule: dict[str, Any], proc: Any) -> str | None:
    return compile_rule(rule).match(proc)


def first_match(config: Config, proc: Any) -> str | None:
    """The group name the first matching rule gives, as the collector does."""
    for rule in config.process_names:
        name = rule.match(proc)
        if name is not None:
            return name
    return None


# --------------------------------------------------------------- matchers


@pytest.mark.parametrize(
    ("comm", "expected"), [("nginx", "nginx"), ("apache2", "apache2"), ("httpd", None)]
)
def test_comm_list_is_an_or(comm: str, expected: str | None) -> None:
    rule = {"name": "{{.Comm}}", "comm": ["nginx", "apache2"]}
    assert name_of(rule, FakeProc(comm, ("/usr/sbin/" + comm,))) == expected


def test_comm_is_exact_not_a_prefix() -> None:
    assert name_of({"comm": ["php"]}, FakeProc("php-fpm8.2", ("php-fpm: pool www",))) is None


@pytest.mark.parametrize(
    ("exe", "argv0", "matches"),
    [
        # a basename matches argv[0] in any directory, or bare
        ("python3", "/usr/bin/python3", True),
        ("python3", "python3", True),
        ("python3", "/usr/bin/python3.11", False),
        # a path must equal argv[0]
        ("/usr/bin/python3", "/usr/bin/python3", True),
        ("/usr/bin/python3", "/usr/local/bin/python3", False),
        ("/usr/bin/python3", "python3", False),
    ],
)
def test_exe_basename_or_full_path_against_argv0(exe: str, argv0: str, matches: bool) -> None:
    proc = FakeProc("python3", (argv0, "app.py"))
    assert name_of({"name": "hit", "exe": [exe]}, proc) == ("hit" if matches else None)


def test_exe_is_argv0_not_comm() -> None:
    # A process that rewrites its title: argv[0] no longer names the binary.
    proc = FakeProc("postgres", ("postgres: checkpointer",))
    assert name_of({"exe": ["postgres"]}, proc) is None
    assert name_of({"exe": ["postgres: checkpointer"]}, proc) == "postgres: checkpointer"


def test_exe_never_matches_an_empty_cmdline() -> None:
    assert name_of({"exe": ["worker"]}, FakeProc("worker", ())) is None


def test_cmdline_regexes_all_must_match() -> None:
    both = {"name": "app", "cmdline": [r"app\.py", r"--port \d+"]}
    assert name_of(both, PY_APP) == "app"
    assert name_of(both, FakeProc("python3", ("/usr/bin/python3", "/srv/app/app.py"))) is None


def test_cmdline_regex_searches_the_space_joined_argv() -> None:
    # Not anchored, and argv is joined with single spaces before matching.
    assert name_of({"name": "x", "cmdline": ["port"]}, PY_APP) == "x"
    assert name_of({"name": "x", "cmdline": [r"app\.py --port 8080$"]}, PY_APP) == "x"
    assert name_of({"name": "x", "cmdline": ["^app"]}, PY_APP) is None


def test_cmdline_dot_plus_skips_processes_without_argv() -> None:
    rule = {"name": "{{.Comm}}", "cmdline": [".+"]}
    assert name_of(rule, FakeProc("kthreadd", ())) is None
    assert name_of(rule, PY_APP) == "python3"


def test_all_matchers_of_a_rule_are_anded() -> None:
    rule = {"name": "ok", "comm": ["python3"], "exe": ["python3"], "cmdline": ["app"]}
    assert name_of(rule, PY_APP) == "ok"
    assert name_of(rule, FakeProc("gunicorn", PY_APP.cmdline)) is None
    assert name_of(rule, FakeProc("python3", ("/usr/bin/python2", "app.py"))) is None
    assert name_of(rule, FakeProc("python3", ("/usr/bin/python3", "tool.py"))) is None


def test_comm_rule_does_not_read_cmdline_or_owner() -> None:
    proc = Guarded(PY_APP, "cmdline", "username", "cgroups", "cwd", "start_time")
    assert name_of({"name": "{{.Comm}}", "comm": ["python3"]}, proc) == "python3"


# ---------------------------------------------------------------- captures


def test_named_capture_in_matches() -> None:
    rule = {"name": "py:{{.Matches.script}}", "cmdline": [r"/(?P<script>[\w-]+)\.py"]}
    assert name_of(rule, PY_APP) == "py:app"


def test_go_named_capture_spelling() -> None:
    # Go's RE2 also accepts (?<name>...), which Python spells (?P<name>...).
    rule = {"name": "{{.Matches.script}}:{{.Matches.port}}", "cmdline": [r"(?<script>\w+)\.py"]}
    rule["cmdline"].append(r"--port (?<port>\d+)")
    assert name_of(rule, PY_APP) == "app:8080"


def test_missing_capture_renders_no_value() -> None:
    # Go's text/template prints "<no value>" for a missing map key.
    assert name_of({"name": "{{.Matches.nope}}", "cmdline": ["app"]}, PY_APP) == "<no value>"
    assert name_of({"name": "{{.Matches.nope}}", "comm": ["python3"]}, PY_APP) == "<no value>"


def test_unmatched_optional_capture_is_empty() -> None:
    rule = {"name": "[{{.Matches.debug}}]", "cmdline": [r"app\.py(?P<debug> --debug)?"]}
    assert name_of(rule, PY_APP) == "[]"


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        (r"\(?<tag>", "(<tag>", True),  # an optional literal "(" then "<tag>": no capture
        (r"[(?<]x", "Px", False),  # a class of "(", "?" and "<"
        (r"\\z", "C:\\z", True),  # a literal backslash then "z": not the \z anchor
        # Go's RE2 semantics, which Python's re does not share:
        (r"^\w+$", "naïve", False),  # \w is ASCII
        (r"^na\b", "naïve", True),  # \b too: ï is no word character
        (r"x$", "x\n", False),  # $ is the end of the text, not before a trailing newline
        (r"^\pL+$", "naïve", True),
        (r"^\p{Greek}+$", "αβγ", True),
        (r"^\Qa.b\E$", "a.b", True),
        (r"^\Qa.b\E$", "axb", False),
        (r"^\x{41}$", "A", True),
        (r"^[[:alpha:]]+$", "abc", True),
        (r"(?U)a+", "aaa", True),
        (r"(?i)PHP", "php", True),
    ],
)
def test_regexes_mean_what_they_mean_in_go(pattern: str, text: str, matches: bool) -> None:
    # The same pattern means the same thing in Go's RE2 and here.
    assert (compile_go_regex(pattern).captures(text.encode()) is not None) is matches


def test_matches_holds_what_process_exporter_stores() -> None:
    # Go's SubexpNames: "" for the whole match and each unnamed group (the
    # last one wins), an unmatched group is "".
    rule = {"name": "{{.Matches}}", "cmdline": [r"(/srv)(?P<app>/app)(?P<opt>--x)?"]}
    assert name_of(rule, PY_APP) == "map[:/srv app:/app opt:]"


# --------------------------------------------------------------- templates


def test_default_name_is_exe_base() -> None:
    assert name_of({"comm": ["python3"]}, PY_APP) == "python3"
    assert name_of({"name": "", "comm": ["python3"]}, PY_APP) == "python3"


def test_exe_base_falls_back_to_comm_without_argv() -> None:
    zombie = FakeProc("worker", ())
    assert name_of({"name": "{{.ExeBase}}|{{.ExeFull}}", "comm": ["worker"]}, zombie) == (
        "worker|worker"
    )


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{.Comm}}", "python3"),
        ("{{.ExeBase}}", "python3"),
        ("{{.ExeFull}}", "/usr/bin/python3"),
        ("{{.Username}}", "www-data"),
        ("{{ .Comm }}", "python3"),
        ("{{.Username}}/{{.Comm}}:{{.ExeFull}}", "www-data/python3:/usr/bin/python3"),
        ("app  {{- .Comm -}}  x", "apppython3x"),
        ("app  {{- .Comm }}  x", "apppython3  x"),
        ("app  {{ .Comm -}}  x", "app  python3x"),
    ],
)
def test_name_templates(template: str, expected: str) -> None:
    assert name_of({"name": template, "comm": ["python3"]}, PY_APP) == expected


@pytest.mark.live
def test_a_non_utf8_cwd_is_decoded_as_comm_and_cmdline_are(tmp_path: Path) -> None:
    """Review finding 3: a tenant's `mkdir $'\\xff'; cd` gave a lone surrogate
    in {{.Cwd}}, a label no exposition can encode (every /metrics failed)."""
    cwd = os.path.join(os.fsencode(tmp_path), b"\xff-dir")
    os.mkdir(cwd)
    with subprocess.Popen(["sleep", "60"], cwd=cwd) as sleeper:
        try:
            proc = LiveProcess("/proc", sleeper.pid, "sleep", 0)
            name = name_of({"name": "{{.Cwd}}", "comm": ["sleep"]}, proc)
        finally:
            sleeper.kill()
    assert name == f"{tmp_path}/\ufffd-dir"
    assert name is not None and name.encode("utf-8")


def test_a_non_utf8_username_is_decoded_as_comm_and_cmdline_are() -> None:
    """pwd decodes a non-UTF-8 name (from NSS) with surrogateescape."""
    proc = FakeProc("python3", username=b"\xffweb".decode("utf-8", "surrogateescape"))
    assert name_of({"name": "{{.Username}}", "comm": ["python3"]}, proc) == "\ufffdweb"


def test_template_fields_are_read_only_when_used() -> None:
    proc = Guarded(PY_APP, "cmdline", "cgroups", "cwd", "start_time")
    assert name_of({"name": "{{.Username}}", "comm": ["python3"]}, proc) == "www-data"


# ------------------------------------------------------------- rule order


def test_first_matching_rule_wins() -> None:
    config = build_config(
        {
            "process_names": [
                {"name": "never", "comm": ["nginx"]},
                {"name": "first", "cmdline": ["app"]},
                {"name": "second", "comm": ["python3"]},
            ]
        },
        "test.yaml",
    )
    assert first_match(config, PY_APP) == "first"
    assert first_match(config, FakeProc("python3", ("/usr/bin/python3", "other.py"))) == "second"
    assert first_match(config, FakeProc("bash", ("-bash",))) is None


def test_built_in_config_groups_by_comm() -> None:
    config = build_config({}, "built-in config")
    assert first_match(config, PY_APP) == "python3"
    assert first_match(config, FakeProc("kworker/0:1", ())) is None


# A process-exporter config as its README shows it, loaded unchanged.
PROCESS_EXPORTER_README = r"""
process_names:
  # comm is the second field of /proc/<pid>/stat minus parens.
  # It is the base executable name, truncated at 15 chars.
  # It cannot be modified by the program, unlike exe.
  - comm:
    - bash

  # exe is argv[0]. If no slashes, only basename of argv[0] need match.
  # If exe contains slashes, argv[0] must match exactly.
  - exe:
    - postgres
    - /usr/local/bin/prometheus

  # cmdline is a list of regexps applied to argv.
  # Each must match, and any captures are added to the .Matches map.
  - name: "{{.ExeFull}}:{{.Matches.Cfgfile}}"
    exe:
    - /usr/local/bin/process-exporter
    cmdline:
    - -config.path\s+(?P<Cfgfile>\S+)
"""


@pytest.mark.parametrize(
    ("proc", "expected"),
    [
        (FakeProc("bash", ("-bash",)), "-bash"),  # login shell: ExeBase is argv[0]'s
        (FakeProc("bash", ("/bin/bash", "/usr/local/bin/backup.sh")), "bash"),
        (FakeProc("postgres", ("/usr/lib/postgresql/15/bin/postgres", "-D", "/pg")), "postgres"),
        (FakeProc("postgres", ("postgres: 15/main: checkpointer",)), None),
        (
            FakeProc("prometheus", ("/usr/local/bin/prometheus", "--web.enable-lifecycle")),
            "prometheus",
        ),
        (FakeProc("prometheus", ("/opt/prometheus/prometheus",)), None),
        (
            FakeProc(
                "process-exporte",
                ("/usr/local/bin/process-exporter", "-config.path", "/etc/pe/all.yaml"),
            ),
            "/usr/local/bin/process-exporter:/etc/pe/all.yaml",
        ),
        (FakeProc("process-exporte", ("/usr/local/bin/process-exporter", "-procnames")), None),
        (FakeProc("process-exporte", ("/opt/process-exporter", "-config.path", "x")), None),
    ],
)
def test_process_exporter_readme_config(proc: FakeProc, expected: str | None) -> None:
    config = build_config(yaml.safe_load(PROCESS_EXPORTER_README), "readme.yaml")
    assert len(config.process_names) == 3
    assert first_match(config, proc) == expected


# ------------------------------------------------------------------ php-fpm


def argv_of(fixture: str) -> tuple[str, ...]:
    return parse_cmdline((FIXTURES / "bytes" / fixture).read_bytes())


def test_fpm_role_master() -> None:
    role = fpm_role("php-fpm8.2", lambda: argv_of("cmdline-fpm-master"))
    assert role == FpmRole(is_master=True, name="/etc/php/8.2/fpm/php-fpm.conf")


def test_fpm_role_pool_worker() -> None:
    assert fpm_role("php-fpm8.2", lambda: argv_of("cmdline-fpm-pool")) == FpmRole(False, "www")
    # official Docker images: comm is plain "php-fpm"
    assert fpm_role("php-fpm", lambda: ("php-fpm: pool api",)) == FpmRole(False, "api")


def test_fpm_role_before_title_is_set() -> None:
    # Right after exec, before php-fpm rewrites its title, argv is the command line.
    argv = ("/usr/sbin/php-fpm8.2", "--nodaemonize", "--fpm-config", "/etc/php/8.2/fpm/x.conf")
    assert fpm_role("php-fpm8.2", lambda: argv) is None
    assert fpm_role("php-fpm8.2", lambda: ()) is None


def test_fpm_role_does_not_read_cmdline_of_other_comms() -> None:
    def forbidden() -> tuple[str, ...]:
        raise AssertionError("cmdline read for a process that is not php-fpm")

    assert fpm_role("bash", forbidden) is None
    assert fpm_role("php", forbidden) is None  # php-cli, not php-fpm


MASTER_CONF = "/etc/php/8.2/fpm/php-fpm.conf"


def test_fpm_pool_groups_single_master() -> None:
    pools = {("www", 100): None, ("api", 100): None}
    masters = {100: FpmMaster(MASTER_CONF, 5000, 0)}
    assert fpm_pool_groups(pools, masters) == {
        ("www", 100): "php-fpm:www",
        ("api", 100): "php-fpm:api",
    }


def test_fpm_pool_groups_two_masters_different_configs() -> None:
    pools = {("www", 100): None, ("www", 200): None, ("api", 200): None}
    masters = {
        100: FpmMaster(MASTER_CONF, 900, 0),
        200: FpmMaster("/etc/php/7.4/fpm/php-fpm.conf", 100, 0),
    }
    assert fpm_pool_groups(pools, masters) == {
        ("www", 100): "php-fpm:www@/etc/php/8.2/fpm/php-fpm.conf",
        ("www", 200): "php-fpm:www@/etc/php/7.4/fpm/php-fpm.conf",
        ("api", 200): "php-fpm:api",  # only one master runs api: no suffix
    }


def test_fpm_pool_groups_two_masters_same_config_numbered_by_start_time() -> None:
    # e.g. two containers with the same image: the master started first is #1,
    # whatever its PID.
    pools = {("www", 100): None, ("www", 200): None}
    masters = {100: FpmMaster(MASTER_CONF, 900, 0), 200: FpmMaster(MASTER_CONF, 100, 0)}
    assert fpm_pool_groups(pools, masters) == {
        ("www", 200): "php-fpm:www#1",
        ("www", 100): "php-fpm:www#2",
    }


def test_fpm_pool_groups_a_users_master_does_not_rename_roots_pool() -> None:
    """A user may run php-fpm itself (a trusted binary) with a pool www, even
    with the system's config path in its title: the one root master keeps
    php-fpm:www, the users' masters are told apart among themselves."""
    pools = {("www", 100): None, ("www", 200): None, ("www", 300): None}
    masters = {
        100: FpmMaster(MASTER_CONF, 900, 0),
        200: FpmMaster(MASTER_CONF, 100, 1000),  # older: would have been #1
        300: FpmMaster(MASTER_CONF, 950, 1001),
    }
    assert fpm_pool_groups(pools, masters) == {
        ("www", 100): "php-fpm:www",
        ("www", 200): "php-fpm:www#1",
        ("www", 300): "php-fpm:www#2",
    }
    # Two root masters (two containers): named among all, as before.
    masters[300] = FpmMaster("/srv/b.conf", 950, 0)
    assert fpm_pool_groups(pools, masters) == {
        ("www", 200): "php-fpm:www#1",
        ("www", 100): "php-fpm:www#2",
        ("www", 300): "php-fpm:www#3",
    }


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        ("php-fpm:www", "untrusted:php-fpm:www"),
        ("php-fpm:master", "untrusted:php-fpm:master"),
        ("php-fpm8.2", "php-fpm8.2"),  # a comm: not a pool's name
        ("nginx", "nginx"),
    ],
)
def test_outside_fpm_groups(group: str, expected: str) -> None:
    assert outside_fpm_groups(group) == expected


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("a{1001}", "invalid repetition size"),
        ("(a{999}){999}", "invalid repetition size"),
        ("[[:^digit:]", "missing ]"),
        ("(unclosed", r"missing \)"),
        (r"(?<=x)y", "invalid perl operator"),  # no lookbehind in RE2
        (r"(a)\1", "invalid escape sequence"),  # nor backreferences
        ("x{2}{3}{4}" * 300, "bad repetition operator|pattern too large"),
    ],
)
def test_regexes_re2_refuses_are_load_errors(pattern: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        compile_rule({"cmdline": [pattern]})
    assert len(str(info.value)) < 200


def test_pool_overrides_keyed_by_numbers_or_booleans_are_kept() -> None:
    # YAML reads `8080:` as an int and `yes:` as a bool.
    config = build_config({"php_fpm": {"pools": {8080: {"max_children": 3}}}}, "test")
    assert config.php_fpm.pools["8080"].max_children == 3
    with pytest.raises(ConfigError, match=r"php_fpm\.pools\.True\.nope: unknown key"):
        build_config({"php_fpm": {"pools": {True: {"nope": 1}}}}, "test")


@dataclass(frozen=True)
class FpmStub:
    """classify.FpmTrust with the trust check and the last config loads given."""

    masters: dict[int, FpmMaster]
    loaded: list[tuple[str, int]]  # (pool, master pid) the last config loads named

    def trust(self, masters: dict[int, int]) -> dict[int, int]:
        return {pid: self.masters[pid].uid for pid in masters}

    def configured(self, masters: dict[int, FpmMaster]) -> list[tuple[str, int]]:
        return self.loaded


def pool_groups(
    masters: dict[int, FpmMaster],
    configured: list[tuple[str, int]],
    running: dict[int, tuple[str, int]],
    loaded: bool = True,
) -> dict[tuple[str, int], str]:
    """The group of each php-fpm pool after one cycle: classify.Grouper names
    the pools (running: {worker pid: (pool, master pid)}; configured: what the
    masters' configs name, as of the last loads unless not loaded yet), then
    PhpFpmSource.start adds the idle ones (config reads stubbed, no status page)."""
    fpm = PhpFpmSource(build_config({}, "test").php_fpm, "/proc", 15.0)
    pool = PoolSettings("www", "ondemand", 4, None, None, None, 0, None, None, None)
    settings = {(pid, name): pool for name, pid in configured}
    procs = [
        Proc(pid, Stat("php-fpm", "S", 1, 0, m.starttime), None, FpmRole(True, m.conf), True)
        for pid, m in masters.items()
    ] + [
        Proc(pid, Stat("php-fpm", "S", ppid, 0, 1), None, FpmRole(False, name), True)
        for pid, (name, ppid) in running.items()
    ]
    grouper = Grouper(100, FpmStub(masters, configured if loaded else []))
    procs, groups, view = grouper.group(procs)
    try:
        refs = pool_refs(Cycle(0.0, procs, groups, view, {}))
        pending = fpm.start(refs, view.masters, Loads(settings, {}, 0))
    finally:
        fpm.close()
    return {(r.pool, r.master_pid): r.group for r, _, _ in pending}


USER_MASTER = FpmMaster("/home/u/fpm.conf", 100, 1000)
ROOT_MASTER = FpmMaster(MASTER_CONF, 200, 0)


def test_idle_pools_are_named_by_the_one_pool_naming_rule() -> None:
    """Pools no worker runs yet (ondemand) are named by fpm_pool_groups too, so
    a pool's group does not depend on whether it is running: a user's idle
    pool www, listed first, must not take php-fpm:www from root's."""
    masters = {10: USER_MASTER, 20: ROOT_MASTER}
    configured = [("www", 10), ("www", 20)]  # the user's master first
    expected = {("www", 20): "php-fpm:www", ("www", 10): "php-fpm:www@/home/u/fpm.conf"}
    assert fpm_pool_groups(dict.fromkeys(configured), masters) == expected
    assert pool_groups(masters, configured, {}) == expected
    assert pool_groups(masters, configured, {}, loaded=False) == expected  # `once`: a first load
    # Two users' idle pools of one name: told apart both, as when they run.
    masters[20] = FpmMaster("/home/v/fpm.conf", 200, 1001)
    assert pool_groups(masters, configured, {}) == {
        ("www", 10): "php-fpm:www@/home/u/fpm.conf",
        ("www", 20): "php-fpm:www@/home/v/fpm.conf",
    }


@pytest.mark.parametrize(
    "running",
    [{}, {4242: ("www", 10)}, {4343: ("www", 20)}, {4242: ("www", 10), 4343: ("www", 20)}],
    ids=["idle", "user's running", "root's running", "both running"],
)
def test_a_pools_group_is_the_same_idle_or_running(running: dict[int, tuple[str, int]]) -> None:
    """Pools are named over the running and the configured ones: a user's
    running www cannot take php-fpm:www from root's idle www (which was then
    left out), nor is a group renamed when a pool's first worker starts."""
    masters = {10: USER_MASTER, 20: ROOT_MASTER}
    configured = [("www", 10), ("www", 20), ("api", 20)]
    assert pool_groups(masters, configured, running) == {
        ("www", 10): "php-fpm:www@/home/u/fpm.conf",
        ("www", 20): "php-fpm:www",
        ("api", 20): "php-fpm:api",
    }


def test_an_idle_pool_never_shares_a_running_pools_group() -> None:
    """Before the first config load, running pools are named among the running
    ones only; an idle pool whose name one of them holds is left out for that
    cycle, never merged into it."""
    masters = {10: USER_MASTER, 20: ROOT_MASTER}
    configured = [("www", 10), ("www", 20), ("api", 20)]
    assert pool_groups(masters, configured, {4242: ("www", 10)}, loaded=False) == {
        ("www", 10): "php-fpm:www",
        ("api", 20): "php-fpm:api",
    }
