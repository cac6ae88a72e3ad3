"""php-fpm 8.2 for the tests: a master started on a config (optionally inside
a cgroup), its workers per pool found by their process titles, and its stop;
and what a fake procfs tree needs for a master the exporter trusts."""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from exporter.fastcgi import FastCGIError, request

from conftest import free_port, require_binary, running, wait_until

ALLOC = Path(__file__).resolve().parent / "php" / "alloc.php"

MASTER_TITLE = "php-fpm: master process"
POOL_TITLE = "php-fpm: pool "
# The counters of php-fpm's JSON status page (?json).
STATUS_KEYS = (
    "accepted conn",
    "listen queue",
    "max listen queue",
    "idle processes",
    "active processes",
    "total processes",
    "max active processes",
    "max children reached",
    "slow requests",
)


def global_section(tmp: Path) -> str:
    """A [global] section: pid file and error log (php-fpm.log) in tmp, no daemon."""
    return f"[global]\npid = {tmp}/php-fpm.pid\nerror_log = {tmp}/php-fpm.log\ndaemonize = no\n"


def write_static_config(tmp: Path, pools: Mapping[str, int]) -> Path:
    """tmp/php-fpm.conf: global_section(tmp), then a static pool of pools[name]
    workers on a free loopback port for each name."""
    text = global_section(tmp)
    for name, children in pools.items():
        text += (
            f"\n[{name}]\n"
            f"listen = 127.0.0.1:{free_port()}\n"
            "pm = static\n"
            f"pm.max_children = {children}\n"
        )
    conf = tmp / "php-fpm.conf"
    conf.write_text(text)
    return conf


def trusted_master_files(pid_dir: Path, uid: int = 0) -> None:
    """Make pid_dir (a PID directory of a fake procfs tree) a master the
    exporter trusts: `exe` links to the real php-fpm binary (root-owned, as
    the exporter checks) and `status` gives the effective uid."""
    (pid_dir / "exe").symlink_to(require_binary("php-fpm8.2"))
    (pid_dir / "status").write_text(f"Name:\tphp-fpm8.2\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")


def cmdline(pid: int) -> str:
    """The process title, or "" once the process is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def ppid(pid: int) -> int | None:
    """The parent's PID, or None once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(stat[stat.rfind(b")") + 2 :].split()[1])


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def workers(master: int) -> dict[str, list[int]]:
    """{pool: PIDs} of master's children titled 'php-fpm: pool POOL'."""
    found: dict[str, list[int]] = {}
    for pid in all_pids():
        if ppid(pid) == master and (title := cmdline(pid)).startswith(POOL_TITLE):
            found.setdefault(title.removeprefix(POOL_TITLE), []).append(pid)
    return found


def pool_workers(master: int, pool: str) -> list[int]:
    """Children of master titled 'php-fpm: pool POOL'."""
    return workers(master).get(pool, [])


def logs(conf: Path) -> str:
    """php-fpm's output and error log beside conf (see running_fpm and
    global_section), for failure messages."""
    paths = [conf.parent / "php-fpm.out", conf.parent / "php-fpm.log"]
    return "".join(p.read_text(errors="replace") for p in paths if p.exists())


@contextmanager
def running_fpm(
    conf: Path,
    pools: Mapping[str, int],
    *,
    args: Sequence[str] = (),
    cgroup: Path | None = None,
    graceful: bool = True,
    binary: Path | None = None,
) -> Iterator[subprocess.Popen]:
    """Run `php-fpm8.2 -F -R ARGS -y CONF` (or that binary) in the foreground,
    its output in php-fpm.out beside conf; master and workers inside cgroup
    if given. Yield the master once every pool has at least pools[pool]
    workers. On exit stop it with SIGQUIT (graceful: the workers finish
    first) or, with graceful=False, SIGTERM (at once, even if a worker is
    busy)."""
    exe = str(binary) if binary else require_binary("php-fpm8.2")
    argv = [exe, "-F", "-R", *args, "-y", str(conf)]
    if cgroup is not None:
        # The shell joins the cgroup, then execs php-fpm: its workers are born inside.
        argv = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup / "cgroup.procs"), *argv]
    stop_signal = signal.SIGQUIT if graceful else signal.SIGTERM
    with running(argv, conf.parent / "php-fpm.out", stop_signal=stop_signal) as proc:

        def started() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"php-fpm exited {proc.returncode}:\n{logs(conf)}")
            found = workers(proc.pid)
            return all(len(found.get(pool, [])) >= n for pool, n in pools.items())

        wait_until(
            f"php-fpm workers {dict(pools)}",
            started,
            detail=lambda: f"running: {workers(proc.pid)}\n{logs(conf)}",
        )
        yield proc


@contextmanager
def clients(
    listen: str, count: int, mib: tuple[int, int], hold_ms: int, seed: int = 15
) -> Iterator[None]:
    """count threads sending alloc.php requests to the pool at listen, each
    holding a size drawn from mib (MiB) for hold_ms, each asking again as soon
    as answered, until the block ends. A request whose worker was killed is
    simply sent again."""
    stop = threading.Event()
    rng = random.Random(seed)
    sizes = [rng.randint(*mib) for _ in range(256)]

    def client(n: int) -> None:
        i = n
        while not stop.is_set():
            i += count
            query = f"mib={sizes[i % len(sizes)]}&ms={hold_ms}"
            with contextlib.suppress(FastCGIError, OSError):  # killed mid-request
                request(listen, str(ALLOC), query, timeout=3)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(count)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
