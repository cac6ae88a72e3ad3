"""php-fpm pools as a data source: their configuration, their status page
and their cgroup's headroom.

Configuration is read from the master's config file through
/proc/MASTER/root, so pools inside containers are found from the host. Status
pages are queried concurrently with the smaps reads, each with a short
timeout: a saturated pool cannot answer its own status page, and that must
not delay the other groups nor hide the pool's memory metrics.

Any user can run a process titled `php-fpm: master process (/tmp/x.conf)`,
and a tenant writes the configs of the php-fpm in their container, so
nothing a title or a config says is taken on trust:

- a master is trusted only when its executable, stat()ed through
  /proc/PID/exe (the inode itself, not the link's text), is a regular file
  owned by root, not writable by group or others, whose name starts with
  `php-fpm` (master_uid); checked once per PID and start time;
- any user may run that binary with a config of theirs: a master not
  running as root has its config read only where its user could read it
  (an include of /etc/shadow or /proc/kmsg is an error), and config loads
  are bounded per collection (LOAD_BUDGET);
- a status page is asked only at an address the master itself listens on:
  the sockets among its file descriptors (/proc/MASTER/fd) as its own
  network namespace lists them (/proc/MASTER/net/unix, tcp, tcp6). TCP is
  used only when that namespace is the exporter's (127.0.0.1 elsewhere is
  another socket), and a unix socket must answer from the master itself
  (SO_PEERCRED), so a symlink swapped in for it leads nowhere.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import os
import posixpath
import socket
import stat
import struct
import time
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import NamedTuple

from . import __version__
from .config import PhpFpmConfig, PoolOverride
from .discovery import read_bytes
from .fastcgi import Address, FastCGIError, parse_address, request
from .grouping import FpmMaster, fpm_pool_groups
from .phpfpm_config import FpmConfigError, PoolSettings, Reader, load_fpm_config
from .procfs import MAX_VALUE, ParseError, parse_stat, parse_uint
from .snapshot import PoolInfo, PoolStatus

log = logging.getLogger(__name__)

STATUS_MAX_BYTES = 1 << 20
MAX_CONCURRENT_QUERIES = 256
# A master's config is re-read when its workers were replaced (a reload
# respawns them all) and at least this often (seconds).
CONFIG_REFRESH = 60.0
LOAD_BUDGET = 1.0  # seconds of config loads per collection
NEVER = float("-inf")
FPM_EXE_PREFIX = "php-fpm"  # php-fpm, php-fpm8.2, php-fpm7.4 ...
# Bounds on what a master's socket listing may cost: a php-fpm master holds
# a few descriptors per pool and two per worker.
MAX_FDS = 1 << 16
NET_FILE_LIMIT = 64 << 20  # /proc/PID/net/tcp: ~150 bytes per socket of the namespace
_ACCEPTCON = 0x10000  # /proc/net/unix Flags: a listening socket
_TCP_LISTEN = b"0A"
REPORTED = 3  # problems of one config load a warning names
REPORT_CHARS = 2000  # of those problems a warning shows


def printable(text: str) -> str:
    """text for a log line: control characters (a forged newline) escaped."""
    return (
        text
        if text.isprintable()
        else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    )


_STATUS_KEYS = {
    "accepted_conn": "accepted conn",
    "listen_queue": "listen queue",
    "max_listen_queue": "max listen queue",
    "idle": "idle processes",
    "active": "active processes",
    "total": "total processes",
    "max_active": "max active processes",
    "max_children_reached": "max children reached",
    "slow_requests": "slow requests",
}


def parse_status(body: bytes) -> PoolStatus:
    """Parse the JSON status page; raise ValueError when it is not one, or
    when a counter is not an integer in 0..2**63-1 (php-fpm's are unsigned
    longs: beyond that a page is lying)."""
    try:
        data = json.loads(body)
    except ValueError as exc:  # not UTF-8, not JSON, an integer of 4300+ digits
        raise ValueError(f"status page is not JSON: {exc}") from None
    except RecursionError:  # [[[[... nested past the parser's stack
        raise ValueError("status page is not JSON: nested too deep") from None
    if not isinstance(data, dict):
        raise ValueError("status page is not a JSON object")
    values = {}
    for field, key in _STATUS_KEYS.items():
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"status page lacks an integer {key!r}")
        if not 0 <= value <= MAX_VALUE:
            raise ValueError(f"status page: {key!r} is out of range (0 to 2**63-1)")
        values[field] = value
    return PoolStatus(**values)


# ------------------------------------------------------------------ trust


def master_uid(procfs: str, pid: int, start: int) -> int | None:
    """The effective uid of pid when it is a php-fpm master worth trusting,
    else None: its executable is a regular file owned by root and writable
    by root only, named php-fpm*. The name alone anyone can give a copy of
    python; a root-owned, unwritable file only root can have put there.
    start is the start time of the process the caller saw (its title): when
    pid is another process by now, a real master must not vouch for it."""
    exe = f"{procfs}/{pid}/exe"
    try:
        st = os.stat(exe)  # follows the link to the executable's own inode
        name = os.readlink(exe)  # only for its name: "/usr/sbin/php-fpm8.2 (deleted)"
        ids = status_ids(read_bytes(f"{procfs}/{pid}/status"), b"Uid:")
        if parse_stat(read_bytes(f"{procfs}/{pid}/stat")).starttime != start:
            return None  # the PID was reused since the caller read it
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        return None
    if not posixpath.basename(name.removesuffix(" (deleted)")).startswith(FPM_EXE_PREFIX):
        return None
    return ids[1] if len(ids) == 4 else None


def status_ids(status: bytes, key: bytes) -> list[int]:
    """The numbers of the /proc/PID/status line starting with key ('Uid:
    real effective saved fs', 'Groups: ...'); [] without one. Raises
    ParseError."""
    for line in status.split(b"\n"):
        if line.startswith(key):
            return [parse_uint(n, f"status: {key.decode()}") for n in line.split()[1:]]
    return []


def master_reader(procfs: str, pid: int, uid: int) -> Reader | None:
    """Whose permissions a master's config is read with: None (any file)
    for a master running as root, else its uid and groups. Raises OSError,
    ValueError."""
    if uid == 0:
        return None
    status = read_bytes(f"{procfs}/{pid}/status")
    gids = status_ids(status, b"Gid:")[1:2] + status_ids(status, b"Groups:")
    return Reader(uid, frozenset(gids))


def _same_namespace(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


@dataclass(frozen=True)
class Listening:
    """The sockets a master listens on, as its network namespace lists them."""

    unix: frozenset[str]  # paths as bound (abstract sockets, '@...', left out)
    tcp: frozenset[tuple[int, bytes, int]]  # (family, packed address, port)
    reachable: bool  # its network namespace is the exporter's: TCP means the same
    # Ports some IPv4 socket of the namespace, the master's or not, listens on.
    ipv4_ports: frozenset[int] = frozenset()

    def reaches(self, family: int, address: Address) -> bool:
        """Whether connecting to address from the exporter reaches one of
        these sockets."""
        return self.has(family, address) and (family == socket.AF_UNIX or self.reachable)

    def has(self, family: int, address: Address) -> bool:
        """Whether address is one of these sockets; a wildcard one (0.0.0.0,
        ::) only through loopback, where its `listen` is reached."""
        if family == socket.AF_UNIX:
            return address in self.unix
        if not isinstance(address, tuple):
            return False
        host, port = address
        try:
            packed = socket.inet_pton(family, host)
        except (OSError, ValueError):
            return False
        if (family, packed, port) in self.tcp:
            return True
        if not ipaddress.ip_address(packed).is_loopback:
            return False
        if (family, bytes(len(packed)), port) in self.tcp:
            return True
        # `listen = 9000` binds [::]:9000 for IPv4 too (IPV6_V6ONLY off), and
        # the exporter connects to 127.0.0.1:9000: no IPv4 socket may then
        # hold that port, else it, not the master's, would answer.
        dual = (socket.AF_INET6, bytes(16), port) in self.tcp
        return family == socket.AF_INET and dual and port not in self.ipv4_ports


NOTHING = Listening(frozenset(), frozenset(), False)


def socket_inodes(procfs: str, pid: int) -> set[int]:
    """Inodes of the sockets among pid's file descriptors (readlink gives
    'socket:[INODE]'). Raises OSError; more than MAX_FDS descriptors is one."""
    inodes: set[int] = set()
    fd_dir = f"{procfs}/{pid}/fd"
    with os.scandir(fd_dir) as entries:
        for n, entry in enumerate(entries):
            if n >= MAX_FDS:
                raise OSError(f"more than {MAX_FDS} file descriptors")
            try:
                target = os.readlink(entry.path)
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:[") and target.endswith("]"):
                try:
                    inodes.add(parse_uint(target[8:-1].encode(), "fd"))
                except ParseError:
                    continue
    return inodes


def parse_net_unix(data: bytes, inodes: set[int]) -> set[str]:
    """Paths of the listening unix sockets among inodes, from
    /proc/PID/net/unix ('Num RefCount Protocol Flags Type St Inode Path')."""
    paths = set()
    for line in data.split(b"\n")[1:]:
        fields = line.split(None, 7)  # a path may hold spaces
        if len(fields) < 8 or not fields[7].startswith(b"/"):
            continue
        try:
            flags, inode = int(fields[3], 16), parse_uint(fields[6], "inode")
        except ValueError:  # ParseError too
            continue
        if flags & _ACCEPTCON and inode in inodes:
            paths.add(fields[7].decode("utf-8", "surrogateescape"))
    return paths


def parse_net_tcp(data: bytes, family: int) -> list[tuple[int, bytes, int]]:
    """(inode, packed address, port) of the listening sockets in
    /proc/PID/net/tcp or tcp6: 'sl local_address rem_address st ... inode',
    addresses as hex 32-bit words in host byte order, then ':PORT'."""
    width = 8 if family == socket.AF_INET else 32
    out = []
    for line in data.split(b"\n")[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _TCP_LISTEN:
            continue
        address, _, port = fields[1].partition(b":")
        if len(address) != width or len(port) != 4:
            continue
        try:
            inode = parse_uint(fields[9], "inode")
            words = [int(address[i : i + 8], 16) for i in range(0, width, 8)]
            number = int(port, 16)
        except ValueError:
            continue
        out.append((inode, b"".join(struct.pack("=I", w) for w in words), number))
    return out


def listening(procfs: str, pid: int, netns: str) -> Listening:
    """The sockets pid listens on (see Listening); netns is the exporter's
    own /proc/self/ns/net. Raises OSError."""
    inodes = socket_inodes(procfs, pid)
    if not inodes:
        return NOTHING
    net = f"{procfs}/{pid}/net"
    unix = parse_net_unix(read_bytes(f"{net}/unix", NET_FILE_LIMIT, to_eof=True), inodes)
    tcp: set[tuple[int, bytes, int]] = set()
    ipv4_ports: set[int] = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            data = read_bytes(f"{net}/{name}", NET_FILE_LIMIT, to_eof=True)
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
        for inode, packed, port in parse_net_tcp(data, family):
            if inode in inodes:
                tcp.add((family, packed, port))
            if family == socket.AF_INET:
                ipv4_ports.add(port)
    reachable = _same_namespace(f"{procfs}/{pid}/ns/net", netns)
    return Listening(frozenset(unix), frozenset(tcp), reachable, frozenset(ipv4_ports))


@dataclass(frozen=True)
class PoolRef:
    """One pool as the process table shows it."""

    group: str
    pool: str
    master_pid: int
    master_conf: str
    worker_pid: int | None  # None: a configured pool with no worker alive (ondemand)


class _Loaded(NamedTuple):
    """One master's config as last read."""

    seen: frozenset[int]  # its workers then
    read_at: float  # monotonic
    pools: dict[str, PoolSettings] | None  # None: it could not be read
    sockets: Listening  # what the master listens on
    listed_at: float  # monotonic time sockets were listed
    ok: bool  # the load found no error


class Loads(NamedTuple):
    """The trusted masters' configs as last loaded (MasterConfigs.settings)."""

    settings: dict[tuple[int, str], PoolSettings]  # by (master pid, pool name)
    sockets: dict[int, Listening]  # by master pid
    failed: int  # masters whose last load found an error

    def error(self) -> str | None:
        """Why the phpfpm_config source is down; None when it is not."""
        return f"{self.failed} php-fpm master(s): config errors (logged)" if self.failed else None


NO_LOADS = Loads({}, {}, 0)

Answer = tuple[bool, PoolStatus | None]  # (queried, status): see _status
Pending = list[tuple[PoolRef, PoolSettings | None, Future[Answer]]]


class MasterConfigs:
    """The trusted masters' configs and the sockets they listen on, read
    again when a master's workers change and at least every CONFIG_REFRESH."""

    def __init__(self, config: PhpFpmConfig, procfs: str) -> None:
        self.config = config
        self.procfs = procfs
        self.errors = 0  # cumulative: config loads that found an error
        # By master PID, a hash of what its last config load reported, so
        # that the same problems are not logged again; pruned with the masters.
        self._logged: dict[int, int] = {}
        self._configs: dict[tuple[int, str], _Loaded] = {}  # by (master pid, config path)
        self._netns = "/proc/self/ns/net"  # the exporter's own, whatever procfs is read

    def configured(self, masters: dict[int, FpmMaster]) -> list[tuple[str, int]]:
        """(pool, master pid) of the pools the masters' last config loads name."""
        return [
            (name, pid)
            for (pid, conf), loaded in self._configs.items()
            if pid in masters and masters[pid].conf == conf
            for name in loaded.pools or ()
        ]

    def settings(self, refs: list[PoolRef], masters: dict[int, FpmMaster]) -> Loads:
        """Pool settings of every master, and the sockets each listens on."""
        workers: dict[tuple[int, str], set[int]] = {
            (pid, m.conf): set() for pid, m in masters.items()
        }
        running: dict[int, set[str]] = {}
        for r in refs:
            if r.worker_pid is not None:
                workers.setdefault((r.master_pid, r.master_conf), set()).add(r.worker_pid)
                running.setdefault(r.master_pid, set()).add(r.pool)
        now = time.monotonic()
        configs: dict[tuple[int, str], _Loaded] = {}
        due: list[tuple[int, str, set[int], _Loaded | None]] = []
        for (pid, conf), pids in workers.items():
            loaded = self._configs.get((pid, conf))
            if loaded is None or loaded.seen != pids or now - loaded.read_at >= CONFIG_REFRESH:
                due.append((pid, conf, pids, loaded))
            else:
                configs[(pid, conf)] = loaded
        # A load may take seconds (MAX_LOAD_CHARS), and any user can run
        # masters and replace their workers at will: one cycle loads for
        # LOAD_BUDGET seconds (one load at least), the longest unread first;
        # the others keep what they had until a later cycle.
        due.sort(key=lambda d: d[3].read_at if d[3] is not None else NEVER)
        over = False
        for pid, conf, pids, loaded in due:
            if not over:
                loaded = self._load(masters[pid], pid, pids, now, running.get(pid, set()), loaded)
                over = time.monotonic() >= now + LOAD_BUDGET
            if loaded is not None:
                configs[(pid, conf)] = loaded
        self._configs = configs  # masters gone are forgotten
        self._logged = {pid: h for pid, h in self._logged.items() if pid in masters}
        settings = {
            (pid, name): pool
            for (pid, _), loaded in configs.items()
            for name, pool in (loaded.pools or {}).items()
        }
        sockets = {pid: loaded.sockets for (pid, _), loaded in configs.items()}
        return Loads(settings, sockets, sum(not loaded.ok for loaded in configs.values()))

    def _load(
        self,
        master: FpmMaster,
        pid: int,
        workers: set[int],
        now: float,
        running: set[str],
        previous: _Loaded | None,
    ) -> _Loaded:
        """Read one master's config and the sockets it listens on. Whatever
        is wrong counts as one config error of that load and is logged in one
        line. A pool running without a config (its include removed since the
        master read it) is an error: its capacity metrics vanish."""
        conf = master.conf
        errors: list[str] = []
        notes: list[str] = []
        pools, sockets, listed_at = None, NOTHING, now
        try:
            pools = self._read_config(pid, conf, master.uid)
        except FpmConfigError as exc:
            errors.append(str(exc))
        if pools is not None:
            if missing := sorted(running - pools.keys()):
                names = ", ".join(repr(name) for name in missing)
                errors.append(f"{conf}: pools running but not configured: {names}")
            if any(p.status_path for p in pools.values()):
                sockets, listed_at = self._sockets(pid, conf, pools, now, previous, errors, notes)
        self.errors += bool(errors)
        self._report(pid, errors + notes)
        return _Loaded(frozenset(workers), now, pools, sockets, listed_at, not errors)

    def _read_config(self, pid: int, conf: str, uid: int) -> dict[str, PoolSettings]:
        """Read as the master's user (uid) could. Raises FpmConfigError."""
        try:
            if not conf.startswith("/"):  # started as `php-fpm -y CONF`: relative to its cwd
                conf = posixpath.join(os.readlink(f"{self.procfs}/{pid}/cwd"), conf)
            reader = master_reader(self.procfs, pid, uid)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise FpmConfigError(conf, f"cannot resolve: {reason}") from None
        return load_fpm_config(conf, root=f"{self.procfs}/{pid}/root", reader=reader)

    def _sockets(
        self,
        pid: int,
        conf: str,
        pools: dict[str, PoolSettings],
        now: float,
        previous: _Loaded | None,
        errors: list[str],
        notes: list[str],
    ) -> tuple[Listening, float]:
        """What the master listens on, and when that was listed. A config
        is re-read whenever a worker is replaced, but sockets change only
        with a reload: the listing (net/tcp holds every socket of the
        namespace) is kept up to CONFIG_REFRESH, unless a status address is
        not in it. Such an address is an error of the config (changed
        since, or lying): it is not contacted."""
        if previous is not None and now - previous.listed_at < CONFIG_REFRESH:
            missing, unreachable = self._status_addresses(conf, pools, previous.sockets)
            if not missing:
                notes += unreachable
                return previous.sockets, previous.listed_at
        try:
            sockets = listening(self.procfs, pid, self._netns)
        except OSError as exc:
            errors.append(f"{conf}: cannot list the master's sockets: {exc}")
            return NOTHING, now
        missing, unreachable = self._status_addresses(conf, pools, sockets)
        errors += missing
        notes += unreachable
        return sockets, now

    def _status_addresses(
        self, conf: str, pools: dict[str, PoolSettings], sockets: Listening
    ) -> tuple[list[str], list[str]]:
        """The pools' FastCGI status addresses sockets does not hold, and
        those it holds in a network namespace the exporter cannot reach."""
        missing, unreachable = [], []
        for name, pool in pools.items():
            address = pool.status_listen or pool.listen
            overrides = (self.config.pools.get(k) for k in (name, f"php-fpm:{name}"))
            if not pool.status_path or not address or any(o and o.status for o in overrides):
                continue
            try:
                family, target = parse_address(address)
            except ValueError:
                continue  # refused again, and logged, by the query itself
            if family == socket.AF_UNSPEC:  # a host name: its port at least
                held = any(port == target[1] for _, _, port in sockets.tcp)
            else:
                held = sockets.has(family, target)
            if not held:
                missing.append(
                    f"{conf}: pool {name!r}: status address {address!r} is not a socket "
                    "this master listens on: not queried"
                )
            elif family != socket.AF_UNIX and not sockets.reachable:
                unreachable.append(
                    f"{conf}: pool {name!r}: the master is in another network namespace: "
                    f"its TCP status address {address!r} is not reachable"
                )
        return missing, unreachable

    def _report(self, pid: int, messages: list[str]) -> None:
        """Log what a config load found, in one line, unless the master's
        previous load found the same."""
        digest = hash(tuple(messages))
        if self._logged.get(pid, hash(())) == digest:
            return
        self._logged[pid] = digest
        if messages:
            more = f" (and {len(messages) - REPORTED} more)" if len(messages) > REPORTED else ""
            text = printable("; ".join(messages[:REPORTED]))
            if len(text) > REPORT_CHARS:  # names and addresses are a tenant's, of any length
                text = text[: REPORT_CHARS - 3] + "..."
            log.warning("php-fpm master %d: %s%s", pid, text, more)


class PhpFpmSource:
    """php-fpm pools: which masters are trusted, their configs (MasterConfigs)
    and each pool's status query, on a thread pool so that it runs while the
    collection reads smaps."""

    def __init__(self, config: PhpFpmConfig, procfs: str, interval: float) -> None:
        self.config = config
        self.procfs = procfs
        # The status query must leave the collection time to finish its interval.
        self.timeout = min(config.status_timeout, interval / 2)
        self.configs = MasterConfigs(config, procfs)
        # pid -> (start time, effective uid or None: not trusted)
        self._trust: dict[int, tuple[int, int | None]] = {}
        # Threads are made on demand and reused: each pool's query runs at
        # once, up to this many stuck (saturated) pools at a time.
        self._queries = ThreadPoolExecutor(MAX_CONCURRENT_QUERIES, "fpm-status")
        self._inflight: dict[str, Future[Answer]] = {}  # by group: each pool's last query

    @property
    def config_errors(self) -> int:
        """Cumulative config loads that found an error."""
        return self.configs.errors

    def close(self) -> None:
        """Stop the status-query threads; a query in flight ends within its timeout."""
        self._queries.shutdown(wait=True, cancel_futures=True)

    def trust(self, masters: dict[int, int]) -> dict[int, int]:
        """{pid: effective uid} of the masters worth trusting among masters
        ({pid: start time}; see master_uid). Each PID is checked once per
        start time; PIDs no longer given are forgotten."""
        checked = {}
        for pid, start in masters.items():
            known = self._trust.get(pid)
            checked[pid] = (
                known
                if known and known[0] == start
                else (start, master_uid(self.procfs, pid, start))
            )
        self._trust = checked
        return {pid: uid for pid, (_, uid) in checked.items() if uid is not None}

    def configured(self, masters: dict[int, FpmMaster]) -> list[tuple[str, int]]:
        """For the grouping (classify.FpmTrust): the pools to name."""
        return self.configs.configured(masters)

    def load(self, refs: list[PoolRef], masters: dict[int, FpmMaster]) -> Loads:
        """Read the masters' configs that are due (MasterConfigs.settings)."""
        return self.configs.settings(refs, masters)

    def start(self, refs: list[PoolRef], masters: dict[int, FpmMaster], loads: Loads) -> Pending:
        """Start every pool's status query, with the settings loads holds.

        refs are the pools seen through the workers of masters (the trusted
        ones); pools a master configures but runs no worker for (ondemand,
        idle) are added. Each query gets its own thread, so a saturated pool
        delays no other pool.
        """
        settings, sockets = loads.settings, loads.sockets
        running = dict.fromkeys((r.pool, r.master_pid) for r in refs)
        idle = [(name, pid) for pid, name in settings if (name, pid) not in running]
        # The one naming rule over the pools the grouping named (classify.Grouper:
        # running and configured), so an idle pool gets the group it has running.
        names = fpm_pool_groups({**running, **dict.fromkeys(idle)}, masters)
        taken = {r.group for r in refs}
        for name, pid in idle:
            group = names[(name, pid)]
            if group in taken:  # configured since the grouping (a first load): next cycle
                log.debug("idle pool %s of master %d: group taken", printable(name), pid)
                continue
            taken.add(group)
            refs = [*refs, PoolRef(group, name, pid, masters[pid].conf, None)]
        pending = []
        inflight: dict[str, Future[Answer]] = {}
        for ref in refs:
            s = settings.get((ref.master_pid, ref.pool))
            future: Future[Answer] = Future()
            previous = self._inflight.get(ref.group)
            if not self._has_status(ref, s):
                future.set_result((False, None))
            elif previous is not None and not previous.done():
                # An HTTP page may drip a byte per timeout and hold its thread for
                # ever: a pool's next query waits until its last one has ended.
                future.set_result((True, None))
                inflight[ref.group] = previous
            else:
                peer = (ref.master_pid, masters[ref.master_pid].uid)
                listens = sockets.get(ref.master_pid, NOTHING)  # not loaded yet: nothing
                future = self._queries.submit(self._status, ref, s, listens, peer)
                inflight[ref.group] = future
            pending.append((ref, s, future))
        self._inflight = inflight
        return pending

    def finish(self, pending: Pending, deadline: float) -> tuple[PoolInfo, ...]:
        """Collect the status answers (until the deadline, a monotonic time)."""
        out = []
        for ref, s, future in pending:
            try:
                queried, status = future.result(timeout=max(deadline - time.monotonic(), 0))
            except FutureTimeout:
                future.cancel()  # not started yet: too many pools stuck at once
                queried, status = True, None
            override = self._override(ref)
            max_children = override.max_children if override else None
            if max_children is None and s is not None:
                max_children = s.max_children
            out.append(PoolInfo(ref.group, s, max_children, status, queried, ref.master_pid))
        return tuple(out)

    # ----------------------------------------------------------- helpers

    def _override(self, ref: PoolRef) -> PoolOverride | None:
        pools = self.config.pools
        return pools.get(ref.group) or pools.get(ref.pool)

    def _has_status(self, ref: PoolRef, s: PoolSettings | None) -> bool:
        override = self._override(ref)
        if override is not None and override.status:
            return True
        return s is not None and bool(s.status_path) and bool(s.status_listen or s.listen)

    def _status(
        self, ref: PoolRef, s: PoolSettings | None, sockets: Listening, peer: tuple[int, int]
    ) -> Answer:
        """(queried, status): runs in the status thread pool. Over FastCGI,
        only a socket the master holds is contacted (see Listening, peer)."""
        override = self._override(ref)
        try:
            if override is not None and override.status:
                return True, parse_status(self._http(override.status))
            assert s is not None and s.status_path  # checked by _has_status
            listen = s.status_listen or s.listen
            assert listen  # checked by _has_status
            resp = request(
                listen,
                s.status_path,
                "json",
                timeout=self.timeout,
                max_bytes=STATUS_MAX_BYTES,
                root=f"{self.procfs}/{ref.master_pid}/root",
                allow=sockets.reaches,
                peer=peer,
            )
            if resp.status != 200:
                raise ValueError(f"status page answered {resp.status}")
            return True, parse_status(resp.body)
        # HTTPException: an override's server answering no HTTP (BadStatusLine,
        # LineTooLong are no OSError); escaping, it would fail the collection.
        except (OSError, FastCGIError, ValueError, http.client.HTTPException) as exc:
            log.debug("status of %s: %s", printable(ref.group), printable(str(exc)))
            return True, None

    def _http(self, url: str) -> bytes:
        if "json" not in url.partition("?")[2].split("&"):
            url += ("&" if "?" in url else "?") + "json"
        req = urllib.request.Request(url, headers={"User-Agent": f"pss-exporter/{__version__}"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            body: bytes = resp.read(STATUS_MAX_BYTES + 1)
        if len(body) > STATUS_MAX_BYTES:
            raise ValueError(f"status page larger than {STATUS_MAX_BYTES} bytes")
        return body
