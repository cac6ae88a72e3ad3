"""Host reconciliation: where the memory `free` calls used went.

used = MemTotal - MemAvailable (procps-ng >= 4). The kernel computes
MemAvailable (mm/show_mem.c, si_mem_available) as

    MemFree - totalreserve + page cache - min(page cache / 2, wmark_low)
            + reclaimable kernel memory - min(reclaimable / 2, wmark_low)

so what is *used* is everything allocated that is not file page cache or
reclaimable kernel memory, plus the reserve and the two "can't reclaim it
all" shares. Each component below is one of those terms, taken from
/proc/meminfo, /proc/zoneinfo and the processes' smaps_rollup; `unexplained`
is the remainder and is never hidden. Without zoneinfo the components it
gives (FROM_ZONEINFO) are left out and their memory stays in `unexplained`:
the rest still adds up to used. All values are bytes; pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from .procfs import Watermarks

# Exposition order; "unexplained" last. Descriptions serve `explain`.
COMPONENTS: dict[str, str] = {
    "processes_pss": "memory mapped by processes, each shared page split between its users "
    "(the sum of every process's PSS)",
    "processes_file_cache": "file pages inside processes_pss (program code, libraries, mapped "
    "files) that the kernel counts as reclaimable page cache, so not as used: subtracted",
    "shmem_unmapped": "shared memory and tmpfs files no process maps (Shmem minus the "
    "processes' Pss_Shmem), e.g. files in /dev/shm or /run",
    "slab_unreclaimable": "kernel object caches that cannot be freed under pressure (SUnreclaim)",
    "slab_reclaimable_unavailable": "the part of reclaimable kernel caches (KReclaimable) the "
    "kernel does not count as available: half of it, at most the low watermark",
    "kernel_stack": "kernel stacks of all threads (KernelStack)",
    "page_tables": "page tables mapping processes' memory (PageTables + SecPageTables)",
    "vmalloc": "kernel vmalloc allocations other than kernel stacks (VmallocUsed - KernelStack)",
    "percpu": "per-CPU kernel allocations (Percpu)",
    "hugetlb": "pages reserved for HugeTLB, used or not (Hugetlb)",
    "zswap": "the compressed swap cache in RAM (Zswap)",
    "page_cache_unavailable": "the part of the file page cache the kernel does not count as "
    "available: half of it, at most the low watermark",
    "kernel_reserve": "free pages held back for the kernel (watermarks and lowmem reserves, "
    "totalreserve_pages)",
    "pcp_free_lists": "free pages cached in per-CPU lists, which MemFree does not count "
    "(the pagesets' count in /proc/zoneinfo)",
    "unexplained": "what no counter shows: driver and network buffers, memmap of hot-added "
    "memory, mlocked file pages, processes that could not be read, counters that moved "
    "between reads; may be negative",
}


# The components that need /proc/zoneinfo's watermarks and per-CPU lists.
FROM_ZONEINFO = (
    "slab_reclaimable_unavailable",
    "page_cache_unavailable",
    "kernel_reserve",
    "pcp_free_lists",
)

# The meminfo fields each "used" cannot do without (every other field counts
# as 0 when a kernel lacks it): MemAvailable is 3.14's.
USED_FIELDS = ("MemTotal", "MemAvailable")
PROCPS3_FIELDS = ("MemTotal", "MemFree", "Buffers", "Cached")


@dataclass(frozen=True)
class ProcessTotals:
    """PSS summed over every process of the host (one accounting pass)."""

    pss: int
    pss_file: int | None  # None: the kernel lacks Pss_File (< 5.x)
    pss_shmem: int | None
    processes: int
    unreadable: int


def used(meminfo: dict[str, int]) -> int | None:
    """MemTotal - MemAvailable: `free`'s used since procps-ng 4.0.1; None
    without either field."""
    if any(key not in meminfo for key in USED_FIELDS):
        return None
    return meminfo["MemTotal"] - meminfo["MemAvailable"]


def used_procps3(meminfo: dict[str, int]) -> int | None:
    """total - free - buffers - (cached + SReclaimable): procps-ng 3.3's used;
    None without one of PROCPS3_FIELDS."""
    m = meminfo
    if any(key not in m for key in PROCPS3_FIELDS):
        return None
    value = m["MemTotal"] - m["MemFree"] - m["Buffers"] - m["Cached"] - m.get("SReclaimable", 0)
    return value if value >= 0 else m["MemTotal"] - m["MemFree"]  # as procps does


def reconcile(
    meminfo: dict[str, int], marks: Watermarks | None, page_size: int, totals: ProcessTotals
) -> dict[str, int]:
    """Split used memory into COMPONENTS; they add up to used() exactly.
    Without marks (no usable zoneinfo) FROM_ZONEINFO are left out, into
    unexplained. meminfo must hold USED_FIELDS."""
    m = meminfo
    total_used = used(m)
    if total_used is None:
        raise ValueError(f"meminfo lacks one of {', '.join(USED_FIELDS)}")
    page_cache = m.get("Active(file)", 0) + m.get("Inactive(file)", 0)
    reclaimable = m.get("KReclaimable", m.get("SReclaimable", 0))
    # Without the Pss split (kernel < 5.x), Mapped stands in for file pages
    # and mapped shmem is unknown: the difference lands in unexplained.
    file_pss = totals.pss_file if totals.pss_file is not None else m.get("Mapped", 0)
    hugetlb = m.get("Hugetlb", m.get("HugePages_Total", 0) * m.get("Hugepagesize", 0))
    parts = {
        "processes_pss": totals.pss,
        "processes_file_cache": -file_pss,
        "shmem_unmapped": max(m.get("Shmem", 0) - (totals.pss_shmem or 0), 0),
        "slab_unreclaimable": m.get("SUnreclaim", 0),
        "kernel_stack": m.get("KernelStack", 0),
        "page_tables": m.get("PageTables", 0) + m.get("SecPageTables", 0),
        # Kernel stacks are vmalloc'ed (CONFIG_VMAP_STACK): counted once.
        "vmalloc": max(m.get("VmallocUsed", 0) - m.get("KernelStack", 0), 0),
        "percpu": m.get("Percpu", 0),
        "hugetlb": hugetlb,
        "zswap": m.get("Zswap", 0),
    }
    if marks is not None:
        wmark_low = marks.low * page_size
        parts["slab_reclaimable_unavailable"] = min(reclaimable // 2, wmark_low)
        parts["page_cache_unavailable"] = min(page_cache // 2, wmark_low)
        parts["kernel_reserve"] = marks.reserve * page_size
        parts["pcp_free_lists"] = marks.pcp_free * page_size
    parts["unexplained"] = total_used - sum(parts.values())
    return {name: parts[name] for name in COMPONENTS if name in parts}  # exposition order


@dataclass(frozen=True)
class Accounting:
    """One reconciliation, as exported and explained."""

    used: int | None  # None: meminfo lacks USED_FIELDS (no reconciliation then)
    used_procps3: int | None  # None: meminfo lacks PROCPS3_FIELDS
    components: dict[str, int]  # COMPONENTS, FROM_ZONEINFO left out without zoneinfo; {}: no used
    totals: ProcessTotals
    duration: float  # seconds the pass took (reading every process's smaps)
    finished: float  # Unix time
