"""php-fpm pools as a data source: their configuration, their status page
and their cgroup's headroom.

Configuration is read from the master's config file through
/proc/MASTER/root, so pools inside containers are found from the host. Status
pages are queried concurrently with the smaps reads, each with a short
timeout: a saturated pool cannot answer its own status page, and that must
not delay the other groups nor hide the pool's memory metrics.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from . import __version__
from .config import PhpFpmConfig, PoolOverride
from .fastcgi import FastCGIError, request
from .phpfpm_config import FpmConfigError, PoolSettings, load_fpm_config

log = logging.getLogger(__name__)

STATUS_MAX_BYTES = 1 << 20
MAX_CONCURRENT_QUERIES = 256
# A master's config is re-read when its workers were replaced (a reload
# respawns them all) and at least this often (seconds).
CONFIG_REFRESH = 60.0


@dataclass(frozen=True)
class PoolStatus:
    """The counters of php-fpm's status page (`?json`)."""

    accepted_conn: int
    listen_queue: int
    max_listen_queue: int
    idle: int
    active: int
    total: int
    max_active: int
    max_children_reached: int
    slow_requests: int


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
    """Parse the JSON status page; raise ValueError when it is not one."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"status page is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("status page is not a JSON object")
    values = {}
    for field, key in _STATUS_KEYS.items():
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"status page lacks an integer {key!r}")
        values[field] = value
    return PoolStatus(**values)


@dataclass(frozen=True)
class PoolRef:
    """One pool as the process table shows it."""

    group: str
    pool: str
    master_pid: int | None  # None: the workers' parent is not a visible master
    master_conf: str | None
    worker_pid: int | None  # None: a configured pool with no worker alive (ondemand)


@dataclass(frozen=True)
class PoolInfo:
    """What one collection learned about a pool beyond its memory."""

    group: str
    settings: PoolSettings | None  # None: no config could be read
    max_children: int | None  # configured, or the YAML override
    status: PoolStatus | None  # None: no status source, or it did not answer
    status_queried: bool


class PhpFpmSource:
    def __init__(self, config: PhpFpmConfig, procfs: str, interval: float) -> None:
        self.config = config
        self.procfs = procfs
        # The status query must leave the collection time to finish its interval.
        self.timeout = min(config.status_timeout, interval / 2)
        self.config_errors = 0  # cumulative
        self._logged: set[tuple[int | None, str]] = set()
        # (master pid, config path) -> (workers seen, monotonic read time, pools)
        self._configs: dict[tuple[int, str], tuple[frozenset, float, dict | None]] = {}
        # Threads are made on demand and reused: each pool's query runs at
        # once, up to this many stuck (saturated) pools at a time.
        self._queries = ThreadPoolExecutor(MAX_CONCURRENT_QUERIES, "fpm-status")

    def start(
        self, refs: list[PoolRef], masters: dict[int, str]
    ) -> list[tuple[PoolRef, PoolSettings | None, Future]]:
        """Read the masters' configs and start every pool's status query.

        refs are the pools seen through their workers; pools a master
        configures but runs no worker for (ondemand, idle) are added. Each
        query gets its own thread, so a saturated pool delays no other pool.
        """
        settings = self._settings(refs, masters)
        seen = {(r.master_pid, r.pool) for r in refs}
        taken = {r.group for r in refs}
        for (pid, name), _ in settings.items():
            if (pid, name) not in seen:
                group = f"php-fpm:{name}"
                if group in taken:
                    group = f"{group}@{masters[pid]}"
                taken.add(group)
                refs = [*refs, PoolRef(group, name, pid, masters[pid], None)]
        pending = []
        for ref in refs:
            s = settings.get((ref.master_pid, ref.pool))
            future: Future = Future()
            if self._has_status(ref, s):
                future = self._queries.submit(self._status, ref, s)
            else:
                future.set_result((False, None))
            pending.append((ref, s, future))
        return pending

    def finish(
        self, pending: list[tuple[PoolRef, PoolSettings | None, Future]], deadline: float
    ) -> tuple[PoolInfo, ...]:
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
            out.append(PoolInfo(ref.group, s, max_children, status, queried))
        return tuple(out)

    # ----------------------------------------------------------- helpers

    def _override(self, ref: PoolRef) -> PoolOverride | None:
        pools = self.config.pools
        return pools.get(ref.group) or pools.get(ref.pool)

    def _settings(
        self, refs: list[PoolRef], masters: dict[int, str]
    ) -> dict[tuple[int | None, str], PoolSettings]:
        """Pool settings of every master."""
        workers: dict[tuple[int, str], set[int]] = {(pid, c): set() for pid, c in masters.items()}
        for r in refs:
            if r.master_pid is not None and r.master_conf and r.worker_pid is not None:
                workers.setdefault((r.master_pid, r.master_conf), set()).add(r.worker_pid)
        now = time.monotonic()
        configs = {}
        for key, pids in workers.items():
            seen, read_at, pools = self._configs.get(key, (frozenset(), -CONFIG_REFRESH, None))
            if seen != pids or now - read_at >= CONFIG_REFRESH:
                seen, read_at, pools = frozenset(pids), now, self._load(*key)
            configs[key] = (seen, read_at, pools)
        self._configs = configs  # masters gone are forgotten
        return {
            (pid, name): settings
            for (pid, _), (_, _, pools) in configs.items()
            for name, settings in (pools or {}).items()
        }

    def _load(self, pid: int, conf: str) -> dict[str, PoolSettings] | None:
        try:
            if not conf.startswith("/"):  # started as `php-fpm -y CONF`: relative to its cwd
                conf = posixpath.join(os.readlink(f"{self.procfs}/{pid}/cwd"), conf)
            return load_fpm_config(conf, root=f"{self.procfs}/{pid}/root")
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            return self._failed(pid, FpmConfigError(conf, f"cannot resolve: {reason}"))
        except FpmConfigError as exc:
            return self._failed(pid, exc)

    def _failed(self, pid: int, exc: FpmConfigError) -> None:
        self.config_errors += 1
        if (pid, str(exc)) not in self._logged:
            self._logged.add((pid, str(exc)))
            log.warning("php-fpm master %s: %s", pid, exc)

    def _has_status(self, ref: PoolRef, s: PoolSettings | None) -> bool:
        override = self._override(ref)
        if override is not None and override.status:
            return True
        return s is not None and bool(s.status_path) and bool(s.status_listen or s.listen)

    def _status(self, ref: PoolRef, s: PoolSettings | None) -> tuple[bool, PoolStatus | None]:
        """(queried, status): runs in the status thread pool."""
        override = self._override(ref)
        try:
            if override is not None and override.status:
                return True, parse_status(self._http(override.status))
            assert s is not None and s.status_path  # checked by _has_status
            listen = s.status_listen or s.listen
            resp = request(
                listen,
                s.status_path,
                "json",
                timeout=self.timeout,
                max_bytes=STATUS_MAX_BYTES,
                root=f"{self.procfs}/{ref.master_pid}/root",
            )
            if resp.status != 200:
                raise ValueError(f"status page answered {resp.status}")
            return True, parse_status(resp.body)
        except (OSError, FastCGIError, ValueError) as exc:
            log.debug("status of %s: %s", ref.group, exc)
            return True, None

    def _http(self, url: str) -> bytes:
        if "json" not in url.partition("?")[2].split("&"):
            url += ("&" if "?" in url else "?") + "json"
        req = urllib.request.Request(url, headers={"User-Agent": f"pss-exporter/{__version__}"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            body = resp.read(STATUS_MAX_BYTES + 1)
        if len(body) > STATUS_MAX_BYTES:
            raise ValueError(f"status page larger than {STATUS_MAX_BYTES} bytes")
        return body
