"""Side by side with Debian's prometheus-process-exporter 0.7.10: the same
configs over the same live processes give the same groups with the same
numbers of processes, except the deliberate differences listed below.

Every rule names only processes this module starts (a marker in their
titles, a private binary name, kthreadd), so what the rest of the machine
runs cannot change a count between the two scrapes; our php-fpm pools
(trusted masters are grouped by title whatever the rules) are the first
deliberate difference and are left out of the comparison, then checked.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fpm import POOL_TITLE, running_fpm, write_static_config

from conftest import free_port, http_get, parse_samples, require_binary, run_cli, wait_until

pytestmark = [pytest.mark.live, pytest.mark.timeout(120)]

TAG = uuid.uuid4().hex[:6]
SLEEP = "import time; time.sleep(120)"
ZOMBIE_PARENT = "import os, time\nif os.fork() == 0:\n    os._exit(0)\ntime.sleep(120)"
WRAP = "sleep 120 & sleep 120 & sleep 120 & wait # pssx-wrap"

# Deliberate differences: (how process-exporter names it, how we do)
DIFFERENCES = {
    "php-fpm pools": "one group per trusted pool (php-fpm:POOL) and php-fpm:master, "
    "instead of the rule's group",
    "empty names": "a name that renders empty is the rule's key (process_names[I]), not ''",
}


@pytest.fixture(scope="module")
def procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The processes every config is matched against."""
    tmp = tmp_path_factory.mktemp("side")
    binary = tmp / "pssxsleep"  # comm "pssxsleep": nothing else on the machine
    shutil.copy("/bin/sleep", binary)
    py = sys.executable
    argvs = {
        "wrap": (["bash", "-c", WRAP], None),
        "zombie-parent": ([py, "-c", ZOMBIE_PARENT, "pssx-zombie-parent"], None),
        "naive": ([py, "-c", SLEEP, "naïve-pssx"], None),
        "newline": ([py, "-c", SLEEP, "pssx-nl\n"], None),
        "greek": ([py, "-c", SLEEP, "αβγ-pssx"], None),
        "literal": ([py, "-c", SLEEP, "pssx.lit[1]"], None),
        "capture": ([py, "-c", SLEEP, "pssx-cap", "--app=web", "--port=8080"], None),
        "full-path": ([str(binary), "120"], None),
        "base": (["pssxsleep", "120"], str(binary)),
        "empty-argv0": (["", "120"], str(binary)),
        "slash-argv0": (["foo/", "120"], str(binary)),
        "root-argv0": (["/", "120"], str(binary)),
    }
    started = {
        name: subprocess.Popen(argv, executable=exe, stdin=subprocess.DEVNULL)
        for name, (argv, exe) in argvs.items()
    }
    try:
        # The wrapper's three sleeps and the zombie exist before any scrape.
        def ready() -> bool:
            wrap = started["wrap"].pid
            kids = Path(f"/proc/{wrap}/task/{wrap}/children").read_text().split()
            zparent = started["zombie-parent"].pid
            zkids = Path(f"/proc/{zparent}/task/{zparent}/children").read_text().split()
            return len(kids) == 3 and len(zkids) == 1 and _state(int(zkids[0])) == "Z"

        wait_until("the wrapper's sleeps and the zombie", ready)
        yield {"binary": binary, "pids": {n: p.pid for n, p in started.items()}}
    finally:
        for p in started.values():
            p.kill()
            p.wait()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def process_exporter(config: Path, children: bool) -> dict[str, float]:
    """{groupname: num_procs} of one scrape of Debian's process-exporter."""
    binary = require_binary("prometheus-process-exporter")
    port = free_port()
    argv = [
        binary,
        f"-web.listen-address=127.0.0.1:{port}",
        "-config.path",
        str(config),
        f"-children={'true' if children else 'false'}",
        "-threads=false",
        "-gather-smaps=false",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:

        def scrape() -> str | None:
            if proc.poll() is not None:
                raise AssertionError(f"process-exporter exited: {proc.stderr.read()}")  # type: ignore[union-attr]
            try:
                status, _, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            except OSError:
                return None
            return body.decode() if status == 200 else None

        text = wait_until("process-exporter's /metrics", scrape)
    finally:
        proc.terminate()
        proc.wait(10)
    samples = parse_samples(text)
    return {
        dict(labels)["groupname"]: value
        for (name, labels), value in samples.items()
        if name == "namedprocess_namegroup_num_procs"
    }


def pss_exporter(config: Path, children: bool) -> dict[str, float]:
    """{group: processes} of one `once`, given process-exporter's flag spellings."""
    flag = f"-children={'true' if children else 'false'}"
    result = run_cli("once", "-config.path", str(config), "-procfs", "/proc", flag)
    assert result.returncode == 0, result.stderr
    samples = parse_samples(result.stdout)
    return {
        dict(labels)["group"]: value
        for (name, labels), value in samples.items()
        if name == "pss_group_processes"
    }


def side_by_side(tmp: Path, rules: list[dict[str, Any]], children: bool) -> dict[str, float]:
    config = tmp / f"config-{uuid.uuid4().hex[:6]}.yaml"
    config.write_text(yaml.safe_dump({"process_names": rules}, allow_unicode=True))
    theirs = process_exporter(config, children)
    ours = pss_exporter(config, children)
    # Deliberate difference: trusted php-fpm pools (anyone's on this machine).
    ours = {g: n for g, n in ours.items() if not g.startswith("php-fpm:")}
    assert ours == theirs
    return ours


# ------------------------------------------------------------------ styles

STYLES: dict[str, list[dict[str, Any]]] = {
    # comm lists; the default name {{.ExeBase}} over odd argv[0]s
    "comm": [{"comm": ["pssxsleep"]}],
    # exe: a path must equal argv[0], a basename matches argv[0]'s
    "exe": [{"name": "exe-full", "exe": ["@BINARY@"]}, {"name": "exe-base", "exe": ["pssxsleep"]}],
    # cmdline: all regexes must match, named captures in .Matches
    "cmdline": [
        {
            "name": "cap:{{.Matches.app}}:{{.Matches.port}}",
            "cmdline": [r"pssx-cap --app=(?P<app>\w+)", r"--port=(?P<port>\d+)"],
        },
        {"name": "w:{{.Matches.w}}", "cmdline": [r"(?P<w>\w+)-pssx"]},  # \w is ASCII
        {"name": "nl", "cmdline": ["pssx-nl$"]},  # $ is not before a trailing newline
        {"name": "nl-end", "cmdline": ["pssx-nl\n$"]},
    ],
    "regex-syntax": [
        {"name": "lit", "cmdline": [r"\Qpssx.lit[1]\E"]},
        {"name": "greek:{{.Matches.g}}", "cmdline": [r"(?P<g>\p{Greek}+)-pssx"]},
        {"name": "pl:{{.Matches.l}}", "cmdline": [r"(?P<l>\pL+)-pssx"]},
        {"name": "hex", "cmdline": [r"pssx\x{2d}nl"]},
    ],
    # each template field, and pipelines
    "templates": [
        {
            "name": '{{.Matches.app | printf "%s-x"}}|{{len .Cgroups}}|{{.Username}}|{{.ExeFull}}',
            "cmdline": [r"pssx-cap --app=(?P<app>\w+)"],
        },
        {"name": "{{.Comm}}:{{.PID}}:{{.StartTime}}:{{.ExeBase}}", "comm": ["pssxsleep"]},
        {"name": "{{.Cgroups}}|{{index .Cgroups 0}}", "cmdline": ["pssx-nl"]},
        {
            "name": '{{printf "%q/%5.3s/%d" .Comm .ExeBase (len .Matches)}}'
            '{{if eq .Comm "pssxsleep"}}!{{else}}?{{end}}',
            "cmdline": [r"pssx\.lit|(?P<g>\p{Greek}+)-pssx"],
        },
        {"name": "{{.Matches}}", "cmdline": [r"(n)(?P<x>a)(?P<y>z)?ïve-pssx"]},
    ],
    # kernel threads an explicit comm rule names: counted (children off:
    # with it, every kernel thread joins kthreadd, a count that moves)
    "kernel-threads": [{"comm": ["kthreadd"]}],
}


@pytest.mark.parametrize("style", STYLES)
def test_same_groups_as_process_exporter(tmp_path: Path, procs: dict[str, Any], style: str) -> None:
    rules = yaml.safe_load(
        yaml.safe_dump(STYLES[style], allow_unicode=True).replace("@BINARY@", str(procs["binary"]))
    )
    groups = side_by_side(tmp_path, rules, children=False)
    assert groups, "no group at all: the test would prove nothing"
    if style == "comm":
        # Go's filepath.Base: "" is ".", "foo/" is "foo", "/" stays "/"
        assert groups == {"pssxsleep": 2, ".": 1, "foo": 1, "/": 1}
    if style == "cmdline":
        assert groups == {"cap:web:8080": 1, "w:ve": 1, "nl-end": 1}


@pytest.mark.parametrize("children", [True, False])
def test_children_join_their_parents_group(
    tmp_path: Path, procs: dict[str, Any], children: bool
) -> None:
    rules = [
        {"name": "wrap", "cmdline": ["pssx-wrap"]},
        {"name": "zparent", "cmdline": ["pssx-zombie-parent"]},
        {"comm": ["pssxsleep"]},
    ]
    groups = side_by_side(tmp_path, rules, children)
    # The bash wrapper and its 3 sleeps; the parent and its zombie.
    assert groups["wrap"] == (4 if children else 1)
    assert groups["zparent"] == (2 if children else 1)


# ---------------------------------------------------- deliberate differences


def test_empty_names_are_the_rules_key(tmp_path: Path, procs: dict[str, Any]) -> None:
    rules = [
        {"name": "{{.Matches.e}}", "cmdline": ["pssx-cap(?P<e>)"]},
        {"name": '{{index .Matches "nope"}}', "cmdline": ["pssx-nl"]},
    ]
    config = tmp_path / "empty.yaml"
    config.write_text(yaml.safe_dump({"process_names": rules}))
    assert process_exporter(config, False) == {"": 2}  # two rules merged into one nameless group
    ours = pss_exporter(config, False)
    assert {g: n for g, n in ours.items() if not g.startswith("php-fpm:")} == {
        "process_names[0]": 1,
        "process_names[1]": 1,
    }


def test_php_fpm_pools_are_grouped_by_pool(tmp_path: Path) -> None:
    pool = f"pssx_{TAG}"
    conf = write_static_config(tmp_path, {pool: 2})
    with running_fpm(conf, {pool: 2}):
        rules = [{"name": "fpm", "cmdline": [f"{POOL_TITLE}{pool}|master process \\({conf}\\)"]}]
        config = tmp_path / "fpm.yaml"
        config.write_text(yaml.safe_dump({"process_names": rules}))
        theirs = process_exporter(config, True)
        ours = pss_exporter(config, True)
    assert theirs == {"fpm": 3}  # the master and its 2 workers, by the rule
    # here: the workers are their pool's group; the master is in php-fpm:master
    # (with any other trusted master on the machine); the rule names no one
    assert ours.get(f"php-fpm:{pool}") == 2
    assert ours.get("php-fpm:master", 0) >= 1
    assert "fpm" not in ours
