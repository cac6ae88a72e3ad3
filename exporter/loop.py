"""The background collection loop and the latest published exposition.

Scrapes never wait for /proc: the loop collects and renders in its own
thread and swaps a reference; the web server only reads that reference.
"""

from __future__ import annotations

import logging
import threading
import time

from .collector import Collector
from .metrics import FORMATS, Exposition, render

log = logging.getLogger(__name__)

FORMAT_MEMORY = 600.0  # seconds a scraped format keeps being rendered in advance
STOP_WAIT = 5.0  # seconds stop() waits for a running collection


class CollectionLoop:
    def __init__(self, collector: Collector, interval: float) -> None:
        self.collector = collector
        self.interval = interval
        self.latest: Exposition | None = None  # replaced whole, never mutated
        # When each format was last asked for: those are rendered in advance.
        # HTTP threads write it while the collection thread reads it.
        self._asked: dict[str, float] = {}
        self._asked_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collection", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop collecting, then close the collector once its thread has
        ended: closing the thread pools under a running cycle would fail it
        with a traceback. One still running after STOP_WAIT is left to exit
        with the process."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_WAIT)
        if self._thread.is_alive():
            log.warning("collection still running after %gs: not waited for", STOP_WAIT)
            return
        self.collector.close()

    def asked(self, fmt: str) -> None:
        """A scrape asked for fmt: render it with every snapshot from now on."""
        at = time.monotonic()
        with self._asked_lock:
            self._asked[fmt] = at

    def _formats(self) -> tuple[str, ...]:
        """Formats scraped in the last FORMAT_MEMORY seconds; before any
        scrape, all of them, so that the first scrape does not wait."""
        now = time.monotonic()
        with self._asked_lock:
            asked = list(self._asked.items())
        recent = tuple(f for f, at in asked if now - at < FORMAT_MEMORY)
        return recent or FORMATS

    def run_once(self) -> Exposition:
        self.latest = render(self.collector.collect(), self._formats())
        return self.latest

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                exp = self.run_once()
                log.debug(
                    "collected %d groups in %.3fs",
                    len(exp.snapshot.groups),
                    exp.snapshot.duration,
                )
            except Exception:  # a bug must not kill the loop; /healthz shows staleness
                log.exception("collection failed")
            # Fixed cadence; a collection longer than the interval starts the next at once.
            next_at = max(next_at + self.interval, time.monotonic())
            self._stop.wait(next_at - time.monotonic())

    def healthy(self, now: float | None = None) -> bool:
        """True while the latest snapshot is younger than 3 intervals."""
        exp = self.latest
        if exp is None:
            return False
        age = (time.time() if now is None else now) - exp.snapshot.finished
        return age < 3 * self.interval
