"""Deployment artifacts, checked with the real tools this machine has.

- systemd/: `systemd-analyze verify`, `systemd-analyze security --offline=yes`
  (exposure <= 2.5, the figures docs/deployment.md states), systemd-sysusers, the
  ARGS of the default file. PID 1 here is not systemd, so the unit's sandbox is
  replayed without it: a private mount namespace shaped like ProtectSystem=strict,
  ReadOnlyPaths=/proc, ProtectHome=, PrivateTmp=, PrivateDevices=; the unit's
  capabilities for a non-root user through setpriv; seccomp filters built with
  libseccomp from the unit's own SystemCallFilter=, MemoryDenyWriteExecute= and
  RestrictAddressFamilies=. A live php-fpm pool must still be read in full from
  inside it. The unit's OOMScoreAdjust= and memory bound are replayed too: a
  cgroup with the unit's limits, the score written before the namespaces; the
  exporter must serve inside them and a leak in them must end there.
- Dockerfile: its instructions parsed and linted, its builder stage replayed into
  a temp dir (wheel, fresh venv, `pss-exporter --version`), its HEALTHCHECK run.
- deploy/kubernetes/: every manifest parsed and the fields that matter checked.

Run as a script, this file is the launcher of the replayed sandbox (`limits`,
`mounts` and `seccomp` steps, see sandbox_command).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import grp
import json
import mmap
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from fpm import global_section, running_fpm

from exporter import __version__
from exporter.cli import build_parser

from conftest import (
    ROOT,
    free_port,
    group_value,
    http_get,
    parse_samples,
    require_binary,
    running,
    running_exporter,
    running_server,
    wait_until,
)

SYSTEMD = ROOT / "systemd"
UNIT = SYSTEMD / "pss-exporter.service"
DROPIN = SYSTEMD / "oom-attribution.conf"
DROPIN_DIR = "pss-exporter.service.d"  # where it is installed, beside the unit
SYSUSERS = SYSTEMD / "sysusers.d" / "pss-exporter.conf"
DEFAULTS = SYSTEMD / "pss-exporter.default"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
KUBE = ROOT / "deploy" / "kubernetes"
DOCS = ROOT / "docs" / "deployment.md"
INSTALLED_BINARY = "/opt/pss-exporter/bin/pss-exporter"
EXPOSURE_LIMIT = 2.5
NEEDED_CAPS = {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}
DEFAULT_PORT = int(build_parser().get_default("listen").rpartition(":")[2])


# --- systemd -------------------------------------------------------------------


def unit_values(path: Path, key: str, section: str = "Service") -> list[str]:
    """Every value of `key` in `section` of a unit file or drop-in, in order."""
    current, values = "", []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        name, _, value = line.partition("=")
        if current == section and name.strip() == key:
            values.append(value.strip())
    return values


def unit_words(path: Path, key: str) -> set[str]:
    return {word for value in unit_values(path, key) for word in value.split()}


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("systemd-analyze"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


def unit_with_binary(directory: Path, dropin: bool = True) -> Path:
    """A copy of the unit whose ExecStart is this checkout's pss-exporter, with
    the drop-in installed beside it: verify checks that the binary exists, and
    the unit names /opt/pss-exporter, where the install steps put the venv."""
    text = UNIT.read_text()
    assert text.count(INSTALLED_BINARY) == 1, "ExecStart must name the installed binary once"
    binary = Path(sys.executable).with_name("pss-exporter")
    assert os.access(binary, os.X_OK), f"{binary}: the package is not installed in this venv"
    unit = directory / UNIT.name
    unit.write_text(text.replace(INSTALLED_BINARY, str(binary)))
    if dropin:
        (directory / DROPIN_DIR).mkdir()
        shutil.copy(DROPIN, directory / DROPIN_DIR / DROPIN.name)
    return unit


def exposure(root: Path, dropin: bool) -> float:
    """The overall exposure of the unit installed under root, alone: --root
    keeps drop-ins installed on this machine out."""
    system = root / "etc" / "systemd" / "system"
    system.mkdir(parents=True)
    unit_with_binary(system, dropin)
    result = analyze("security", "--offline=yes", f"--root={root}", UNIT.name)
    found = re.search(
        r"Overall exposure level for pss-exporter\.service: (\d+\.\d+)", result.stdout
    )
    assert found, result.stdout + result.stderr
    return float(found[1])


def documented_exposure() -> tuple[float, float]:
    """(unit, unit + oom-attribution.conf) as docs/deployment.md states them."""
    found = re.search(
        r"overall exposure (\d+\.\d+) \(with oom-attribution\.conf: (\d+\.\d+)\)", DOCS.read_text()
    )
    assert found, f"{DOCS} must state the exposure figures"
    return float(found[1]), float(found[2])


@pytest.mark.live
def test_unit_and_dropin_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = unit_with_binary(tmp_path)
    result = analyze("verify", str(unit))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    # The drop-in is read from the unit's directory: a bad key in it is reported.
    bad = tmp_path / DROPIN_DIR / "zz-bad.conf"
    bad.write_text("[Service]\nNoSuchSetting=yes\n")
    assert "NoSuchSetting" in analyze("verify", str(unit)).stderr


@pytest.mark.live
def test_unit_exposure_is_at_most_2_5_as_documented(tmp_path: Path) -> None:
    plain = exposure(tmp_path / "plain", dropin=False)
    with_kmsg = exposure(tmp_path / "kmsg", dropin=True)
    assert plain <= EXPOSURE_LIMIT
    assert with_kmsg <= EXPOSURE_LIMIT
    assert with_kmsg > plain  # the drop-in was read: it grants CAP_SYSLOG and /dev/kmsg
    assert documented_exposure() == (plain, with_kmsg)


@pytest.mark.live
def test_unit_runs_as_its_sysusers_user_with_only_the_needed_capabilities(
    tmp_path: Path,
) -> None:
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [require_binary("systemd-sysusers"), f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    users = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
    }
    user = unit_values(UNIT, "User")
    assert user == unit_values(UNIT, "Group") == ["pss-exporter"]
    _, _, uid, gid, _, _, shell = users[user[0]]
    assert 0 < int(uid) < 1000 and int(gid) == int(uid)
    assert shell.endswith("nologin")

    assert unit_words(UNIT, "AmbientCapabilities") == NEEDED_CAPS
    assert unit_words(UNIT, "CapabilityBoundingSet") == NEEDED_CAPS
    assert unit_words(DROPIN, "AmbientCapabilities") == {"CAP_SYSLOG"}
    # These would lower the exposure score and blind the exporter: never.
    for key in ("ProcSubset", "ProtectProc", "PrivateUsers", "PrivateNetwork", "DynamicUser"):
        assert unit_values(UNIT, key) == [], key
    assert unit_values(UNIT, "EnvironmentFile") == ["-/etc/default/pss-exporter"]
    assert unit_values(UNIT, "ExecStart") == [f"{INSTALLED_BINARY} $ARGS"]


def default_file_args() -> list[list[str]]:
    """The active ARGS and every commented example, split as systemd's $ARGS is."""
    found = re.findall(r'^#? ?ARGS="([^"]*)"$', DEFAULTS.read_text(), re.MULTILINE)
    return [value.split() for value in found]


def test_default_file_args_and_documented_flags_are_accepted() -> None:
    args = default_file_args()
    assert args[-1] == []  # the active line: the exporter's defaults
    assert len(args) >= 3
    for argv in args:
        assert build_parser().parse_args(argv).command == "serve"
    documented = re.findall(r"^#  (--[a-z.-]+)=", DEFAULTS.read_text(), re.MULTILINE)
    assert "--web.config.file" in documented
    usage = build_parser().format_help()
    assert [flag for flag in documented if flag not in usage] == []


# The replayed sandbox. Each step execs the next, so the exporter keeps the PID
# that Popen returned: `unshare --mount` (a mount namespace, as PrivateMounts=),
# `mounts` (the file system the unit sets up), setpriv (User=, the capability
# settings), `seccomp` (NoNewPrivileges= and the unit's filters), the command.
SANDBOX_USER = 65534  # nobody/nogroup: the unit's user does not exist on a test machine


def setpriv_args(caps: set[str]) -> list[str]:
    names = ",".join("+" + cap.removeprefix("CAP_").lower() for cap in sorted(caps))
    return [
        f"--reuid={SANDBOX_USER}",
        f"--regid={SANDBOX_USER}",
        "--clear-groups",
        f"--inh-caps=-all,{names}",
        f"--ambient-caps=-all,{names}",
        f"--bounding-set=-all,{names}",
    ]


def syscall_groups() -> dict[str, list[str]]:
    """systemd's own syscall groups, as `systemd-analyze syscall-filter` lists them."""
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in analyze("syscall-filter").stdout.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and current is not None:
            item = line.strip()
            if not item.startswith("#"):
                current.append(item)
        else:
            current = None
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= expand(groups[name], groups) if name.startswith("@") else {name}
    return out


def unit_allowed_syscalls() -> list[str]:
    """The allow list SystemCallFilter= lines build: the first sets it, `~` removes."""
    groups = syscall_groups()
    allowed: set[str] | None = None
    for value in unit_values(UNIT, "SystemCallFilter"):
        if value.startswith("~"):
            assert allowed is not None, "a deny list alone is weaker than this test assumes"
            allowed -= expand(value[1:].split(), groups)
        else:
            allowed = (allowed or set()) | expand(value.split(), groups)
    assert allowed, "the unit must set a SystemCallFilter allow list"
    return sorted(allowed)


def sandbox_spec() -> dict[str, object]:
    return {
        "allow": unit_allowed_syscalls(),
        "families": sorted(
            int(getattr(socket, f)) for f in unit_words(UNIT, "RestrictAddressFamilies")
        ),
        "mdwe": unit_values(UNIT, "MemoryDenyWriteExecute") == ["yes"],
    }


# The unit's settings mounts_step replays; NoNewPrivileges= comes with libseccomp.
REPLAYED = {
    "ProtectSystem": "strict",
    "ReadOnlyPaths": "/proc",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectControlGroups": "yes",
    "NoNewPrivileges": "yes",
}


def sandbox_command(command: list[str], limits: dict | None = None) -> list[str]:
    """The replay of the unit around command; with limits (see limits_step),
    first what systemd does before it sets up the namespaces."""
    for key, value in REPLAYED.items():
        assert unit_values(UNIT, key) == [value], f"the replay assumes {key}={value}"
    me = [sys.executable, str(Path(__file__).resolve())]
    first = [*me, "limits", json.dumps(limits), "--"] if limits else []
    return [
        *first,
        require_binary("unshare"),
        "--mount",
        "--propagation=private",
        "--",
        *[*me, "mounts", "--"],
        require_binary("setpriv"),
        *setpriv_args(unit_words(UNIT, "AmbientCapabilities")),
        "--",
        *[*me, "seccomp", json.dumps(sandbox_spec()), "--"],
        *command,
    ]


def run_sandboxed(
    code: str, *args: str, limits: dict | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sandbox_command([sys.executable, "-c", code, *args], limits),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@contextmanager
def sandboxed_exporter(limits: dict | None = None) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`pss-exporter serve` inside the replayed sandbox; yields (URL, process)
    once /healthz answers 200."""
    port = free_port()
    exporter = [sys.executable, "-m", "exporter", f"--web.listen-address=127.0.0.1:{port}"]
    url = f"http://127.0.0.1:{port}"
    with running_server(sandbox_command(exporter, limits), url) as proc:
        yield url, proc


@dataclass(frozen=True)
class Pool:
    name: str
    max_requests: int


@pytest.fixture
def private_pool(tmp_path: Path) -> Iterator[Pool]:
    """A php-fpm pool whose config and status socket live in this test's
    directory under /tmp (mode 0700): the unit's PrivateTmp= hides it, so only
    /proc/MASTER/root reaches them. The socket is 0660 in the sandbox user's
    group, as docs/deployment.md tells php-fpm admins to set it up."""
    pool = Pool(f"sandbox_{uuid.uuid4().hex[:8]}", 4321)
    conf = tmp_path / "php-fpm.conf"
    conf.write_text(
        global_section(tmp_path) + f"[{pool.name}]\n"
        f"listen = {tmp_path / 'fpm.sock'}\n"
        f"listen.group = {grp.getgrgid(SANDBOX_USER).gr_name}\n"
        "listen.mode = 0660\n"
        "pm = static\n"
        "pm.max_children = 2\n"
        f"pm.max_requests = {pool.max_requests}\n"
        "pm.status_path = /status\n"
    )
    with running_fpm(conf, {pool.name: 2}):
        yield pool


@pytest.mark.live
def test_exporter_reads_a_private_php_fpm_pool_inside_the_unit_sandbox(
    private_pool: Pool,
) -> None:
    group = f"php-fpm:{private_pool.name}"
    with sandboxed_exporter() as (url, proc):
        status, _, body = http_get(url + "/metrics")
        assert status == 200
        samples = parse_samples(body.decode())
        # Its config was read through /proc/MASTER/root (max_requests is only
        # there), its status socket answered through the same path.
        max_requests = private_pool.max_requests
        assert group_value(samples, "pss_phpfpm_max_requests", group) == max_requests
        assert group_value(samples, "pss_phpfpm_status_up", group) == 1
        # Workers run as root: read in full by the non-root sandbox user.
        assert group_value(samples, "pss_group_processes", group) == 2
        assert group_value(samples, "pss_group_unreadable_processes", group) == 0
        assert group_value(samples, "pss_group_pss_bytes", group) > 0
        # PrivateDevices= leaves no /dev/kmsg: OOM attribution is off.
        assert samples[("pss_exporter_source_up", frozenset({"source": "kmsg"}.items()))] == 0
        proc.terminate()
        # A syscall outside the filter would have ended it with SIGSYS.
        assert proc.wait(timeout=10) == 0, proc.stderr.read()


SANDBOX_PROBE = """
import json, mmap, os, socket, sys
out = {"tmp": os.path.exists(sys.argv[1]), "root_home": sorted(os.listdir("/root"))}
out["kmsg"] = os.path.exists("/dev/kmsg")
out["root_ro"] = bool(os.statvfs("/").f_flag & os.ST_RDONLY)
out["sys_ro"] = bool(os.statvfs("/sys/fs/cgroup").f_flag & os.ST_RDONLY)
try:
    os.close(os.open("/proc/self/comm", os.O_WRONLY))
    out["proc_write"] = 0
except OSError as exc:
    out["proc_write"] = exc.errno
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines())
out["uid"], out["cap_eff"] = status["Uid"].split()[0], status["CapEff"]
out["nnp"] = status["NoNewPrivs"]
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    out["wx"] = 0
except OSError as exc:
    out["wx"] = exc.errno
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
    out["netlink"] = 0
except OSError as exc:
    out["netlink"] = exc.errno
print(json.dumps(out))
"""


def kept_in_root_home() -> list[str]:
    kept = (Path(p) for p in (sys.base_prefix, sys.prefix, ROOT))
    return sorted({p.parts[2] for p in kept if p.is_relative_to("/root") and len(p.parts) > 2})


@pytest.mark.live
def test_sandbox_replay_confines_like_the_unit(tmp_path: Path) -> None:
    """The replay is not a no-op: what the unit takes away is gone in it."""
    result = run_sandboxed(SANDBOX_PROBE, str(tmp_path))
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen == {
        "tmp": False,  # PrivateTmp=: this test's tmp_path is not there
        "root_home": kept_in_root_home(),  # ProtectHome=: only what mounts_step keeps
        "kmsg": False,  # PrivateDevices=
        "root_ro": True,  # ProtectSystem=strict
        "sys_ro": True,  # ProtectKernelTunables=, ProtectControlGroups=
        "proc_write": 30,  # ReadOnlyPaths=/proc: EROFS, even for its own files
        "uid": str(SANDBOX_USER),
        "cap_eff": "0000000000080004",  # CAP_SYS_PTRACE | CAP_DAC_READ_SEARCH
        "nnp": "1",
        "wx": 1,  # MemoryDenyWriteExecute=: EPERM
        "netlink": 97,  # RestrictAddressFamilies=: EAFNOSUPPORT
    }
    # A syscall outside the allow list (setgroups is @privileged) kills.
    killed = run_sandboxed("import os; os.setgroups([])")
    assert killed.returncode == -signal.SIGSYS


# The exporter reports OOM kills: it must survive them (OOMScoreAdjust=) and
# must not cause one (its own memory bound).


@dataclass(frozen=True)
class OomProtection:
    score_adj: int
    memory_high: int
    memory_max: int
    swap_max: int


def systemd_bytes(value: str) -> int:
    """A systemd size such as 256M: K, M, G and T are powers of 1024."""
    factors = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(value[:-1]) * factors[value[-1]] if value[-1] in factors else int(value)


def unit_oom_protection() -> OomProtection:
    (adj,) = unit_values(UNIT, "OOMScoreAdjust")
    sizes = [unit_values(UNIT, k) for k in ("MemoryHigh", "MemoryMax", "MemorySwapMax")]
    assert all(len(v) == 1 for v in sizes), sizes
    return OomProtection(int(adj), *(systemd_bytes(v) for (v,) in sizes))


PEAK_RSS = 49 << 20  # VmHWM with 10,000 processes, docs/performance.md


def test_unit_keeps_the_exporter_killable_last_and_bounds_its_memory() -> None:
    oom = unit_oom_protection()
    # Strongly negative, not -1000 (OOM_SCORE_ADJ_MIN), which would exempt it.
    assert -1000 < oom.score_adj <= -900
    # Room for the largest measured exporter, throttled before it is killed.
    assert 2 * PEAK_RSS < oom.memory_high < oom.memory_max <= 512 << 20
    assert oom.swap_max == 0  # a leak cannot move on into swap
    for key in ("OOMScoreAdjust", "MemoryHigh", "MemoryMax", "MemorySwapMax"):
        (value,) = unit_values(UNIT, key)
        assert f"`{key}={value}`" in DOCS.read_text(), key


def apply_memory_settings(cgroup: Path, oom: OomProtection) -> None:
    """What systemd writes into the unit's cgroup. On v1 MemoryMax= becomes
    the memory limit; MemoryHigh= and MemorySwapMax= have no v1 equivalent."""
    if (cgroup / "memory.max").exists():
        settings = {"memory.high": oom.memory_high, "memory.max": oom.memory_max}
        if (cgroup / "memory.swap.max").exists():
            settings["memory.swap.max"] = oom.swap_max
    else:
        settings = {"memory.limit_in_bytes": oom.memory_max}
    for name, value in settings.items():
        (cgroup / name).write_text(str(value))
        assert int((cgroup / name).read_text()) == value, name


def cgroup_file(cgroup: Path, v2: str, v1: str) -> Path:
    return cgroup / v2 if (cgroup / v2).exists() else cgroup / v1


CAP_SYS_RESOURCE = 24


def score_shift(score_adj: int) -> int:
    """What the replay adds to every OOM score it sets. Lowering a score below
    the inherited one (0) needs CAP_SYS_RESOURCE, which containers such as the
    test machines lack (systemd then ignores OOMScoreAdjust=). The kernel
    compares scores, so shifting all of them by the same amount keeps its
    choice: the exporter still ranks below every process at the default."""
    status = dict(
        line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines()
    )
    return 0 if int(status["CapEff"], 16) >> CAP_SYS_RESOURCE & 1 else max(0, -score_adj)


def rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1])


@pytest.mark.live
def test_oom_score_and_memory_bound_take_effect_on_the_exporter(limited_cgroup: Path) -> None:
    """PID 1 here is not systemd: the unit's settings are replayed around the
    sandbox. The exporter serves inside its bound with its score, and the
    kernel ranks it below a smaller process at the default score; a leak
    inside the same bound, at the same score, is killed there."""
    oom = unit_oom_protection()
    apply_memory_settings(limited_cgroup, oom)
    shift = score_shift(oom.score_adj)
    limits = {"oom_score_adj": oom.score_adj + shift, "cgroup": str(limited_cgroup)}
    default = {"oom_score_adj": shift, "cgroup": str(limited_cgroup)}
    me = [sys.executable, str(Path(__file__).resolve())]
    with (
        sandboxed_exporter(limits) as (url, proc),
        running([*me, "limits", json.dumps(default), "--", "sleep", "60"]) as other,
    ):
        status, _, body = http_get(url + "/metrics")
        assert status == 200
        processes = [
            v for (name, _), v in parse_samples(body.decode()).items()
            if name == "pss_group_processes"
        ]  # fmt: skip
        assert sum(processes) > 0
        adj = Path(f"/proc/{proc.pid}/oom_score_adj").read_text().strip()
        assert int(adj) == oom.score_adj + shift
        assert f"/{limited_cgroup.name}\n" in Path(f"/proc/{proc.pid}/cgroup").read_text()
        comm = Path(f"/proc/{other.pid}/comm")
        wait_until("the launcher to exec sleep", lambda: comm.read_text() == "sleep\n")
        # Bigger, yet the OOM killer's last choice: the score, not the size.
        assert rss(proc.pid) > rss(other.pid)
        scores = [int(Path(f"/proc/{p}/oom_score").read_text()) for p in (proc.pid, other.pid)]
        assert scores[0] < scores[1]
        peak = cgroup_file(limited_cgroup, "memory.peak", "memory.max_usage_in_bytes")
        assert 0 < int(peak.read_text()) < oom.memory_high
    leak = run_sandboxed(
        "import sys; x = b'1' * int(sys.argv[1])", str(2 * oom.memory_max), limits=limits
    )
    assert leak.returncode == -signal.SIGKILL, leak.stderr
    events = cgroup_file(limited_cgroup, "memory.events", "memory.oom_control").read_text()
    counts = dict(line.split() for line in events.splitlines())
    assert int(counts["oom_kill"]) == 1


# Launcher steps, run as `python test_deploy.py STEP ... -- COMMAND...`.


def _mount(*args: str, pass_fds: tuple[int, ...] = ()) -> None:
    subprocess.run([require_binary("mount"), *args], check=True, pass_fds=pass_fds)


HIDDEN = ("/tmp", "/var/tmp", "/home", "/root", "/run/user")  # PrivateTmp=, ProtectHome=


def mounts_step() -> None:
    """As root in a fresh mount namespace: the file system the unit sets up.
    The interpreter, its venv and this checkout stay visible (read-only) when
    they live in a hidden directory, as BindReadOnlyPaths= would keep them."""
    hidden = [h for h in HIDDEN if os.path.isdir(h)]
    wanted = {sys.base_prefix, sys.prefix, str(ROOT)}
    keep = {
        path: os.open(path, os.O_PATH | os.O_DIRECTORY)
        for path in sorted(wanted)
        if any(path.startswith(h + "/") for h in hidden)
        and not any(path.startswith(other + "/") for other in wanted)
    }
    # PrivateTmp=, ProtectHome= (empty and inaccessible).
    for path in hidden:
        mode = "1777" if path.endswith("/tmp") else "000"
        _mount("-t", "tmpfs", "-o", f"mode={mode},nosuid,nodev", "tmpfs", path)
    for path, fd in keep.items():
        os.makedirs(path)
        _mount("--no-canonicalize", "--rbind", f"/proc/self/fd/{fd}", path, pass_fds=(fd,))
    # PrivateDevices=: a /dev with the pseudo devices only.
    dev = Path("/tmp/.dev")
    dev.mkdir()
    _mount("-t", "tmpfs", "-o", "mode=755,nosuid", "tmpfs", str(dev))
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        (dev / name).touch()
        _mount("--bind", f"/dev/{name}", str(dev / name))
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0")):
        (dev / name).symlink_to(target)
    _mount("--move", str(dev), "/dev")
    dev.rmdir()
    # ProtectSystem=strict, ReadOnlyPaths=/proc, ProtectKernelTunables=,
    # ProtectControlGroups=.
    targets = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    api = [t for t in targets if t.startswith(("/proc", "/sys"))]
    for target in ["/", *api, *keep]:
        _mount("-o", "remount,bind,ro", target)


SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_GT = 6
SCMP_CMP_MASKED_EQ = 7
SHM_EXEC = 0o100000


def scmp_errno(code: int) -> int:
    return 0x00050000 | code


class ScmpArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


@dataclass
class Rule:
    syscall: str
    action: int
    compare: list[tuple[int, int, int, int]] = field(default_factory=list)


def load_filter(default: int, rules: list[Rule]) -> None:
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(ScmpArgCmp),
    )
    lib.seccomp_load.argtypes = lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    ctx = lib.seccomp_init(default)
    for rule in rules:
        nr = lib.seccomp_syscall_resolve_name(rule.syscall.encode())
        if nr < 0:
            continue  # not a system call of this architecture
        compare = (ScmpArgCmp * len(rule.compare))(*(ScmpArgCmp(*c) for c in rule.compare))
        rc = lib.seccomp_rule_add_array(ctx, rule.action, nr, len(rule.compare), compare)
        if rc < 0:
            raise OSError(-rc, f"seccomp rule for {rule.syscall}")
    rc = lib.seccomp_load(ctx)
    lib.seccomp_release(ctx)
    if rc < 0:
        raise OSError(-rc, "seccomp_load")


def seccomp_step(spec: dict) -> None:
    """systemd's filters for the unit's settings. Unlike the unit
    (SystemCallErrorNumber=EPERM), a call outside the allow list kills the
    process, so a test cannot pass while the exporter quietly fails a call."""
    if spec["mdwe"]:  # MemoryDenyWriteExecute=, as systemd builds it
        wx, x = mmap.PROT_WRITE | mmap.PROT_EXEC, mmap.PROT_EXEC
        load_filter(
            SCMP_ACT_ALLOW,
            [
                Rule("mmap", scmp_errno(1), [(2, SCMP_CMP_MASKED_EQ, wx, wx)]),
                Rule("mprotect", scmp_errno(1), [(2, SCMP_CMP_MASKED_EQ, x, x)]),
                Rule("pkey_mprotect", scmp_errno(1), [(2, SCMP_CMP_MASKED_EQ, x, x)]),
                Rule("shmat", scmp_errno(1), [(2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC)]),
            ],
        )
    families = spec["families"]  # RestrictAddressFamilies=: others get EAFNOSUPPORT
    denied = [f for f in range(max(families)) if f not in families]
    load_filter(
        SCMP_ACT_ALLOW,
        [Rule("socket", scmp_errno(97), [(0, SCMP_CMP_EQ, f, 0)]) for f in denied]
        + [Rule("socket", scmp_errno(97), [(0, SCMP_CMP_GT, max(families), 0)])],
    )
    # SystemCallFilter= last: seccomp() itself is not in the allow list.
    load_filter(SCMP_ACT_KILL_PROCESS, [Rule(name, SCMP_ACT_ALLOW) for name in spec["allow"]])


def limits_step(spec: dict) -> None:
    """As root, before the namespaces, as systemd does for OOMScoreAdjust=
    (lowering it needs CAP_SYS_RESOURCE; ReadOnlyPaths=/proc would forbid
    it later) and for the unit's cgroup, whose memory settings the test wrote."""
    Path("/proc/self/oom_score_adj").write_text(str(spec["oom_score_adj"]))
    Path(spec["cgroup"], "cgroup.procs").write_text(str(os.getpid()))


def launcher(argv: list[str]) -> None:
    split = argv.index("--")
    step, params, command = argv[0], argv[1:split], argv[split + 1 :]
    if step == "limits":
        limits_step(json.loads(params[0]))
    elif step == "mounts":
        mounts_step()
    elif step == "seccomp":
        seccomp_step(json.loads(params[0]))
    else:
        raise SystemExit(f"unknown step {step}")
    os.execvp(command[0], command)


# --- Dockerfile ----------------------------------------------------------------


@dataclass
class Instruction:
    cmd: str
    flags: dict[str, str]
    args: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.cmd} must use the exec (JSON) form"
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]

    def env(self) -> dict[str, str]:
        return {k: v for i in self.all("ENV") for k, v in key_values(i.args).items()}


def key_values(text: str) -> dict[str, str]:
    """ENV/LABEL/ARG `k=v k2="v 2"` (the legacy `ENV k v` form is not used)."""
    pairs = [word.partition("=") for word in shlex.split(text)]
    assert all(sep for _, sep, _ in pairs), f"not key=value: {text}"
    return {k: v for k, _, v in pairs}


def logical_lines(text: str) -> Iterator[str]:
    """Instructions with continuation lines joined; comment lines dropped,
    also inside a continuation, as Docker does."""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"


def parse_instruction(line: str) -> Instruction:
    cmd, _, rest = line.partition(" ")
    flags = {}
    rest = rest.strip()
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        name, _, value = flag[2:].partition("=")
        flags[name] = value
        rest = rest.strip()
    return Instruction(cmd.upper(), flags, rest)


def substitute(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m[1] or m[2], m[0]), text)


def parse_dockerfile(text: str) -> list[Stage]:
    known = {"FROM", "ARG", "RUN", "COPY", "ENV", "USER", "HEALTHCHECK"}
    known |= {"ENTRYPOINT", "EXPOSE", "WORKDIR", "LABEL"}
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        ins = parse_instruction(line)
        assert ins.cmd in known, f"instruction the lint does not know: {ins.cmd}"
        if ins.cmd == "FROM":
            image, _, name = substitute(ins.args, global_args).partition(" AS ")
            stages.append(Stage(image.strip(), name.strip() or None, []))
        elif not stages:
            assert ins.cmd == "ARG", f"{ins.cmd} before the first FROM"
            global_args.update(key_values(ins.args))
        else:
            stages[-1].instructions.append(ins)
    return stages


def docker_stages() -> tuple[Stage, Stage]:
    stages = parse_dockerfile(DOCKERFILE.read_text())
    assert len(stages) == 2, "a builder stage and a final stage"
    return stages[0], stages[1]


def test_dockerfile_pins_its_base_and_keeps_builds_out_of_the_final_stage() -> None:
    builder, final = docker_stages()
    assert builder.name == "builder" and final.name is None
    # The venv links to the base's python: both stages must use the same one,
    # pinned to an exact Python release and distribution (never :latest).
    assert builder.base == final.base
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+", final.base), final.base
    assert final.all("RUN") == []  # no compiler, no pip, no package manager
    venv = builder.env()["VIRTUAL_ENV"]
    copies = final.all("COPY")
    assert [(c.flags, c.args.split()) for c in copies] == [({"from": "builder"}, [venv, venv])]
    assert final.env()["PATH"].split(":")[0] == f"{venv}/bin"
    (user,) = final.all("USER")
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    assert [e.exec_form() for e in final.all("ENTRYPOINT")] == [["pss-exporter"]]
    assert [e.args for e in final.all("EXPOSE")] == [str(DEFAULT_PORT)]
    (label,) = final.all("LABEL")
    version = substitute(
        key_values(label.args)["org.opencontainers.image.version"],
        key_values(final.all("ARG")[0].args),
    )
    assert version == __version__


def healthcheck_command(port: int) -> list[str]:
    (check,) = docker_stages()[1].all("HEALTHCHECK")
    kind, _, command = check.args.partition(" ")
    assert kind == "CMD"
    argv = json.loads(command)
    assert argv[0] == "python"  # the venv's, first on the image's PATH
    assert f"http://127.0.0.1:{DEFAULT_PORT}/healthz" in argv[-1]
    return [sys.executable, *[a.replace(f":{DEFAULT_PORT}/", f":{port}/") for a in argv[1:]]]


@pytest.mark.live
def test_dockerfile_healthcheck_passes_on_a_ready_exporter_and_fails_without_one() -> None:
    with running_exporter() as url:
        port = int(url.rpartition(":")[2])
        assert subprocess.run(healthcheck_command(port), timeout=30).returncode == 0
    assert (
        subprocess.run(healthcheck_command(free_port()), capture_output=True, timeout=30).returncode
        != 0
    )


def dockerignore_excludes(path: str) -> bool:
    """Whether Docker leaves path (relative to the context) out: the last
    matching pattern wins; a pattern also matches a path's parent directories."""
    excluded = False
    parts = path.split("/")
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        regex = re.escape(pattern.lstrip("!").strip("/"))
        regex = regex.replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def context_files(source: str) -> list[Path]:
    """The files under source (relative to the repo) that the build context holds."""
    path = ROOT / source
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [f for f in files if not dockerignore_excludes(str(f.relative_to(ROOT)))]


def test_dockerignore_sends_only_the_sources_the_builder_copies() -> None:
    builder, _ = docker_stages()
    sources = [s for c in builder.all("COPY") for s in c.args.split()[:-1]]
    assert sorted(sources) == ["README.md", "exporter/", "pyproject.toml"]
    for source in sources:
        assert context_files(source), f"{source}: excluded from the build context"
    for path in ("tests/conftest.py", ".venv/bin/python", ".git/HEAD", "docs/deployment.md"):
        assert dockerignore_excludes(path), path
    assert dockerignore_excludes("exporter/__pycache__/cli.cpython-311.pyc")
    assert not dockerignore_excludes("exporter/cli.py")


def replay_builder(stage: Stage, root: Path) -> dict[str, str]:
    """Run the builder stage's instructions with root standing for the image's
    /: COPY from the build context, WORKDIR, ENV (absolute paths moved under
    root), RUN with sh. `python` is this interpreter's base Python, as the
    image's is the base image's. Returns the environment after the stage."""
    base_bin = root / ".base-bin"
    base_bin.mkdir(parents=True)
    base_python = Path(sys.base_prefix, "bin", f"python{sys.version_info[0]}.{sys.version_info[1]}")
    for name in ("python", "python3"):
        (base_bin / name).symlink_to(base_python)
    # Only what configures network access on this machine passes through.
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_") or "proxy" in k.lower()}
    env |= {"HOME": str(root / ".home"), "PATH": f"{base_bin}:/usr/bin:/bin"}
    workdir = root

    def host(path: str) -> Path:
        return root / path.lstrip("/") if path.startswith("/") else workdir / path

    for ins in stage.instructions:
        if ins.cmd == "ENV":
            for key, value in key_values(ins.args).items():
                value = substitute(value, env)
                env[key] = str(host(value)) if value.startswith("/") else value
        elif ins.cmd == "WORKDIR":
            workdir = host(ins.args)
            workdir.mkdir(parents=True, exist_ok=True)
        elif ins.cmd == "COPY":
            *sources, dest = ins.args.split()
            for source in sources:
                for f in context_files(source):
                    rel = f.relative_to(ROOT / source) if (ROOT / source).is_dir() else f.name
                    target = host(dest) / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(f, target)
        elif ins.cmd == "RUN":
            result = subprocess.run(
                ["sh", "-c", ins.args],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert result.returncode == 0, f"RUN {ins.args}\n{result.stdout}{result.stderr}"
        else:
            raise AssertionError(f"the replay does not know {ins.cmd}")
    return env


@pytest.mark.slow
@pytest.mark.live
def test_dockerfile_builder_stage_installs_a_working_exporter(tmp_path: Path) -> None:
    builder, final = docker_stages()
    env = replay_builder(builder, tmp_path)
    venv = Path(env["VIRTUAL_ENV"])
    # The final stage runs ENTRYPOINT pss-exporter from the copied venv.
    entrypoint = venv / "bin" / final.all("ENTRYPOINT")[0].exec_form()[0]
    result = subprocess.run([entrypoint, "--version"], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == f"pss-exporter {__version__}", result.stderr
    assert not (venv / "bin" / "pip").exists()  # no installer left in the image
    (wheel,) = (tmp_path / "src" / "dist").glob("pss_exporter-*.whl")
    assert wheel.name.startswith(f"pss_exporter-{__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    modules = {f"exporter/{p.name}" for p in (ROOT / "exporter").glob("*.py")}
    assert modules <= set(names)
    assert not [n for n in names if n.startswith("tests/") or "conftest" in n]


# --- Kubernetes ------------------------------------------------------------------


def manifests() -> dict[str, list[dict]]:
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(KUBE.glob("*.yaml"))
    }


def only(kind: str) -> dict:
    (found,) = [d for docs in manifests().values() for d in docs if d["kind"] == kind]
    return found


def test_kustomization_lists_every_manifest() -> None:
    found = manifests()
    (kustomization,) = found.pop("kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(found)
    namespaces = {d["metadata"]["namespace"] for docs in found.values() for d in docs}
    assert namespaces == {kustomization["namespace"]}


def quantity(value: str) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def test_daemonset_reads_the_host_proc_read_only_with_two_capabilities() -> None:
    ds = only("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    name, _, tag = container["image"].rpartition(":")
    assert name.endswith("pss-exporter") and tag == __version__
    args = build_parser().parse_args(container["args"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for path, host in ((args.procfs, "/proc"), (args.sysfs, "/sys")):
        assert mounts[path]["readOnly"] is True
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == host
    assert not pod.get("hostPID")  # the host's processes come through /host/proc
    (port,) = container["ports"]
    assert port["containerPort"] == int(args.listen.rpartition(":")[2]) == DEFAULT_PORT
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert get["port"] in (port["name"], port["containerPort"])
    sc = container["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE", "DAC_READ_SEARCH"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    # No ambient capabilities in Kubernetes: only root holds the added ones.
    assert sc["runAsUser"] == 0
    # The runtime's default AppArmor profile denies ptrace reads of host processes.
    assert sc["appArmorProfile"] == {"type": "Unconfined"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert 0 < quantity(resources["requests"][kind]) <= quantity(resources["limits"][kind])
    assert pod["automountServiceAccountToken"] is False


def qos_class(pod: dict) -> str:
    """The pod's QoS class as Kubernetes computes it: Guaranteed when every
    container has cpu and memory limits and requests equal to them (a missing
    request defaults to its limit), BestEffort with none set at all."""
    guaranteed, any_set = True, False
    for container in pod["containers"] + pod.get("initContainers", []):
        res = container.get("resources", {})
        limits = res.get("limits", {})
        requests = {**limits, **res.get("requests", {})}
        any_set = any_set or bool(requests)
        for kind in ("cpu", "memory"):
            if kind not in limits or quantity(requests[kind]) != quantity(limits[kind]):
                guaranteed = False
    return "Guaranteed" if guaranteed else "Burstable" if any_set else "BestEffort"


def test_daemonset_pod_is_the_oom_killers_last_choice_within_the_units_bound() -> None:
    pod = only("DaemonSet")["spec"]["template"]["spec"]
    # The kubelet gives Guaranteed pods, and system-node-critical ones whatever
    # their class, oom_score_adj -997; a Burstable pod that requests 256Mi of a
    # 16 GiB node gets 985, among the first to go (pkg/kubelet/qos/policy.go).
    # Both, so that dropping the priority class keeps the protection.
    assert qos_class(pod) == "Guaranteed"
    assert pod["priorityClassName"] == "system-node-critical"
    (container,) = pod["containers"]
    limit = quantity(container["resources"]["limits"]["memory"])
    assert limit == unit_oom_protection().memory_max  # the same bound as the unit
    assert qos_class({"containers": [{"resources": {"requests": {"cpu": "1"}}}]}) == "Burstable"
    assert qos_class({"containers": [{}]}) == "BestEffort"


def test_servicemonitor_scrapes_the_service_of_the_daemonset_pods() -> None:
    ds, service, monitor = only("DaemonSet"), only("Service"), only("ServiceMonitor")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics" and port["port"] == DEFAULT_PORT
    assert port["targetPort"] == container["ports"][0]["name"]
    assert service["spec"]["clusterIP"] == "None"  # every pod, no load balancing
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert service["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")


def docs_docker_run_lines() -> list[list[str]]:
    text = DOCS.read_text().replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.startswith("docker run ")]


def test_documented_docker_run_lines_pass_flags_the_exporter_accepts() -> None:
    runs = docs_docker_run_lines()
    assert len(runs) >= 2
    image = f"pss-exporter:{__version__}"
    for argv in runs:
        args = build_parser().parse_args(argv[argv.index(image) + 1 :])
        if "--pid=host" in argv:
            assert args.procfs == "/proc"
        else:
            assert f"/proc:{args.procfs}:ro" in argv and f"/sys:{args.sysfs}:ro" in argv
        assert {"--cap-drop=ALL", "--cap-add=SYS_PTRACE", "--cap-add=DAC_READ_SEARCH"} <= set(argv)
        # The unit's OOM protection and memory bound, no swap (Docker's m is MiB).
        oom = unit_oom_protection()
        mib = oom.memory_max >> 20
        memory = {f"--oom-score-adj={oom.score_adj}", f"--memory={mib}m", f"--memory-swap={mib}m"}
        assert memory <= set(argv)


if __name__ == "__main__":
    launcher(sys.argv[1:])
