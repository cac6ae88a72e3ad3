"""What the exporter may read: the capabilities it holds and needs.

Reading another user's smaps_rollup passes a ptrace access check: root (with
its capabilities), or CAP_SYS_PTRACE; where /proc is restricted (hidepid) it
also needs CAP_DAC_READ_SEARCH. The kernel log (/dev/kmsg) needs CAP_SYSLOG.
"""

from __future__ import annotations

import functools

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
