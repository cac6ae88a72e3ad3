"""The config loader: what a hostile or careless config file gets. A value is
never expanded into a message, every number has a range, every error is one
short line naming the file, the key and the reason.

The exit status and the single stderr line of the real CLI are checked in
tests/test_cli.py; these tests call the loader and look at its messages."""

from __future__ import annotations

import errno
import functools
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from exporter.config import (
    EXCERPT,
    MAX_CONFIG_BYTES,
    MAX_YAML_NODES,
    Config,
    ConfigError,
    load_config,
    parse_duration,
)
from exporter.fileio import read_regular

from conftest import ROOT

# The longest message a rejected value may give after the file name: key
# path, reason and an excerpt of at most EXCERPT characters.
MAX_MESSAGE = 200 + EXCERPT


def rejected(tmp_path: Path, text: str) -> str:
    """The ConfigError message load_config gives for the YAML text."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message and len(message) - len(str(path)) <= MAX_MESSAGE, message[:1000]
    return message


def loaded(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(str(path))


# ------------------------------------------------- values never expanded

# 9 ** 5 = 59,049 values once aliases are expanded: under MAX_YAML_NODES, so
# the loader builds it; printed, it is some 300 KB.
ALIASED = """\
  - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
  - &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  - &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  - &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  - [*d, *d, *d, *d, *d, *d, *d, *d, *d]
"""
assert MAX_YAML_NODES > 9**5

# Where a value may go, as the YAML that leads to it (the value follows).
# (process_names entries never printed their values.)
PLACES = {
    "max_groups": "max_groups:\n",
    "collection.interval": "collection:\n interval:\n",
    "collection.large_rss": "collection:\n large_rss:\n",
    "collection.threads": "collection:\n threads:\n",
    "php_fpm.enabled": "php_fpm:\n enabled:\n",
    "php_fpm.sizing": "php_fpm:\n sizing:\n",
    "php_fpm.reserve": "php_fpm:\n reserve:\n",
    "php_fpm.pools.www.status": "php_fpm:\n pools:\n  www:\n   status:\n",
    "php_fpm.pools.www.max_children": "php_fpm:\n pools:\n  www:\n   max_children:\n",
}


def indented(value: str, prefix: str) -> str:
    """value as the block under prefix's last key."""
    depth = len(prefix.splitlines()[-1]) - len(prefix.splitlines()[-1].lstrip()) + 1
    return "".join(" " * depth + line + "\n" for line in value.splitlines())


@pytest.mark.parametrize("key", PLACES)
def test_aliased_value_is_named_by_its_kind_not_printed(tmp_path: Path, key: str) -> None:
    message = rejected(tmp_path, PLACES[key] + indented(ALIASED, PLACES[key]))
    assert f": {key}: " in message and "lol" not in message, message[:1000]


@pytest.mark.parametrize("key", PLACES)
def test_long_string_is_cut_and_escaped(tmp_path: Path, key: str) -> None:
    # 100,000 characters with a newline and a NUL early on: quoted, cut, one line.
    value = "x\\n\\0" + "y" * 100_000
    message = rejected(tmp_path, f'{PLACES[key].rstrip()} "{value}"\n')
    assert f": {key}: " in message, message[:1000]


def test_long_template_is_cut(tmp_path: Path) -> None:
    name = "{{.Nope" + "x" * 100_000 + "}}"
    message = rejected(tmp_path, f"process_names:\n  - comm: [x]\n    name: '{name}'\n")
    assert ": process_names[0].name: unknown template field .Nopexxx" in message


def test_unknown_key_with_newline_is_one_line(tmp_path: Path) -> None:
    message = rejected(tmp_path, 'collection:\n  "interval\\n5": 1\n')
    assert message.endswith(": collection.'interval\\n5': unknown key"), message


def test_long_unknown_key_is_cut(tmp_path: Path) -> None:
    # An explicit key (?): YAML limits implicit ones to 1,024 characters.
    message = rejected(tmp_path, "collection:\n  ? " + "k" * 5000 + "\n  : 1\n")
    assert ": collection.'kkkkkkkk" in message and message.endswith("...: unknown key")


def test_long_regex_is_cut(tmp_path: Path) -> None:
    message = rejected(tmp_path, "process_names:\n  - cmdline: ['(" + "a" * 50_000 + "']\n")
    assert ": process_names[0].cmdline[0]: invalid regex '(aaa" in message


# ------------------------------------------------------- numbers in range

BAD_NUMBERS = {
    # 300 digits: a YAML integer that used to be accepted as a size.
    "size-of-300-digits": ("collection:\n  large_rss: " + "9" * 300 + "\n", "collection.large_rss"),
    # float("9" * 400) is inf: int(inf) raised OverflowError.
    "size-string-of-400-digits": ("collection:\n  large_rss: " + "9" * 400 + "B\n", "over 1PiB"),
    "size-over-1PiB": ("collection:\n  large_rss: 1025TiB\n", "over 1PiB"),
    "negative-size": ("collection:\n  large_rss: -1\n", "must be a size from 0 to 1PiB"),
    "max_groups-of-30-digits": ("max_groups: " + "9" * 30 + "\n", "from 1 to 100000"),
    "threads-past-max": ("collection:\n  threads: 65\n", "collection.threads: must be an integer"),
    "max_children-past-max": (
        "php_fpm:\n  pools:\n    www: {max_children: 100001}\n",
        "php_fpm.pools.www.max_children: must be an integer from 1 to 100000",
    ),
    # Sexagesimal 1:59:59:... is an integer of 3,000 base-60 digits: past the
    # 4,300 decimal digits Python will print, without one long number.
    "sexagesimal-giant": ("max_groups: 1" + ":59" * 3000 + "\n", "line 1, column 13: "),
    "integer-past-the-digit-limit": ("max_groups: " + "9" * 5000 + "\n", "line 1, column 13: "),
}


@pytest.mark.parametrize("case", BAD_NUMBERS)
def test_out_of_range_number_is_one_short_line(tmp_path: Path, case: str) -> None:
    text, expected = BAD_NUMBERS[case]
    assert expected in rejected(tmp_path, text)


def test_escape_past_the_last_code_point_is_a_yaml_error(tmp_path: Path) -> None:
    # The scanner's chr(0x1000000) raised ValueError: a traceback.
    message = rejected(tmp_path, 'max_groups: "\\U01000000"\n')
    assert message.endswith(": YAML syntax error: chr() arg not in range(0x110000)"), message


def test_impossible_date_is_a_positioned_yaml_error(tmp_path: Path) -> None:
    # datetime(2001, 13, 45) raises ValueError, which was reported as a number.
    message = rejected(tmp_path, "max_groups: 2001-13-45\n")
    assert message.endswith(
        ": line 1, column 13: YAML syntax error: cannot read '2001-13-45' as timestamp"
    )


# key: (YAML with the limit, the value it gives, YAML one step past the limit)
LIMITS: dict[str, tuple[str, Callable[[Config], object], object, str]] = {
    "collection.large_rss": (
        "collection: {large_rss: 1024TiB}",
        lambda c: c.collection.large_rss,
        1 << 50,
        "collection: {large_rss: 1125899906842625}",
    ),
    "collection.threads": (
        "collection: {threads: 64}",
        lambda c: c.collection.threads,
        64,
        "collection: {threads: 65}",
    ),
    "max_groups": ("max_groups: 100000", lambda c: c.max_groups, 100_000, "max_groups: 100001"),
    "php_fpm.pools.www.max_children": (
        "php_fpm: {pools: {www: {max_children: 100000}}}",
        lambda c: c.php_fpm.pools["www"].max_children,
        100_000,
        "php_fpm: {pools: {www: {max_children: 100001}}}",
    ),
    "collection.interval": (
        "collection: {interval: 100ms}",
        lambda c: c.collection.interval,
        0.1,
        "collection: {interval: 99ms}",
    ),
}


@pytest.mark.parametrize("key", LIMITS)
def test_limit_is_the_last_value_accepted(tmp_path: Path, key: str) -> None:
    limit, value, expected, past = LIMITS[key]
    assert value(loaded(tmp_path, limit + "\n")) == expected
    assert f": {key}: must be " in rejected(tmp_path, past + "\n")


# ------------------------------------------------- interval and timeouts


def test_interval_below_100ms_is_rejected(tmp_path: Path) -> None:
    message = rejected(tmp_path, "collection:\n  interval: 1ms\n")
    assert message.endswith(": collection.interval: must be a duration from 100ms to 7d")


@pytest.mark.parametrize(
    ("key", "below", "minimum"),
    [
        ("collection.interval", "99ms", "100ms"),
        ("collection.budget", "0s", "1ms"),
        ("accounting.interval", "0s", "1ms"),
    ],
)
def test_a_duration_range_names_a_minimum_the_grammar_reads(
    tmp_path: Path, key: str, below: str, minimum: str
) -> None:
    """The message named the minimum '0.1s' or '0.001s', which the grammar
    (whole numbers only) refuses: writing what it said was an error too."""
    section, name = key.split(".")
    message = rejected(tmp_path, f"{section}: {{{name}: {below}}}\n")
    assert message.endswith(f": {key}: must be a duration from {minimum} to 7d")
    loaded(tmp_path, f"{section}: {{{name}: {minimum}}}\n")  # what it names is accepted


def test_status_timeout_past_half_the_interval_is_rejected(tmp_path: Path) -> None:
    # It used to be cut to half the interval without a word.
    message = rejected(tmp_path, "php_fpm:\n  status_timeout: 10s\n")
    assert message.endswith(
        ": php_fpm.status_timeout: must be at most half of collection.interval (15s)"
    )


def test_the_interval_a_message_names_is_a_duration(tmp_path: Path) -> None:
    # It said '(1.5s)', a value the grammar refuses.
    config = "collection: {interval: 1500ms}\nphp_fpm: {status_timeout: 1s}\n"
    assert rejected(tmp_path, config).endswith(
        ": php_fpm.status_timeout: must be at most half of collection.interval (1500ms)"
    )


def test_status_timeout_defaults_to_at_most_half_the_interval(tmp_path: Path) -> None:
    assert loaded(tmp_path, "collection: {interval: 1s}\n").php_fpm.status_timeout == 0.5
    assert loaded(tmp_path, "collection: {interval: 4s}\n").php_fpm.status_timeout == 1.0
    half = "collection: {interval: 4s}\nphp_fpm: {status_timeout: 2s}\n"
    assert loaded(tmp_path, half).php_fpm.status_timeout == 2.0


# ------------------------------------------------------------ file shape


def test_config_is_read_up_to_the_size_cap(tmp_path: Path) -> None:
    text = "max_groups: 7\n"
    padded = text + "#" * (MAX_CONFIG_BYTES - len(text) - 1) + "\n"  # a comment
    assert loaded(tmp_path, padded).max_groups == 7
    # One byte more used to be read and parsed too, however large the file.
    message = rejected(tmp_path, padded + "\n")
    assert message.endswith(f": cannot read: larger than {MAX_CONFIG_BYTES} bytes")


def test_a_fifo_config_is_refused_without_being_opened(tmp_path: Path) -> None:
    """read_regular opened a path before checking its type: opening a FIFO
    woke a writer waiting on it (and opening a device can act: a watchdog
    arms). A FIFO is now refused from an O_PATH descriptor, never opened."""
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    opened = threading.Event()

    def writer() -> None:
        os.close(os.open(fifo, os.O_WRONLY))  # blocks until a reader opens it
        opened.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    with pytest.raises(OSError) as refused:
        read_regular(str(fifo), 1024)
    assert refused.value.errno == errno.EINVAL
    assert not opened.wait(0.5), "the FIFO was opened: its writer woke"
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # release the writer
    assert opened.wait(5)
    thread.join(5)


@functools.cache
def alerts_generate() -> ModuleType:
    """alerts/generate.py, a standalone script (it imports nothing of exporter/)."""
    spec = importlib.util.spec_from_file_location("generate", ROOT / "alerts" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# Prometheus's model.ParseDuration: units y w d h m s ms, in this order, each once.
DURATIONS = {
    "15s": 15.0,
    "500ms": 0.5,
    "1m30s": 90.0,
    "1h1m1s1ms": 3661.001,
    "2d": 172800.0,
    "1w": 604800.0,
    "1y": 31536000.0,
    "0s": 0.0,
    "1y2w3d4h5m6s7ms": 33019506.007,
    "099999999ms": 99999.999,  # leading zero, 9 digits
}
NOT_DURATIONS = [
    "",
    "1m1m",  # a unit twice
    "1s1m",  # out of order
    "1ms1s",
    "1.5s",  # no fractions
    "15",  # no unit
    "0",
    "15 s",
    " 15s",
    "15s ",
    "-1s",
    "+1s",
    "1S",
    "1sec",
    "1us",
    "1000000000000000s",  # 16 digits
    "s",
    "1e3s",
]


@pytest.mark.parametrize("text", [*DURATIONS, *NOT_DURATIONS])
def test_config_and_alerts_read_durations_by_one_grammar(text: str) -> None:
    """The config and the alert knobs (alerts/generate.py) accept and reject
    the same strings, with the same value: Prometheus's grammar. Before, the
    config took '1m1m', '1s1m' and '1.5s'."""
    knob = alerts_generate().parse_duration(text)
    try:
        seconds: float | None = parse_duration(text)
    except ValueError:
        seconds = None
    if text in DURATIONS:
        assert seconds == pytest.approx(DURATIONS[text]), text
        assert knob is not None and knob.ms / 1000 == pytest.approx(DURATIONS[text]), text
    else:
        assert seconds is None and knob is None, text


def test_a_duration_unit_twice_is_a_config_error(tmp_path: Path) -> None:
    message = rejected(tmp_path, "collection:\n  interval: 1m1m\n")
    assert message.endswith(
        ": collection.interval: invalid duration '1m1m' (use e.g. 500ms, 15s, 1m30s: "
        "units y, w, d, h, m, s, ms in this order, each once)"
    )


# ------------------------------------------- process-exporter's configs load


def test_unknown_top_level_and_rule_keys_warn_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # process-exporter ignores them: a config written for it loads here.
    config = loaded(
        tmp_path,
        'gather_smaps: true\n"x\\ny": 1\nprocess_names:\n  - comm: [a]\n    bogus: 1\n',
    )
    assert len(config.process_names) == 1
    path = tmp_path / "c.yaml"
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: gather_smaps: unknown key, ignored (as process-exporter does)",
        f"{path}: 'x\\ny': unknown key, ignored (as process-exporter does)",
        f"{path}: process_names[0].bogus: unknown key, ignored (as process-exporter does)",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "collection:\n  intervall: 1s\n",
        "php_fpm:\n  enable: true\n",
        "php_fpm:\n  pools:\n    www:\n      max_child: 3\n",
        "accounting:\n  enable: true\n",
        "cgroups:\n  enable: true\n",
        "kmsg:\n  enable: true\n",
    ],
)
def test_a_typo_inside_our_own_sections_stays_an_error(tmp_path: Path, text: str) -> None:
    assert rejected(tmp_path, text).endswith(": unknown key")


def test_children_defaults_to_process_exporters_flag(tmp_path: Path) -> None:
    assert loaded(tmp_path, "process_names: []\n").children is True
    assert loaded(tmp_path, "children: false\n").children is False
    assert "children: must be true or false" in rejected(tmp_path, "children: 1\n")


def test_an_empty_file_keeps_the_built_in_rule(tmp_path: Path) -> None:
    # Documented: process-exporter groups nothing then; `process_names: []` says so here.
    assert len(loaded(tmp_path, "").process_names) == 1
    assert loaded(tmp_path, "process_names: []\n").process_names == ()
    assert loaded(tmp_path, "process_names:\n").process_names == ()
