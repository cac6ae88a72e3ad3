"""The collection loop: the formats scrapes asked for, recorded by HTTP
threads while the collection thread reads them."""

from __future__ import annotations

import threading

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
