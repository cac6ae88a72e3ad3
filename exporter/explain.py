"""`pss-exporter explain`: where the used memory went, as a table or JSON."""

from __future__ import annotations

import json
from typing import Any

from .accounting import COMPONENTS, FROM_ZONEINFO, USED_FIELDS
from .snapshot import Snapshot
from .text import human

TOP_GROUPS = 5
EXPLAIN_SHARE = 0.01  # components from 1% of used get their sentence


def source_error(snap: Snapshot, name: str) -> str | None:
    """Why the source was down in this snapshot; None when it was not."""
    return next((r.error for r in snap.sources if r.name == name and not r.ok), None)


def missing_reason(snap: Snapshot, missing: list[str]) -> str | None:
    """The sentence saying why components are left out, into unexplained."""
    if not missing:
        return None
    names = ", ".join(missing)
    why = source_error(snap, "zoneinfo") or "not usable"
    return f"without zoneinfo ({why}), {names} are not computed: their memory is in unexplained"


def as_dict(snap: Snapshot) -> dict[str, Any]:
    """The breakdown for machines (--json); raises ValueError without one."""
    acc = snap.accounting
    if acc is None or acc.used is None:
        why = source_error(snap, "meminfo") or f"it has no {' or no '.join(USED_FIELDS)}"
        raise ValueError(f"no reconciliation: meminfo: {why}")
    groups = sorted(snap.groups, key=lambda g: -g.pss)[:TOP_GROUPS]
    missing = [c for c in FROM_ZONEINFO if c not in acc.components]
    return {
        "used_bytes": acc.used,
        "used_procps3_bytes": acc.used_procps3,
        "memory_total_bytes": snap.memory_total,
        "memory_available_bytes": snap.memory_available,
        "components": [
            {"component": name, "bytes": value, "share": value / acc.used if acc.used else 0.0}
            for name, value in acc.components.items()
        ],
        "top_groups": [{"group": g.name, "pss_bytes": g.pss} for g in groups],
        "missing_components": missing,
        "missing_reason": missing_reason(snap, missing),
        "processes": acc.totals.processes,
        "unreadable_processes": acc.totals.unreadable,
    }


def render(snap: Snapshot) -> str:
    data = as_dict(snap)
    used, total, procps3 = (
        data["used_bytes"],
        data["memory_total_bytes"],
        data["used_procps3_bytes"],
    )
    lines = [
        f"used memory (MemTotal - MemAvailable): {human(used)} of {human(total)}"
        + (f"  [procps 3.3 'used': {human(procps3)}]" if procps3 is not None else ""),
        "",
        f"{'COMPONENT':<30} {'SIZE':>11} {'SHARE':>7}",
    ]
    for c in data["components"]:
        lines.append(f"{c['component']:<30} {human(c['bytes']):>11} {c['share']:>7.1%}")
        if c["component"] == "processes_pss":
            for g in data["top_groups"]:
                lines.append(f"  {g['group']:<28} {human(g['pss_bytes']):>11}")
    lines.append(f"{'total':<30} {human(used):>11} {1:>7.1%}")
    lines.append("")
    for c in data["components"]:
        if abs(c["share"]) >= EXPLAIN_SHARE:
            lines.append(f"{c['component']}: {COMPONENTS[c['component']]}.")
    if data["missing_reason"]:
        lines.append(data["missing_reason"] + ".")
    if data["unreadable_processes"]:
        lines.append(
            f"{data['unreadable_processes']} processes could not be read (permissions, or "
            "they exited during the pass): their memory is in unexplained."
        )
    return "\n".join(lines) + "\n"


def render_json(snap: Snapshot) -> str:
    return json.dumps(as_dict(snap), indent=2) + "\n"
