"""The benchmark's results as markdown: tables, ratios and the issue's
targets with met / not met."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from cadence import TOLERANCE, Cadence, GroupDiff
from latency import BUSY_INTERVAL, IDLE_INTERVAL, QUANTILES, Latency
from measure import Row

BARE = "bare loop (kernel floor)"
FULL = "pss-exporter full: collect()"
FULL_RENDER = "pss-exporter full: collect()+render()"
KIB_PER_MIB = 1024
WORST_SHOWN = 5

# The targets.
FULL_VS_BARE = 1.2
FULL_VS_PE = 0.5
DEFAULT_VS_BARE = 0.3
P99 = 0.005
RSS_MIB = 40
RSS_GROWTH_MIB = 2  # "flat": at most this much growth over the churn


@dataclass(frozen=True)
class Rss:
    """What rss_probe.py printed."""

    processes: int
    groups: int
    spawned: int
    imported_kib: int
    warm_kib: int
    series_kib: list[int]
    end_kib: int
    peak_kib: int
    end_pss_kib: int
    end_uss_kib: int


@dataclass(frozen=True)
class Results:
    header: tuple[str, ...]  # lines about the machine and the command
    fleet_groups: tuple[str, ...]  # pss-exporter's groups of the fleet's processes
    rows: tuple[Row, ...]
    churn: int  # user processes seen to start or exit during the full-freshness rounds
    cadence: Cadence
    latency: tuple[Latency, ...]
    rss: Rss


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    goal: str
    met: bool | None  # None: could not be measured


def table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def count(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


def ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _row(results: Results, name: str) -> Row:
    return next(r for r in results.rows if r.name == name)


def _pe(results: Results) -> Row:
    return next(r for r in results.rows if r.name.startswith("process-exporter"))


def cpu_table(results: Results) -> list[str]:
    bare, pe = _row(results, BARE), _pe(results)
    rows = [
        (
            r.name,
            count(r.processes),
            ms(r.cpu),
            ms(r.wall),
            fmt_ratio(ratio(r.cpu, bare.cpu)),
            fmt_ratio(ratio(r.cpu, pe.cpu)),
            r.note,
        )
        for r in results.rows
    ]
    head = ("measurement", "smaps reads/cycle", "CPU ms/cycle", "wall ms/cycle")
    return table((*head, "CPU vs bare loop", "CPU vs process-exporter", "note"), rows)


def _worst(diffs: Sequence[GroupDiff], measure: Callable[[GroupDiff], float]) -> list[str]:
    """max, its group and the count over TOLERANCE of measure over diffs."""
    if not diffs:
        return ["-", "-", "0"]
    worst = max(diffs, key=measure)
    over = sum(measure(d) > TOLERANCE for d in diffs)
    return [f"{measure(worst):.3%}", worst.name, str(over)]


def kib(n: int) -> str:
    return str(n // 1024)


def churn_line(churn: int) -> str:
    return (
        f"User processes seen to start or exit during the full-freshness rounds: {churn} "
        "(the bare loop's and the full rows' counts can differ by that much)."
    )


def cadence_lines(c: Cadence, fleet: Sequence[str]) -> list[str]:
    diffs = c.accuracy
    own = [d for d in diffs if d.name in fleet]
    summary = [
        ["the full read just after", *_worst(diffs, lambda d: d.vs_after)],
        ["the range of the full reads just before and after", *_worst(diffs, lambda d: d.outside)],
        ["the same, the fleet's groups only", *_worst(own, lambda d: d.outside)],
    ]
    worst = [
        (d.name, str(d.processes), kib(d.before), kib(d.default), kib(d.after), f"{d.outside:.3%}")
        for d in diffs[:WORST_SHOWN]
    ]
    return [
        f"Default settings: interval {c.interval:g}s, max_age {c.max_age:g}s, "
        f"{c.cycles} cycles; per cycle on average {count(c.collect.processes)} "
        f"smaps_rollup read, {count(c.reused)} reused.",
        "",
        "Accuracy: one more default-settings cycle between two full reads (max_age 0), "
        f"back to back; {len(diffs)} groups compared.",
        "",
        *table(
            (
                "default snapshot against",
                "max relative PSS difference",
                "group",
                f"groups > {TOLERANCE:.0%}",
            ),
            summary,
        ),
        "",
        f"The {WORST_SHOWN} groups furthest from the full reads:",
        "",
        *table(
            (
                "group",
                "processes",
                "PSS before KiB",
                "PSS default KiB",
                "PSS after KiB",
                "outside the range",
            ),
            worst,
        ),
    ]


def latency_table(latency: Sequence[Latency]) -> list[str]:
    head = ("processes", "collection interval", "last collection ms", "groups in /metrics")
    head += ("encoding", "body bytes", "requests")
    head += (*(f"p{q * 100:g} ms" for q in QUANTILES), "max ms")
    rows = [
        (
            str(x.processes),
            f"{x.interval:g}s",
            ms(x.collection),
            str(x.groups),
            x.encoding,
            str(x.size),
            str(x.requests),
            *(ms(q) for q in x.quantiles),
            ms(x.max),
        )
        for x in latency
    ]
    return table(head, rows)


def mib(kib: int) -> str:
    return f"{kib / KIB_PER_MIB:.1f}"


def rss_lines(rss: Rss) -> list[str]:
    head = ("processes", "groups", "spawn/exit", "VmRSS after imports MiB")
    head += ("after warm-up MiB", "at end MiB", "VmHWM (peak) MiB")
    row = (str(rss.processes), str(rss.groups), str(rss.spawned), mib(rss.imported_kib))
    row += (mib(rss.warm_kib), mib(rss.end_kib), mib(rss.peak_kib))
    series = ", ".join(mib(k) for k in rss.series_kib)
    return [
        *table(head, [row]),
        "",
        f"VmRSS at every tenth of the churn (MiB): {series}.",
        "",
        f"At the end, PSS {mib(rss.end_pss_kib)} MiB and USS {mib(rss.end_uss_kib)} MiB "
        "(RSS counts every page of the shared libraries it maps; PSS only its share).",
    ]


def met(value: float | None, goal: float) -> bool | None:
    return None if value is None else value <= goal


def _cpu_targets(results: Results) -> list[Target]:
    bare, full = _row(results, BARE), _row(results, FULL)
    full_render, pe = _row(results, FULL_RENDER), _pe(results)
    checks = (
        ("full freshness: collect() CPU vs bare loop", full, bare, FULL_VS_BARE),
        (
            "full freshness: collect()+render() CPU vs process-exporter scrape",
            full_render,
            pe,
            FULL_VS_PE,
        ),
        (
            "default settings: collect() CPU vs bare loop",
            results.cadence.collect,
            bare,
            DEFAULT_VS_BARE,
        ),
    )
    out = []
    for name, row, base, goal in checks:
        value = ratio(row.cpu, base.cpu)
        out.append(Target(name, fmt_ratio(value), f"<= {goal}x", met(value, goal)))
    diff = max((d.outside for d in results.cadence.accuracy), default=0.0)
    out.append(
        Target(
            "default settings: every group's PSS vs full reads at the same moment",
            f"{diff:.3%}",
            f"<= {TOLERANCE:.0%}",
            met(diff, TOLERANCE),
        )
    )
    return out


def _latency_target(latency: Sequence[Latency], interval: float, title: str) -> Target:
    """p99 of the rows served at this interval: the worst encoding, for each
    process count."""
    p99: dict[int, float] = {}
    for x in latency:
        if x.interval == interval:
            p99[x.processes] = max(p99.get(x.processes, 0.0), x.quantiles[-1])
    return Target(
        f"/metrics p99, 1,000 groups, {title}",
        ", ".join(f"{ms(v)} ms ({n} processes)" for n, v in p99.items()),
        f"<= {P99 * 1000:g} ms",
        met(max(p99.values(), default=None), P99),
    )


def _rss_targets(rss: Rss) -> list[Target]:
    growth = (rss.end_kib - rss.warm_kib) / KIB_PER_MIB
    return [
        Target(
            f"exporter peak RSS (VmHWM) with {rss.processes} processes",
            f"{mib(rss.peak_kib)} MiB",
            f"<= {RSS_MIB} MiB",
            met(rss.peak_kib / KIB_PER_MIB, RSS_MIB),
        ),
        Target(
            f"RSS flat over {rss.spawned} spawn/exit (end - after warm-up)",
            f"{growth:+.1f} MiB",
            f"<= +{RSS_GROWTH_MIB} MiB",
            met(growth, RSS_GROWTH_MIB),
        ),
    ]


def targets(results: Results) -> list[Target]:
    return [
        *_cpu_targets(results),
        _latency_target(results.latency, IDLE_INTERVAL, "no collection running"),
        _latency_target(results.latency, BUSY_INTERVAL, f"a collection every {BUSY_INTERVAL:g}s"),
        *_rss_targets(results.rss),
    ]


def target_table(results: Results) -> list[str]:
    verdict = {True: "met", False: "NOT MET", None: "not measured"}
    rows = [(t.name, t.measured, t.goal, verdict[t.met]) for t in targets(results)]
    return table(("target", "measured", "goal", "result"), rows)


def markdown(results: Results) -> str:
    sections = [
        ["# pss-exporter benchmark", "", *results.header],
        ["## CPU per cycle", "", *cpu_table(results), "", churn_line(results.churn)],
        ["## Change detection", "", *cadence_lines(results.cadence, results.fleet_groups)],
        ["## /metrics latency", "", *latency_table(results.latency)],
        ["## Exporter RSS", "", *rss_lines(results.rss)],
        ["## Targets", "", *target_table(results)],
    ]
    return "\n\n".join("\n".join(s) for s in sections) + "\n"
