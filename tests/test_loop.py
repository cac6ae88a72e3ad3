"""The collection loop: the formats scrapes asked for, recorded by HTTP
threads while the collection thread reads them."""

from __future__ import annotations

import threading

import pytest

from exporter import loop as loop_module
from exporter.loop import CollectionLoop
from exporter.metrics import FORMATS, OPENMETRICS


def test_formats_asked_for_are_rendered_and_all_before_any_scrape() -> None:
    loop = CollectionLoop(None, 15.0)  # type: ignore[arg-type]  # no collection here
    assert loop._formats() == FORMATS
    loop.asked(OPENMETRICS)
    assert loop._formats() == (OPENMETRICS,)


def test_formats_are_read_safely_while_http_threads_record_them() -> None:
    """Unlocked, iterating the record while a thread adds to it raised
    'dictionary changed size during iteration' in the collection thread."""
    loop = CollectionLoop(None, 15.0)  # type: ignore[arg-type]
    done = threading.Event()

    def scrapes() -> None:
        for i in range(300_000):  # distinct names: each one grows the record
            loop.asked(f"format{i}")
        done.set()

    thread = threading.Thread(target=scrapes)
    thread.start()
    errors = []
    try:
        while not done.is_set():
            try:
                loop._formats()
            except RuntimeError as exc:
                errors.append(str(exc))
                break
    finally:
        thread.join()
    assert errors == []
    assert len(loop._formats()) == 300_000


class SlowCollector:
    """Records its calls; collect() blocks until released."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.collecting = threading.Event()
        self.release = threading.Event()

    def collect(self) -> object:
        self.calls.append("collect")
        self.collecting.set()
        self.release.wait(timeout=30)
        self.calls.append("collected")
        raise RuntimeError("no snapshot here")  # the loop logs it and goes on

    def close(self) -> None:
        self.calls.append("close")


def test_stop_closes_the_collector_only_once_its_cycle_has_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """cli closed the collector right after stop(), whose join may time out:
    a cycle still running then had its thread pools shut down under it."""
    monkeypatch.setattr(loop_module, "STOP_WAIT", 0.1)
    collector = SlowCollector()
    loop = CollectionLoop(collector, 15.0)  # type: ignore[arg-type]
    loop.start()
    assert collector.collecting.wait(timeout=10)
    loop.stop()  # the cycle is still running: not closed under it
    assert collector.calls == ["collect"]
    collector.release.set()
    monkeypatch.setattr(loop_module, "STOP_WAIT", 10.0)
    loop.stop()
    assert collector.calls == ["collect", "collected", "close"]


def test_stop_before_start_closes_the_collector() -> None:
    collector = SlowCollector()
    CollectionLoop(collector, 15.0).stop()  # type: ignore[arg-type]
    assert collector.calls == ["close"]
