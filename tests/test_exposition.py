"""Rendering once per snapshot: what scrapers ask for is rendered in advance,
anything else on first request, and every body is the same exposition."""

from __future__ import annotations

import gzip

from exporter.collector import Collector
from exporter.config import build_config
from exporter.loop import CollectionLoop
from exporter.metrics import OPENMETRICS, TEXT, render

from conftest import FIXTURES

TREE = FIXTURES / "procfs" / "fpm-host"


def loop() -> CollectionLoop:
    return CollectionLoop(Collector(build_config({}, "test"), str(TREE)), 60.0)


def test_only_the_scraped_format_is_rendered_in_advance() -> None:
    lp = loop()
    first = lp.run_once()
    assert set(first._bodies) == {TEXT, OPENMETRICS}  # before any scrape: both
    lp.asked(OPENMETRICS)
    second = lp.run_once()
    assert set(second._bodies) == {OPENMETRICS}
    # The other format still answers, rendered on demand from the same snapshot.
    text = second.body(TEXT)
    assert b'pss_group_pss_bytes{group="php-fpm:www"}' in text
    assert set(second._bodies) == {OPENMETRICS, TEXT}


def test_bodies_agree_with_a_full_render() -> None:
    lp = loop()
    lp.asked(TEXT)
    exp = lp.run_once()
    full = render(exp.snapshot)
    assert exp.body(OPENMETRICS).endswith(b"# EOF\n")
    # Process metrics (CPU, fds) move between renders: compare the pss_* lines.
    for fmt in (TEXT, OPENMETRICS):
        ours = [line for line in exp.body(fmt).splitlines() if line.startswith(b"pss_")]
        theirs = [line for line in full.body(fmt).splitlines() if line.startswith(b"pss_")]
        assert ours == theirs
        assert gzip.decompress(exp.body(fmt, gzipped=True)) == exp.body(fmt)
