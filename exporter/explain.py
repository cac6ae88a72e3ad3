"""`pss-exporter explain`: where the used memory went, as a table or JSON."""

from __future__ import annotations

import json
from typing import Any

from .accounting import COMPONENTS, FROM_ZONEINFO, USED_FIELDS
from .capacity import HOST, MEMORY_LIMIT, OBSERVED_PEAK, nearest_rank
from .snapshot import PoolStats, Snapshot
from .text import excerpt, human, one_line

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
                lines.append(f"  {one_line(g['group']):<28} {human(g['pss_bytes']):>11}")
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


# ------------------------------------------------------- explain --pool NAME


def find_pool(snap: Snapshot, name: str) -> PoolStats:
    """The pool of group NAME, or php-fpm:NAME; ValueError naming the pools otherwise."""
    for pool in snap.pools:
        if pool.info.group in (name, f"php-fpm:{name}"):
            return pool
    known = one_line(", ".join(p.info.group for p in snap.pools)) or "none"  # tenants' names
    raise ValueError(f"no php-fpm pool {excerpt(name)} (pools: {known})")


def pool_dict(snap: Snapshot, name: str, sizing: str, reserve: float) -> dict[str, Any]:
    """The derivation of one pool's capacity, figure by figure (--pool --json)."""
    pool = find_pool(snap, name)
    cap, info = pool.capacity, pool.info
    cg = snap.cgroups.get(info.group)
    peaks = cap.peaks.peaks
    group = next((g for g in snap.groups if g.name == info.group), None)
    members = [p for p in snap.pools if p.capacity.domain == cap.domain]
    return {
        "group": info.group,
        "max_children": info.max_children,
        "memory_limit_bytes": info.settings.memory_limit if info.settings else None,
        "pss_bytes": group.pss if group else 0,
        "uss_bytes": group.uss if group else 0,
        "shared_bytes": cap.shared,
        "peaks": {
            "workers": len(peaks),
            "window_seconds": cap.peaks.window,
            "observed_seconds": cap.peaks.observed,
            "median_bytes": nearest_rank(peaks, 0.5) if peaks else None,
            "p95_bytes": nearest_rank(peaks, 0.95) if peaks else None,
            "max_bytes": peaks[-1] if peaks else None,
            "baseline_bytes": cap.peaks.baseline,
            "sizing": sizing,
        },
        "domain": {
            "name": cap.domain,
            # The domain's own figures: the pool's cgroup may be a child of it.
            "cgroup_limit_bytes": cg.domain_limit if cg else None,
            "cgroup_usage_bytes": cg.domain_usage if cg else None,
            "cgroup_headroom_bytes": cg.headroom if cg else None,
            "memory_available_bytes": snap.memory_available,
            "room_bytes": cap.room,
            "pools": [
                {
                    "group": p.info.group,
                    "pss_bytes": next((g.pss for g in snap.groups if g.name == p.info.group), 0),
                    "demand_bytes": p.capacity.demand,
                    "budget_bytes": p.capacity.budget,
                }
                for p in members
            ],
        },
        "reserve": reserve,
        "budget_bytes": cap.budget,
        "bases": {
            basis: {
                "worker_size_bytes": s.worker_size,
                "projected_bytes": s.projected,
                "recommended_max_children": s.recommended,
            }
            for basis, s in cap.bases.items()
        },
    }


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def render_pool(snap: Snapshot, name: str, sizing: str, reserve: float) -> str:
    d = pool_dict(snap, name, sizing, reserve)
    pk, dom = d["peaks"], d["domain"]
    size = d["bases"][OBSERVED_PEAK]
    limit = d["bases"][MEMORY_LIMIT]
    lines = [
        f"pool {one_line(d['group'])}: pm.max_children {d['max_children'] or '-'}, "
        f"memory_limit {human(d['memory_limit_bytes'])}",
        "",
        f"shared = pool PSS - pool USS = {human(d['pss_bytes'])} - {human(d['uss_bytes'])}"
        f" = {human(d['shared_bytes'])}",
        f"worker peaks (VmHWM - (RSS - USS)): {pk['workers']} workers in the window",
        f"  (php_fpm.window {pk['window_seconds']:.0f} s, {pk['observed_seconds']:.0f} s of it "
        f"observed): median {human(pk['median_bytes'])}, p95 {human(pk['p95_bytes'])},",
        f"  max {human(pk['max_bytes'])}; least USS (baseline) {human(pk['baseline_bytes'])}",
        f"worker size ({pk['sizing']} of the peaks): {human(size['worker_size_bytes'])}",
        "",
    ]
    if dom["name"] == HOST:
        lines.append(
            f"memory domain: the host (no memory limit), MemAvailable "
            f"{human(dom['memory_available_bytes'])}"
        )
    else:
        lines.append(
            f"memory domain: cgroup {one_line(dom['name'])}: "
            f"limit {human(dom['cgroup_limit_bytes'])},\n"
            f"  usage {human(dom['cgroup_usage_bytes'])}, headroom "
            f"{human(dom['cgroup_headroom_bytes'])}; MemAvailable "
            f"{human(dom['memory_available_bytes'])}"
        )
    pss = sum(p["pss_bytes"] for p in dom["pools"])
    if dom["cgroup_usage_bytes"] is not None:
        lines.append(
            f"other groups and page cache in the cgroup: usage - pools' PSS = "
            f"{human(max(dom['cgroup_usage_bytes'] - pss, 0))}"
        )
    lines.append(
        f"room = the domain's pools' PSS {human(pss)} + the tighter of headroom and "
        f"MemAvailable\n     = {human(dom['room_bytes'])}"
    )
    lines.append(f"{'POOL OF THE DOMAIN':<40} {'PSS':>11} {'DEMAND':>11} {'BUDGET':>11}")
    for p in dom["pools"]:
        name = one_line(p["group"])  # a tenant's name, escaped before it is cut
        name = name if len(name) <= 40 else name[:39] + "~"
        lines.append(
            f"{name:<40} {human(p['pss_bytes']):>11} {human(p['demand_bytes']):>11}"
            f" {human(p['budget_bytes']):>11}"
        )
    lines += [
        f"budget = room x (1 - reserve {d['reserve']:.0%}) x demand / the domain's demand",
        f"       = {human(d['budget_bytes'])}",
        "",
        f"recommended max_children = floor((budget - shared) / worker size) = "
        f"{_count(size['recommended_max_children'])}",
        f"projected = shared + max_children x worker size = {human(size['projected_bytes'])}"
        f" (budget {human(d['budget_bytes'])})",
        f"memory_limit bound: memory_limit + baseline = {human(limit['worker_size_bytes'])}"
        f" a worker,",
        f"  recommended {_count(limit['recommended_max_children'])}, projected "
        f"{human(limit['projected_bytes'])}",
    ]
    return "\n".join(lines) + "\n"


def render_pool_json(snap: Snapshot, name: str, sizing: str, reserve: float) -> str:
    return json.dumps(pool_dict(snap, name, sizing, reserve), indent=2) + "\n"
