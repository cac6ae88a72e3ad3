"""counters.py and oom.py: counters never go down, and each OOM kill counts
once, in its victim's group (the collector end to end: test_oom_collection.py)."""

from __future__ import annotations

import pytest

from exporter import oom
from exporter.counters import Monotonic, increment
from exporter.oom import GRACE, RECENT_PIDS, OomAttribution, OomUnit

# ------------------------------------------------------------ counters.py


def test_increment_adds_the_difference_or_the_reading_after_a_reset() -> None:
    assert increment(None, 7) == 7  # a new source counted from 0
    assert increment(7, 9) == 2
    assert increment(9, 9) == 0
    assert increment(9, 3) == 3  # reset at the source: it counted 3 since


def test_a_series_sums_its_sources_and_never_falls() -> None:
    c: Monotonic[str] = Monotonic()
    master = ("master", 100)
    c.feed("www", master, 100)  # accepted connections of master 100
    assert c.value("www") == 100
    c.cycle()
    c.feed("www", master, None)  # status page did not answer: held
    assert c.value("www") == 100
    c.cycle()
    c.feed("www", ("master", 200), 5, new=True)  # php-fpm restarted: a new master
    assert c.value("www") == 105
    c.cycle()
    c.feed("www", ("master", 200), 7)
    c.cycle()
    c.feed("www", ("master", 200), 2)  # reloaded in place (same PID): a reset
    assert c.value("www") == 109
    assert c.value("other") is None


def test_a_source_new_to_an_existing_series_adds_only_what_it_counts_from_then() -> None:
    """Finding 5: a group's process appears in its cgroup's parent, whose
    stall total (150 s) already holds the child's 100 s counted before."""
    c: Monotonic[str] = Monotonic()
    c.feed("app", "/app/web", 100.0, generation=1)
    c.feed("app", "/db", 20.0, generation=2)  # a new series: every source whole
    assert c.value("app") == 120.0
    c.cycle()
    c.feed("app", "/app", 150.0, generation=3)  # the group's outermost cgroup now
    assert c.value("app") == 120.0  # a baseline, not 150 s more
    c.cycle()
    c.feed("app", "/app", 160.0, generation=3)
    assert c.value("app") == 130.0
    c.cycle()
    c.feed("app", "/app", 4.0, generation=4)  # the same directory recreated: counted from 0
    assert c.value("app") == 134.0


def test_a_source_fed_this_cycle_is_never_forgotten_nor_added_twice() -> None:
    """Finding 6: four live sources steady at 10 and room for three: the
    fourth is held out (an undercount), never re-added whole every cycle."""
    c: Monotonic[str] = Monotonic(max_series=10, max_sources=3)
    seen = []
    for _ in range(3):
        c.cycle()
        for cgroup in ("a", "b", "c", "d"):
            c.feed("grp", cgroup, 10.0)
        seen.append(c.value("grp"))
    assert seen == [30.0, 30.0, 30.0]
    assert c.refused == 3


def test_forgets_the_series_fed_longest_ago_past_its_bound() -> None:
    c: Monotonic[int] = Monotonic(max_series=2, max_sources=2)
    for key in (1, 2, 3):
        c.cycle()
        c.feed(key, "s", 10)
    assert (c.value(1), c.value(2), c.value(3)) == (None, 10, 10)


# ---------------------------------------------------------------- oom.py


def unit(kills: int | None, *members: tuple[int, str], key: str = "/fpm") -> OomUnit:
    return OomUnit(
        (key, 1), frozenset(g for _, g in members), frozenset(p for p, _ in members), kills
    )


MASTER, WORKER = (1, "php-fpm:master"), (2, "php-fpm:www")


def test_a_one_group_cgroup_gives_its_group_every_kill_without_the_log() -> None:
    ooms = OomAttribution()
    ooms.update(0.0, [WORKER], [unit(0, WORKER)], [])
    ooms.update(1.0, [WORKER], [unit(2585, WORKER)], [2] * 71)  # a storm: 71 in the log
    assert ooms.counts(["php-fpm:www"], None, True) == {"php-fpm:www": 2585}
    assert ooms.unattributed == 0


def test_in_a_shared_cgroup_the_log_says_whose_and_the_rest_is_unattributed() -> None:
    ooms = OomAttribution()
    members = [MASTER, WORKER]
    ooms.update(0.0, members, [unit(10, *members)], [])  # history: whose, unknown
    assert ooms.unattributed == 10
    ooms.update(1.0, members, [unit(110, *members)], [2, 2, 2])  # 100 kills, 3 in the log
    assert ooms.counts([], None, True) == {"php-fpm:www": 3}
    for t in range(2, 2 + GRACE):  # the rest waits GRACE cycles for its records
        assert ooms.unattributed == 10
        ooms.update(float(t), members, [unit(110, *members)], [])
    assert ooms.unattributed == 10 + 97
    assert ooms.counts(["php-fpm:master"], None, True) == {"php-fpm:master": 0, "php-fpm:www": 3}


def test_in_a_storm_the_only_group_losing_processes_gets_the_kills_the_log_missed() -> None:
    """A php-fpm master and its pool in one cgroup (as under systemd): the log
    names 3 of 100 kills, but the master survives every one and only the pool
    loses workers (killed, then respawned under new PIDs), so all 100 are the
    pool's."""
    ooms = OomAttribution()
    ooms.update(0.0, [MASTER, WORKER], [unit(0, MASTER, WORKER)], [])
    for t, kills in enumerate((40, 100), start=1):
        members = [MASTER, (100 + t, "php-fpm:www")]  # the worker of the last cycle is gone
        ooms.update(float(t), members, [unit(kills, *members)], [2] if t == 1 else [])
    for t in range(3, 3 + GRACE):
        members = [MASTER, (102, "php-fpm:www")]
        ooms.update(float(t), members, [unit(100, *members)], [])
    assert ooms.counts(["php-fpm:master"], None, True) == {"php-fpm:master": 0, "php-fpm:www": 100}
    assert ooms.unattributed == 0


def test_with_two_groups_losing_processes_a_kill_the_log_missed_is_unattributed() -> None:
    ooms = OomAttribution()
    a, b = (2, "php-fpm:a"), (3, "php-fpm:b")
    ooms.update(0.0, [MASTER, a, b], [unit(0, MASTER, a, b)], [])
    members = [MASTER, (4, "php-fpm:a"), (5, "php-fpm:b")]  # both lost their worker
    ooms.update(1.0, members, [unit(2, *members)], [2])  # the log names a's
    for t in range(2, 2 + GRACE):
        ooms.update(float(t), members, [unit(2, *members)], [])
    assert ooms.counts([], None, True) == {"php-fpm:a": 1}
    assert ooms.unattributed == 1


def test_the_log_may_come_a_cycle_before_or_after_the_counter() -> None:
    ooms = OomAttribution()
    members = [MASTER, WORKER]
    ooms.update(0.0, members, [unit(0, *members)], [])
    ooms.update(1.0, members, [unit(0, *members)], [2])  # record first
    ooms.update(2.0, members, [unit(1, *members)], [])  # then the count
    ooms.update(3.0, members, [unit(2, *members)], [])  # count first
    ooms.update(4.0, members, [unit(2, *members)], [2])  # then the record
    for t in range(5, 5 + GRACE):
        ooms.update(float(t), members, [unit(2, *members)], [])
    assert ooms.counts(["php-fpm:master"], None, True) == {"php-fpm:master": 0, "php-fpm:www": 2}
    assert ooms.unattributed == 0


def test_a_record_the_counter_never_confirms_is_dropped() -> None:
    ooms = OomAttribution()
    members = [MASTER, WORKER]
    for t in range(0, 2 + GRACE):
        ooms.update(float(t), members, [unit(5, *members)], [2] if t == 1 else [])
    assert ooms.counts([], None, True) == {}
    assert ooms.unattributed == 5  # the history only


def test_kills_outside_any_cgroup_come_from_the_log() -> None:
    ooms = OomAttribution()
    ooms.update(0.0, [(7, "bash")], None, [])  # cgroups not read (disabled)
    ooms.update(1.0, [], None, [7, 99])  # 7 exited; 99 was never grouped
    assert ooms.counts([], None, True) == {"bash": 1}


def test_a_group_has_a_counter_while_a_source_can_count_its_kills() -> None:
    """From 0 while the log is read or the group is in a unit; a group in the
    root cgroup with the log unreadable has no counter rather than a false 0."""
    ooms = OomAttribution()
    units = [unit(0, WORKER)]
    ooms.update(0.0, [WORKER, (3, "cron")], units, [])
    assert ooms.counts(["php-fpm:www", "cron"], units, False) == {"php-fpm:www": 0}
    assert ooms.counts(["php-fpm:www", "cron"], units, True) == {"php-fpm:www": 0, "cron": 0}


def test_groups_credited_long_ago_have_no_series_and_the_table_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding 4: a tenant renames its process before each kill; one series
    per name ever credited grew without bound."""
    monkeypatch.setattr(oom, "MAX_GROUPS", 5, raising=False)  # absent before the bound
    ooms = OomAttribution()
    for i in range(20):  # one kill a second under 20 names, outside any cgroup
        ooms.update(float(i), [(1000 + i, f"t{i}")], None, [])
        ooms.update(i + 0.5, [], None, [1000 + i])
    assert ooms.counts(["live"], None, True) == {"live": 0} | {f"t{i}": 1 for i in range(15, 20)}
    ooms.update(19.5 + RECENT_PIDS, [], None, [])
    assert ooms.counts(["live"], None, True) == {"live": 0}
