"""Who the exporter takes for php-fpm, and whom it talks to.

Any user can run a process whose comm starts with `php-fpm` and whose title
is `php-fpm: master process (/tmp/x.conf)`, and a tenant writes the configs of
the php-fpm in their container. The exporter runs as root: it must neither
read such a "master"'s config, nor connect where that config says, nor let
its "workers" rename or join a real pool. Here a real php-fpm runs next to
such fakes (python under the user nobody, titled like php-fpm), a php-fpm
binary copied where anyone could have written it, and masters whose config
or socket was changed after they started; trap sockets count what reaches
them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from fpm import cmdline, global_section, pool_workers, ppid, running_fpm, trusted_master_files
from test_bounded_collection import FakeClock, Tree, collector
from test_fastcgi import recording, unix_listener

import exporter.phpfpm
from exporter.collector import Collector
from exporter.config import build_config
from exporter.fastcgi import request
from exporter.phpfpm import listening
from exporter.snapshot import PoolStats, Snapshot

from conftest import (
    QuietHandler,
    free_port,
    require_binary,
    running,
    serving_http,
    wait_until,
)

SUFFIX = uuid.uuid4().hex[:6]
POOL = f"w{SUFFIX}"  # short: 'php-fpm:' + POOL fits a comm (15 characters)
PORT_POOL = f"port_{SUFFIX}"
FAKE_COMM = f"php-fpm-{SUFFIX}x"  # the fakes' comm: a group of its own
NOBODY = 65534
COLLECTIONS = 3
SELF_NETNS = "/proc/self/ns/net"


# ------------------------------------------------------------ the fakes

# Run by a python whose argv[0] is the title (the script comes on stdin, so
# the title is all of /proc/PID/cmdline; sys.executable is made from it,
# hence FAKE_PYTHON): set comm, start the children (title, comm) given in
# FAKE_CHILDREN, wait to be killed.
FAKE = """
import ctypes, json, os, signal, subprocess, sys
ctypes.CDLL(None).prctl(15, os.environ["FAKE_COMM"].encode(), 0, 0, 0)  # PR_SET_NAME
for title, comm in json.loads(os.environ.pop("FAKE_CHILDREN", "[]")):
    child = subprocess.Popen(
        [title], executable=os.environ["FAKE_PYTHON"], stdin=subprocess.PIPE,
        env={**os.environ, "FAKE_COMM": comm},
    )
    child.stdin.write(SCRIPT.encode())
    child.stdin.close()
signal.pause()
"""


def system_python() -> str:
    """A python the user nobody may run (the venv's may live under /root)."""
    path = shutil.which("python3", path="/usr/bin:/bin")
    if path is None:  # Debian's python3, which tests/run.sh's venv is made from
        pytest.fail("no /usr/bin/python3 to run a fake php-fpm as nobody")
    return path


@contextmanager
def fake_fpm(
    title: str, comm: str, children: list[tuple[str, str]] = ()
) -> Iterator[subprocess.Popen]:
    """A process of the user nobody titled `title` with comm `comm`, parent
    of one such process per child; all stopped (by process group) on exit."""
    script = f"SCRIPT = {FAKE!r}\n{FAKE}"
    python = system_python()
    env = {"FAKE_COMM": comm, "FAKE_CHILDREN": json.dumps(children), "FAKE_PYTHON": python}
    proc = subprocess.Popen(
        [title],
        executable=python,
        stdin=subprocess.PIPE,
        env=env,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        cwd="/",
        start_new_session=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(script.encode())
    proc.stdin.close()
    try:

        def ready() -> bool:
            assert proc.poll() is None, f"fake php-fpm exited {proc.returncode}"
            kids = [p for p in fake_children(proc.pid) if comm_of(p) == comm]
            return comm_of(proc.pid) == comm and len(kids) == len(children)

        wait_until(f"fake php-fpm {title!r}", ready, detail=lambda: cmdline(proc.pid))
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def comm_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def fake_children(pid: int) -> list[int]:
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and ppid(int(p.name)) == pid
    ]


@contextmanager
def tcp_trap() -> Iterator[tuple[str, list[bytes]]]:
    """A TCP listener on loopback: yields its `listen` and what reached it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    with recording(listener) as received:
        yield f"127.0.0.1:{listener.getsockname()[1]}", received


def collections(n: int = COLLECTIONS) -> list[Snapshot]:
    """n collections of the live /proc by one in-process Collector."""
    col = Collector(build_config({}, "test"), "/proc")
    return [col.collect() for _ in range(n)]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the php-fpm side of the collection warned about."""
    names = ("exporter.classify", "exporter.phpfpm")
    return [r.getMessage() for r in caplog.records if r.name in names]


def groups(snap: Snapshot) -> dict[str, int]:
    return {g.name: g.processes for g in snap.groups}


def pool(snap: Snapshot, group: str) -> PoolStats:
    return next(p for p in snap.pools if p.info.group == group)


# ----------------------------------------------------- the real sockets


@pytest.mark.live
def test_listening_sockets_as_the_kernel_lists_them(tmp_path: Path) -> None:
    """listening() on this very process, against the real /proc: its
    listening unix and TCP sockets, not the bound-only, connected, abstract
    or other processes' ones; a wildcard socket only through loopback."""
    with ExitStack() as stack:

        def sock(family: int, address: object, listen: bool = True) -> socket.socket:
            s = stack.enter_context(socket.socket(family))
            s.bind(address)
            if listen:
                s.listen()
            return s

        unix = tmp_path / "listening.sock"
        sock(socket.AF_UNIX, str(unix))
        sock(socket.AF_UNIX, str(tmp_path / "bound.sock"), listen=False)
        sock(socket.AF_UNIX, f"\0pss-{SUFFIX}")  # abstract
        exact = sock(socket.AF_INET, ("127.0.0.1", 0)).getsockname()[1]
        wildcard = sock(socket.AF_INET, ("0.0.0.0", 0)).getsockname()[1]
        # [::] for IPv4 too, as php-fpm binds `listen = PORT`.
        dual = stack.enter_context(socket.socket(socket.AF_INET6))
        dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        dual.bind(("::", 0))
        dual.listen()
        dual_port = dual.getsockname()[1]
        # [::] for IPv6 only, its port's IPv4 loopback another process's.
        v6only = stack.enter_context(socket.socket(socket.AF_INET6))
        v6only.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        client = stack.enter_context(socket.create_connection(("127.0.0.1", exact)))
        client_port = client.getsockname()[1]  # connected, not listening
        other = stack.enter_context(
            running([sys.executable, "-c", LISTENER, str(tmp_path / "other.port"), "127.0.0.1"])
        )
        other_port = int(wait_until("other listener", lambda: read(tmp_path / "other.port")))
        v6only.bind(("::", other_port))
        v6only.listen()
        held = listening("/proc", os.getpid(), SELF_NETNS)
        assert other.poll() is None  # it was listening while we looked

    assert held.reachable
    assert str(unix) in held.unix
    assert not {str(tmp_path / "bound.sock"), f"@pss-{SUFFIX}"} & held.unix
    assert held.reaches(socket.AF_UNIX, str(unix))
    assert not held.reaches(socket.AF_UNIX, str(tmp_path / "bound.sock"))
    assert held.reaches(socket.AF_INET, ("127.0.0.1", exact))
    assert not held.reaches(socket.AF_INET, ("127.0.0.2", exact))
    assert held.reaches(socket.AF_INET, ("127.0.0.1", wildcard))
    assert held.reaches(socket.AF_INET, ("127.0.0.9", wildcard))
    assert not held.reaches(socket.AF_INET, ("10.1.2.3", wildcard))  # would leave the host
    assert not held.reaches(socket.AF_INET6, ("::1", wildcard))  # another family
    assert not held.reaches(socket.AF_INET, ("127.0.0.1", client_port))
    assert not held.reaches(socket.AF_INET, ("127.0.0.1", other_port))
    assert held.reaches(socket.AF_INET6, ("::1", other_port))
    assert held.reaches(socket.AF_INET, ("127.0.0.1", dual_port))
    assert held.reaches(socket.AF_INET6, ("::1", dual_port))


@pytest.mark.live
def test_listening_in_another_network_namespace_is_not_reachable(tmp_path: Path) -> None:
    """127.0.0.1:PORT in another network namespace is another socket than
    the exporter's 127.0.0.1:PORT: held there, but not reachable from here."""
    port_file = tmp_path / "port"
    # 0.0.0.0: a new namespace's loopback is down, without 127.0.0.1.
    argv = [require_binary("unshare"), "--net", sys.executable, "-c", LISTENER]
    with running([*argv, str(port_file), "0.0.0.0"]) as proc:
        port = int(wait_until("listener", lambda: read(port_file), detail=lambda: str(proc.poll())))
        held = listening("/proc", proc.pid, SELF_NETNS)
    assert held.has(socket.AF_INET, ("127.0.0.1", port))
    assert not held.reachable
    assert not held.reaches(socket.AF_INET, ("127.0.0.1", port))


# A process listening on a port of address argv[2]; it writes the port to argv[1].
LISTENER = """
import os, signal, socket, sys
s = socket.socket()
s.bind((sys.argv[2], 0))
s.listen()
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(s.getsockname()[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
signal.pause()
"""


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


# ------------------------------------------------------------ live fakes


@pytest.fixture
def real_pool(tmp_path: Path) -> Iterator[list[int]]:
    """A real php-fpm master (root) running pool POOL with 2 workers and a
    status page on a unix socket, and PORT_POOL on a bare port: POOL's
    workers' PIDs."""
    d = tmp_path / "real"
    d.mkdir()
    conf = d / "php-fpm.conf"
    conf.write_text(
        global_section(d) + f"[{POOL}]\nlisten = {d}/fpm.sock\npm = static\n"
        "pm.max_children = 2\npm.status_path = /status\n"
        # The Docker image's `listen = 9000`: php-fpm binds [::]:9000, for IPv4 too.
        f"[{PORT_POOL}]\nlisten = {free_port()}\npm = static\npm.max_children = 1\n"
        "pm.status_path = /status\n"
    )
    with running_fpm(conf, {POOL: 2, PORT_POOL: 1}) as proc:
        yield pool_workers(proc.pid, POOL)


@pytest.mark.live
def test_fake_masters_and_workers_are_not_php_fpm(
    real_pool: list[int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fakes run by nobody: a "master" whose config names trap sockets (TCP
    and unix) for a pool named like the real one, its "worker" of that pool,
    a "master" with a newline in its title, and a process whose comm is the
    real pool's group name. Over several collections nothing reaches the
    traps, the real pool keeps its name, members and status page, and the
    fakes are grouped by comm (never php-fpm:POOL), with one escaped warning."""
    workers = real_pool
    with ExitStack() as stack:
        tcp, tcp_seen = stack.enter_context(tcp_trap())
        trap_sock = tmp_path / "root-only.sock"  # made by root: nobody cannot connect
        unix_seen = stack.enter_context(unix_listener(trap_sock))
        conf = tmp_path / "x.conf"
        conf.write_text(
            f"[{POOL}]\nlisten = {tcp}\npm = static\npm.max_children = 999\n"
            "pm.status_path = /status\n"
            f"[other]\nlisten = {trap_sock}\npm.status_path = /status\n"
        )
        # First, so that its lower PID is among those the warning names.
        stack.enter_context(fake_fpm("php-fpm: master process (/x\nFORGED: y)", FAKE_COMM))
        stack.enter_context(
            fake_fpm(
                f"php-fpm: master process ({conf})",
                FAKE_COMM,
                [(f"php-fpm: pool {POOL}", FAKE_COMM), ("php-fpm: pool other", FAKE_COMM)],
            )
        )
        stack.enter_context(fake_fpm("sleep", f"php-fpm:{POOL}"))
        with caplog.at_level(logging.WARNING, "exporter"):
            snaps = collections()

    assert tcp_seen == [] and unix_seen == []
    for snap in snaps:
        found = groups(snap)
        assert found[f"php-fpm:{POOL}"] == len(workers) == 2
        assert not [g for g in found if g.startswith(f"php-fpm:{POOL}") and g != f"php-fpm:{POOL}"]
        assert "php-fpm:other" not in found
        assert found[FAKE_COMM] == 4  # 2 masters, 2 workers
        assert found[f"untrusted:php-fpm:{POOL}"] == 1
        assert snap.phpfpm_untrusted >= 4
        real = pool(snap, f"php-fpm:{POOL}")
        assert real.info.max_children == 2
        assert real.info.status is not None and real.info.status.total == 2
        port_pool = pool(snap, f"php-fpm:{PORT_POOL}").info.status
        assert port_pool is not None and port_pool.total == 1
    warnings = warnings_of(caplog)
    assert not [m for m in warnings if "\n" in m], warnings
    untrusted = [m for m in warnings if "not trusted" in m]
    assert len(untrusted) == 1, warnings  # the first collection; the others saw no new ones
    assert "'/x\\nFORGED: y'" in untrusted[0]  # escaped: no forged log line


@pytest.mark.live
@pytest.mark.parametrize(
    ("owner", "mode"),
    [(NOBODY, 0o755), (0, 0o757), (0, 0o775)],
    ids=["owned-by-nobody", "writable-by-others", "writable-by-group"],
)
def test_php_fpm_binary_anyone_could_have_written_is_not_trusted(
    tmp_path: Path, owner: int, mode: int
) -> None:
    """The real php-fpm, copied to a file its owner or others may rewrite:
    the same code and titles, but no pool of it is php-fpm's, and its status
    page (which the test reads before and after) is not asked."""
    copy = tmp_path / "bin" / "php-fpm8.2"
    copy.parent.mkdir()
    shutil.copy2(require_binary("php-fpm8.2"), copy)
    os.chown(copy, owner, owner)
    copy.chmod(mode)
    name = f"copied_{SUFFIX}"
    listen = f"127.0.0.1:{free_port()}"
    conf = tmp_path / "php-fpm.conf"
    conf.write_text(
        global_section(tmp_path) + f"[{name}]\nlisten = {listen}\npm = static\n"
        "pm.max_children = 2\npm.status_path = /status\n"
    )
    with running_fpm(conf, {name: 2}, binary=copy):
        before = status(listen)
        snaps = collections(2)
        after = status(listen)
    assert after["accepted conn"] == before["accepted conn"] + 1  # our own request only
    for snap in snaps:
        found = groups(snap)
        assert f"php-fpm:{name}" not in found
        assert found["php-fpm8.2"] >= 3  # by comm: the master and its 2 workers
        assert snap.phpfpm_untrusted >= 3


def status(listen: str) -> dict:
    return json.loads(request(listen, "/status", "json", timeout=5).body)


# --------------------------------------- a real master, a changed config


@pytest.mark.live
@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_status_address_the_master_does_not_hold_is_not_contacted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """A trusted (real, root) master whose config, rewritten after it
    started, names a status socket it does not listen on: that socket is
    never contacted, and it is the master's config error; the pool keeps
    its memory and configured metrics."""
    name = f"moved_{SUFFIX}"
    conf = tmp_path / "php-fpm.conf"
    text = global_section(tmp_path) + (
        f"[{name}]\nlisten = 127.0.0.1:{free_port()}\npm = static\npm.max_children = 2\n"
        "pm.status_path = /status\n"
    )
    conf.write_text(text)
    with ExitStack() as stack:
        if kind == "tcp":
            address, seen = stack.enter_context(tcp_trap())
        else:
            address = str(tmp_path / "trap.sock")
            seen = stack.enter_context(unix_listener(Path(address)))
        stack.enter_context(running_fpm(conf, {name: 2}))
        conf.write_text(text + f"pm.status_listen = {address}\n")
        with caplog.at_level(logging.WARNING, "exporter"):
            snaps = collections()
    assert seen == []
    refused = [m for m in warnings_of(caplog) if str(conf) in m]
    assert len(refused) == 1, refused  # read once, the config is cached
    assert f"status address '{address}' is not a socket this master listens on" in refused[0]
    for snap in snaps:
        info = pool(snap, f"php-fpm:{name}").info
        assert (info.max_children, info.status, info.status_queried) == (2, None, True)
        assert groups(snap)[f"php-fpm:{name}"] == 2


@pytest.mark.live
def test_socket_swapped_for_a_symlink_gets_no_request(tmp_path: Path) -> None:
    """The master's socket file replaced by a symlink to another socket (as
    a pool user who can write the socket's directory may): the path is still
    the one the master bound, but the socket at its end was made by another
    process (SO_PEERCRED), which is sent nothing."""
    name = f"swapped_{SUFFIX}"
    run = tmp_path / "run"
    run.mkdir()
    conf = tmp_path / "php-fpm.conf"
    conf.write_text(
        global_section(tmp_path) + f"[{name}]\nlisten = {run}/fpm.sock\npm = static\n"
        "pm.max_children = 1\npm.status_path = /status\n"
    )
    with running_fpm(conf, {name: 1}), unix_listener(tmp_path / "other.sock") as seen:
        (run / "fpm.sock").rename(run / "fpm.sock.moved")
        (run / "fpm.sock").symlink_to(tmp_path / "other.sock")
        snaps = collections(2)
    assert all(data == b"" for data in seen), seen  # connected, then refused: no bytes
    for snap in snaps:
        info = pool(snap, f"php-fpm:{name}").info
        assert (info.max_children, info.status) == (1, None)


# ------------------------------------------------- many fakes, bounded


@pytest.mark.slow
def test_many_fake_masters_one_warning_checked_once_and_forgotten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,200 processes titled as masters whose executable is python: one
    warning per collection that sees new ones, each checked once per PID and
    start time, and nothing of them kept once they are gone. A trusted
    master beside them keeps its pool."""
    tree = Tree(tmp_path / "proc")
    tree.write(100, "php-fpm8.2", 1000, cmdline="php-fpm: master process (/etc/php-fpm.conf)")
    trusted_master_files(tree.root / "100")
    (tree.root / "100" / "root" / "etc").mkdir(parents=True)
    (tree.root / "100" / "root" / "etc" / "php-fpm.conf").write_text(
        "[www]\nlisten = /run/www.sock\npm = static\npm.max_children = 7\n"
    )
    tree.write(101, "php-fpm8.2", 2000, cmdline="php-fpm: pool www", ppid=100)
    fakes = range(1000, 2200)
    for pid in fakes:
        tree.write(pid, "php-fpm8.2", 10, cmdline=f"php-fpm: master process (/tmp/{pid}.conf)")
        (tree.root / str(pid) / "exe").symlink_to(system_python())
    checks: list[int] = []
    real_check = exporter.phpfpm.master_uid

    def counted(procfs: str, pid: int, start: int) -> int | None:
        checks.append(pid)
        return real_check(procfs, pid, start)

    monkeypatch.setattr(exporter.phpfpm, "master_uid", counted)
    col = collector(tree, FakeClock())
    with caplog.at_level(logging.WARNING, "exporter"):
        snaps = [col.collect() for _ in range(3)]
    warnings = warnings_of(caplog)
    assert len(warnings) == 1, warnings[:3]
    assert warnings[0].startswith("1200 processes titled as php-fpm")
    assert "and 1197 more" in warnings[0]
    assert sorted(checks) == [100, *fakes]  # once each, not once per collection
    for snap in snaps:
        assert groups(snap) == {"php-fpm:master": 1, "php-fpm:www": 1, "php-fpm8.2": 1200}
        assert pool(snap, "php-fpm:www").info.max_children == 7
        assert snap.phpfpm_untrusted == 1200

    # A new process under an old PID (another start time) is checked again.
    new = "php-fpm: master process (/tmp/y)"
    tree.write(1000, "php-fpm8.2", 10, statm="9 9 9 1 0 9 0", start=5, cmdline=new)
    col.collect()
    assert checks[-1] == 1000 and len(checks) == 1202
    for pid in fakes:
        shutil.rmtree(tree.root / str(pid))
    caplog.clear()
    snap = col.collect()
    assert groups(snap) == {"php-fpm:master": 1, "php-fpm:www": 1}
    assert snap.phpfpm_untrusted == 0 and warnings_of(caplog) == []
    # What was remembered of them is gone with them.
    assert col._fpm is not None and set(col._fpm._trust) == {100}
    assert col._grouper._untrusted == set() and col._fpm.configs._logged == {}


def test_sockets_are_listed_again_only_when_a_status_address_is_not_in_the_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A config is re-read whenever a worker is replaced (pm.max_requests),
    but the master's socket listing (net/tcp lists every socket of the
    namespace) is kept: it is made again only for an address not in it."""
    tree = Tree(tmp_path / "proc")
    master = tree.root / "100"
    tree.write(100, "php-fpm8.2", 1000, cmdline="php-fpm: master process (/etc/php-fpm.conf)")
    trusted_master_files(master)
    (master / "fd").mkdir()
    (master / "fd" / "7").symlink_to("socket:[777]")
    (master / "net").mkdir()
    (master / "net" / "unix").write_text(
        "Num       RefCount Protocol Flags    Type St Inode Path\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 777 /run/www.sock\n"
    )
    (master / "net" / "tcp").write_text("  sl  local_address rem_address   st\n")
    (master / "ns").mkdir()
    (master / "ns" / "net").symlink_to(SELF_NETNS)
    conf = master / "root" / "etc" / "php-fpm.conf"
    conf.parent.mkdir(parents=True)
    www = "[www]\nlisten = /run/www.sock\npm = static\npm.max_children = 3\npm.status_path = /s\n"
    conf.write_text(www)
    listings: list[int] = []
    real_listing = exporter.phpfpm.listening

    def counted(procfs: str, pid: int, netns: str) -> exporter.phpfpm.Listening:
        listings.append(pid)
        return real_listing(procfs, pid, netns)

    monkeypatch.setattr(exporter.phpfpm, "listening", counted)
    col = collector(tree, FakeClock())

    def replace_worker(pid: int) -> Snapshot:
        """Worker pid takes the place of the one before (as max_requests does)."""
        if pid > 101:
            shutil.rmtree(tree.root / str(pid - 1))
        tree.write(pid, "php-fpm8.2", 500, cmdline="php-fpm: pool www", ppid=100)
        return col.collect()

    with caplog.at_level(logging.WARNING, "exporter"):
        for pid in (101, 102, 103):  # each a config read
            assert pool(replace_worker(pid), "php-fpm:www").info.max_children == 3
        assert listings == [100]
        conf.write_text(www + "[api]\nlisten = /run/api.sock\npm.status_path = /s\n")
        replace_worker(104)
    assert listings == [100, 100]  # /run/api.sock was not in the list: looked again
    assert col._fpm is not None and col._fpm.config_errors == 1
    assert warnings_of(caplog) == [
        "php-fpm master 100: /etc/php-fpm.conf: pool 'api': status address "
        "'/run/api.sock' is not a socket this master listens on: not queried"
    ]


# ------------------------------------------------ a master not run as root


@pytest.mark.live
def test_config_of_a_master_not_run_as_root_is_read_with_its_permissions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Any user may run the root-installed php-fpm with a config of theirs:
    a trusted master, but not root's. Its config may include a file only
    root can read (/etc/shadow; /proc/kmsg, whose read takes the messages
    from the system log): the root exporter reads what that user could, and
    nothing more. Its own files, and files all may read, are read."""
    tree = Tree(tmp_path / "proc")
    tree.write(100, "php-fpm8.2", 1000, cmdline="php-fpm: master process (/home/u/fpm.conf)")
    trusted_master_files(tree.root / "100", uid=NOBODY)
    tree.write(101, "php-fpm8.2", 500, cmdline="php-fpm: pool mine", ppid=100)
    home = tree.root / "100" / "root" / "home" / "u"
    home.mkdir(parents=True)
    main = home / "fpm.conf"
    main.write_text("[mine]\npm = static\ninclude = /home/u/common.conf\n")
    os.chown(main, NOBODY, NOBODY)
    main.chmod(0o600)  # its own file
    common = home / "common.conf"
    common.write_text("pm.max_children = 4\n")
    common.chmod(0o644)  # root's, readable by all
    col = collector(tree, FakeClock())
    assert pool(col.collect(), "php-fpm:mine").info.max_children == 4

    secret = home / "secret.conf"
    secret.write_text("pm.max_children = 42\n")
    secret.chmod(0o600)  # root's alone
    main.write_text("[mine]\npm = static\ninclude = /home/u/secret.conf\n")
    shutil.rmtree(tree.root / "101")  # a worker replaced: the config is read again
    tree.write(102, "php-fpm8.2", 500, cmdline="php-fpm: pool mine", ppid=100)
    with caplog.at_level(logging.WARNING, "exporter"):
        snap = col.collect()
    assert pool(snap, "php-fpm:mine").info.max_children is None
    assert warnings_of(caplog) == [
        "php-fpm master 100: /home/u/secret.conf: cannot read: not readable by the master's user"
    ]


def test_config_loads_per_collection_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load may take seconds (16 MiB of config), and any user may run many
    masters and replace their workers every cycle: a collection loads for
    LOAD_BUDGET seconds (one load at least), the longest unread first, so
    every master is loaded in turn and none waits behind the others."""
    monkeypatch.setattr(exporter.phpfpm, "LOAD_BUDGET", 0.0)  # one load per collection
    tree = Tree(tmp_path / "proc")
    for n, master in enumerate((100, 200, 300)):
        title = f"php-fpm: master process (/etc/fpm{n}.conf)"
        tree.write(master, "php-fpm8.2", 1000, cmdline=title, start=n + 1)
        trusted_master_files(tree.root / str(master))
        conf = tree.root / str(master) / "root" / "etc" / f"fpm{n}.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text(f"[p{n}]\npm = static\npm.max_children = {n + 1}\n")
        tree.write(master + 1, "php-fpm8.2", 500, cmdline=f"php-fpm: pool p{n}", ppid=master)
    col = collector(tree, FakeClock())

    def configured(snap: Snapshot) -> dict[str, int | None]:
        return {p.info.group: p.info.max_children for p in snap.pools}

    assert configured(col.collect()) == {"php-fpm:p0": 1, "php-fpm:p1": None, "php-fpm:p2": None}
    assert configured(col.collect()) == {"php-fpm:p0": 1, "php-fpm:p1": 2, "php-fpm:p2": None}
    assert configured(col.collect()) == {"php-fpm:p0": 1, "php-fpm:p1": 2, "php-fpm:p2": 3}


def test_config_warning_is_bounded_whatever_the_names_in_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A tenant's config names pools and addresses of any length (a line of
    up to 1 MiB): the warning about them shows 2,000 characters at most."""
    tree = Tree(tmp_path / "proc")
    tree.write(100, "php-fpm8.2", 1000, cmdline="php-fpm: master process (/etc/php-fpm.conf)")
    trusted_master_files(tree.root / "100")
    (tree.root / "100" / "fd").mkdir()  # it listens on nothing
    conf = tree.root / "100" / "root" / "etc" / "php-fpm.conf"
    conf.parent.mkdir(parents=True)
    name = "p" * 100_000
    conf.write_text(f"[{name}]\nlisten = /run/{'s' * 100_000}\npm.status_path = /s\n")
    tree.write(101, "php-fpm8.2", 500, cmdline=f"php-fpm: pool {name}", ppid=100)
    with caplog.at_level(logging.WARNING, "exporter"):
        collector(tree, FakeClock()).collect()
    (warning,) = warnings_of(caplog)
    assert warning.startswith("php-fpm master 100: /etc/php-fpm.conf: pool 'ppp")
    assert len(warning) <= 2000 + len("php-fpm master 100: ")


def fpm_master(tree: Tree, pid: int, conf: str, pools: str) -> None:
    """A trusted master in tree whose config (conf, in its root) runs pools."""
    tree.write(pid, "php-fpm8.2", 1000, cmdline=f"php-fpm: master process ({conf})")
    trusted_master_files(tree.root / str(pid))
    (tree.root / str(pid) / "root" / conf.lstrip("/")).parent.mkdir(parents=True)
    (tree.root / str(pid) / "root" / conf.lstrip("/")).write_text(pools)


def just_forked(tree: Tree, pid: int, master: int) -> None:
    """A child the master has just forked: its title, executable and root."""
    title = cmdline_of(tree, master)
    tree.write(pid, "php-fpm8.2", 900, cmdline=title, ppid=master)
    trusted_master_files(tree.root / str(pid))
    shutil.copytree(tree.root / str(master) / "root", tree.root / str(pid) / "root")


def cmdline_of(tree: Tree, pid: int) -> str:
    return (tree.root / str(pid) / "cmdline").read_bytes().rstrip(b"\0").decode()


def kill(tree: Tree, pid: int) -> None:
    """pid becomes a zombie: state Z, no title, no memory."""
    d = tree.root / str(pid)
    (d / "stat").write_text((d / "stat").read_text().replace(") S ", ") Z "))
    (d / "statm").write_text("0 0 0 0 0 0 0\n")
    (d / "cmdline").write_bytes(b"")
    (d / "smaps_rollup").write_text("")


def counts(snap: Snapshot) -> dict[str, tuple[int, int]]:
    """(processes, workers) by group."""
    return {g.name: (g.processes, g.workers) for g in snap.groups}


def test_workers_of_a_pool_are_the_masters_live_children(tmp_path: Path) -> None:
    """Mid-storm: a worker just forked still shows its master's title; a
    killed one is a zombie until its master reaps it. The pool's processes
    and workers are the master's live children, in a collector kept across
    cycles as in a fresh one: a child not titled yet is its master's only
    pool's, or in no group when the master has several; a zombie is in none.
    Taken for a second master of its pool, such a child renamed the pool's
    group (php-fpm:www#1) once its config was loaded."""
    tree = Tree(tmp_path / "proc")
    fpm_master(tree, 100, "/etc/one.conf", "[www]\nlisten = /run/www.sock\npm = static\n")
    tree.write(101, "php-fpm8.2", 2000, cmdline="php-fpm: pool www", ppid=100)
    tree.write(102, "php-fpm8.2", 2000, cmdline="php-fpm: pool www", ppid=100)
    fpm_master(tree, 200, "/etc/two.conf", "[a]\nlisten = /run/a\n[b]\nlisten = /run/b\n")
    tree.write(201, "php-fpm8.2", 2000, cmdline="php-fpm: pool a", ppid=200)
    tree.write(202, "php-fpm8.2", 2000, cmdline="php-fpm: pool b", ppid=200)
    kept = collector(tree, FakeClock())
    assert counts(kept.collect())["php-fpm:www"] == (2, 2)
    kill(tree, 102)
    just_forked(tree, 103, 100)
    just_forked(tree, 203, 200)
    want = {
        "php-fpm:master": (2, 0),
        "php-fpm:www": (2, 2),  # 101 and 103, not the zombie 102
        "php-fpm:a": (1, 1),
        "php-fpm:b": (1, 1),  # 203: a or b, it does not say yet
    }
    for _ in range(2):
        assert counts(kept.collect()) == want
    assert counts(collector(tree, FakeClock()).collect()) == want


def test_a_child_listed_before_its_master_is_classified_again(tmp_path: Path) -> None:
    """After PID wrap a worker can have a PID below its master's: in the first
    cycle, its master's title is classified before the master is known, and
    must still be taken again once the worker has retitled itself."""
    tree = Tree(tmp_path / "proc")
    fpm_master(tree, 300, "/etc/two.conf", "[a]\nlisten = /run/a\n[b]\nlisten = /run/b\n")
    tree.write(301, "php-fpm8.2", 2000, cmdline="php-fpm: pool a", ppid=300)
    tree.write(302, "php-fpm8.2", 2000, cmdline="php-fpm: pool b", ppid=300)
    just_forked(tree, 200, 300)
    col = collector(tree, FakeClock())
    assert counts(col.collect())["php-fpm:b"] == (1, 1)  # 200: a or b, not known yet
    (tree.root / "200" / "cmdline").write_bytes(b"php-fpm: pool b\0")
    assert counts(col.collect())["php-fpm:b"] == (2, 2)


def test_a_master_vouches_only_for_the_process_seen(tmp_path: Path) -> None:
    """The collector reads a title, then checks the executable: if the PID
    was reused in between (a fake master exited, a real one took its PID),
    the real master's executable must not vouch for the fake's title, whose
    config would be read as root's."""
    tree = Tree(tmp_path / "proc")
    tree.write(100, "php-fpm8.2", 1000, start=7, cmdline="php-fpm: master process (/etc/a)")
    trusted_master_files(tree.root / "100")
    source = exporter.phpfpm.PhpFpmSource(build_config({}, "test").php_fpm, str(tree.root), 10)
    assert source.trust({100: 6}) == {}  # seen with start time 6: another process
    assert source.trust({100: 7}) == {100: 0}


@pytest.mark.live
def test_a_dripping_status_page_holds_one_thread_not_one_per_collection(
    tmp_path: Path,
) -> None:
    """An HTTP status page (an override's URL may be a tenant's server) that
    sends a byte before each read times out never ends its query: the next
    collections do not start another one for that pool, so stuck threads
    cannot pile up until no pool gets its status any more."""
    tree = Tree(tmp_path / "proc")
    tree.write(100, "php-fpm8.2", 1000, cmdline="php-fpm: master process (/etc/php-fpm.conf)")
    trusted_master_files(tree.root / "100")
    conf = tree.root / "100" / "root" / "etc" / "php-fpm.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("[www]\npm = static\npm.max_children = 2\n")
    tree.write(101, "php-fpm8.2", 500, cmdline="php-fpm: pool www", ppid=100)
    stop = threading.Event()
    asked: list[str] = []

    class Dripping(QuietHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            while not stop.wait(0.05):
                self.wfile.write(b" ")
                self.wfile.flush()

    with serving_http(Dripping) as url:
        try:
            fpm = {"status_timeout": "200ms", "pools": {"www": {"status": url}}}
            config = build_config({"collection": {"interval": "1s"}, "php_fpm": fpm}, "test")
            col = Collector(config, str(tree.root), FakeClock())
            snaps = [col.collect() for _ in range(4)]
        finally:
            stop.set()
    assert asked == ["/?json"]
    for snap in snaps:
        info = pool(snap, "php-fpm:www").info
        assert (info.status_queried, info.status, info.max_children) == (True, None, 2)
