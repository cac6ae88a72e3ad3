"""The exporter's own process: the capabilities it holds and needs, and the
process metrics (CPU, memory, descriptors, Python) it reports about itself.

Reading another user's smaps_rollup passes a ptrace access check: root (with
its capabilities), or CAP_SYS_PTRACE; where /proc is restricted (hidepid) it
also needs CAP_DAC_READ_SEARCH. The kernel log (/dev/kmsg) needs CAP_SYSLOG.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from .discovery import read_bytes

# Capability bit numbers (include/uapi/linux/capability.h) and why we need them.
NEEDED = {
    "cap_sys_ptrace": (19, "read other users' /proc/PID/smaps_rollup"),
    "cap_dac_read_search": (2, "read /proc/PID files where /proc is restricted"),
    "cap_syslog": (34, "read /dev/kmsg to attribute OOM kills"),
}


def parse_cap_eff(status: bytes) -> int:
    """The effective capability mask from /proc/PID/status (0 if absent)."""
    for line in status.split(b"\n"):
        if line.startswith(b"CapEff:"):
            return int(line.split()[1], 16)
    return 0


@functools.cache
def held() -> dict[str, bool]:
    """{capability: held} for the needed capabilities of this process.

    Always this process's own /proc (not --path.procfs): a container sees its
    own credentials there."""
    mask = parse_cap_eff(read_bytes("/proc/self/status"))
    return {name: bool(mask >> bit & 1) for name, (bit, _) in NEEDED.items()}


def partial_reason(caps: dict[str, bool]) -> str | None:
    """One line for the log when PSS will be partial, or None."""
    if caps["cap_sys_ptrace"]:
        return None
    return (
        "running without CAP_SYS_PTRACE: other users' smaps_rollup cannot be read, so their "
        "processes count in pss_group_unreadable_processes and PSS is partial "
        "(run as root, or grant CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)"
    )


class OwnSample(NamedTuple):
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


class OwnFamily(NamedTuple):
    """One family of prometheus_client's process and platform collectors, as
    plain values (the metrics layer builds its own Metric from it)."""

    name: str
    kind: str
    doc: str
    samples: tuple[OwnSample, ...]


@dataclass(frozen=True)
class OwnProcess:
    """The exporter's own process, read at collection time."""

    privileges: tuple[tuple[str, bool], ...] = ()  # (capability, held), as NEEDED
    families: tuple[OwnFamily, ...] = ()  # process_* and python_info


def own_process() -> OwnProcess:
    """Read the exporter's capabilities and process metrics now (its
    /proc/self), so that rendering a snapshot reads nothing."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    families = tuple(
        OwnFamily(
            m.name,
            m.type,
            m.documentation,
            tuple(OwnSample(s.name, tuple(s.labels.items()), s.value) for s in m.samples),
        )
        for m in registry.collect()
    )
    return OwnProcess(tuple(held().items()), families)
