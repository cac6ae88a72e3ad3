"""Host reconciliation: where the memory `free` calls used went.

used = MemTotal - MemAvailable (procps-ng >= 4). The kernel computes
MemAvailable (mm/show_mem.c, si_mem_available) as

    MemFree - totalreserve + page cache - min(page cache / 2, wmark_low)
            + reclaimable kernel memory - min(reclaimable / 2, wmark_low)

so what is *used* is everything allocated that is not file page cache or
reclaimable kernel memory, plus the reserve and the two "can't reclaim it
all" shares. Each component below is one of those terms, taken from
/proc/meminfo, /proc/zoneinfo and the processes' smaps_rollup; `unexplained`
is the remainder and is never hidden. All values are bytes; pure functions.
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


# The meminfo fields used() and used_procps3() cannot do without (the others
# count as 0 when a kernel lacks them); without one there is no reconciliation.
REQUIRED = ("MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached")


@dataclass(frozen=True)
class ProcessTotals:
    """PSS summed over every process of the host (one accounting pass)."""

    pss: int
    pss_file: int | None  # None: the kernel lacks Pss_File (< 5.x)
    pss_shmem: int | None
    processes: int
    unreadable: int


def used(meminfo: dict[str, int]) -> int:
    """MemTotal - MemAvailable: `free`'s used since procps-ng 4.0.1."""
    return meminfo["MemTotal"] - meminfo["MemAvailable"]


def used_procps3(meminfo: dict[str, int]) -> int:
    """total - free - buffers - (cached + SReclaimable): procps-ng 3.3's used."""
    m = meminfo
    value = m["MemTotal"] - m["MemFree"] - m["Buffers"] - m["Cached"] - m.get("SReclaimable", 0)
    return value if value >= 0 else m["MemTotal"] - m["MemFree"]  # as procps does


def reconcile(
    meminfo: dict[str, int], marks: Watermarks, page_size: int, totals: ProcessTotals
) -> dict[str, int]:
    """Split used memory into COMPONENTS; they add up to used() exactly."""
    m = meminfo
    wmark_low = marks.low * page_size
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
        "slab_reclaimable_unavailable": min(reclaimable // 2, wmark_low),
        "kernel_stack": m.get("KernelStack", 0),
        "page_tables": m.get("PageTables", 0) + m.get("SecPageTables", 0),
        # Kernel stacks are vmalloc'ed (CONFIG_VMAP_STACK): counted once.
        "vmalloc": max(m.get("VmallocUsed", 0) - m.get("KernelStack", 0), 0),
        "percpu": m.get("Percpu", 0),
        "hugetlb": hugetlb,
        "zswap": m.get("Zswap", 0),
        "page_cache_unavailable": min(page_cache // 2, wmark_low),
        "kernel_reserve": marks.reserve * page_size,
        "pcp_free_lists": marks.pcp_free * page_size,
    }
    parts["unexplained"] = used(m) - sum(parts.values())
    return parts


@dataclass(frozen=True)
class Accounting:
    """One reconciliation, as exported and explained."""

    used: int
    used_procps3: int
    components: dict[str, int]
    totals: ProcessTotals
    duration: float  # seconds the pass took (reading every process's smaps)
    finished: float  # Unix time
