#!/usr/bin/env python3
"""Render the Prometheus rules of pss-exporter from a template and knobs.

    python alerts/generate.py [--thresholds FILE ...] [--output FILE|-]

alerts/thresholds.yml holds every knob with its default and its meaning; it is
always read first. Each --thresholds FILE (YAML, a mapping of knob to value)
overrides the knobs it sets, later files winning. The template
alerts/pss-exporter.rules.yml.tmpl refers to knobs as ${name}, or
${name:percent}, ${name:human}, ${name:seconds} for the forms used in
annotations and PromQL arguments. The output (default
alerts/pss-exporter.rules.yml) is a rule file Prometheus loads as is.

A knob's type is that of its default: a duration ("30m", "1d", "1h30m", at
most 10 years), a size ("8MiB" or a number of bytes, at most 1 PiB), a number
(0 to 2**53; a knob named *_ratio is a ratio, not a percentage: from 0 to 1,
or to 10 for the growth and budget ratios in GROWTH_RATIOS),
or a string. An unknown knob or a value of the wrong type or out of range is a
one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import yaml

HERE = Path(__file__).resolve().parent
DEFAULTS = HERE / "thresholds.yml"
TEMPLATE = HERE / "pss-exporter.rules.yml.tmpl"
OUTPUT = HERE / "pss-exporter.rules.yml"

# Prometheus durations (model.ParseDuration): units in this order, each at most once.
_UNIT_MS = {
    "y": 365 * 86_400_000,
    "w": 7 * 86_400_000,
    "d": 86_400_000,
    "h": 3_600_000,
    "m": 60_000,
    "s": 1000,
    "ms": 1,
}
# Digits are bounded so that int() never meets Python's 4,300-digit limit.
_DURATION = re.compile("^" + "".join(rf"(?:(\d{{1,15}}){unit})?" for unit in _UNIT_MS) + "$")
MAX_DURATION_MS = 10 * _UNIT_MS["y"]
_SIZE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
MAX_SIZE = 1 << 50  # 1 PiB
MAX_NUMBER = 2**53  # PromQL numbers are float64: integers up to here are exact
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB)$")
_PLACEHOLDER = re.compile(r"\$\{([a-z0-9_]+)(?::([a-z]+))?\}")


class KnobError(Exception):
    """A knob file that cannot be used; the message names the file and key."""


def shown(raw: object) -> str:
    """raw as a message shows it: a scalar's repr cut to 40 characters, only the
    kind of a collection (a YAML alias can name a value of millions of nodes)."""
    if isinstance(raw, (list, dict, set)):
        return f"a {type(raw).__name__}"
    if isinstance(raw, int) and raw.bit_length() > 128:
        return "an integer of more than 38 digits"
    text = repr(raw[:41] if isinstance(raw, (str, bytes)) else raw)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Duration:
    ms: int

    def __str__(self) -> str:
        """Canonical Prometheus form: 1d2h, 30m, 7s500ms, 0s."""
        rest, out = self.ms, ""
        for unit, ms in _UNIT_MS.items():
            if unit not in "yw":  # weeks and years read worse than days
                n, rest = divmod(rest, ms)
                out += f"{n}{unit}" if n else ""
        return out or "0s"


@dataclass(frozen=True)
class Size:
    bytes: int


Value = Union[Duration, Size, int, float, str]


def parse_duration(text: str) -> Duration | None:
    """text as a Duration of at most MAX_DURATION_MS, or None."""
    match = _DURATION.match(text)
    if not match or not text:
        return None
    ms = sum(int(n) * ms for n, ms in zip(match.groups(), _UNIT_MS.values()) if n)
    return Duration(ms) if ms <= MAX_DURATION_MS else None


def parse_size(raw: object) -> Size | None:
    """raw (bytes, or a number and a unit) as a Size of at most MAX_SIZE, or None."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return Size(raw) if 0 <= raw <= MAX_SIZE else None
    match = _SIZE.match(raw) if isinstance(raw, str) else None
    size = float(match[1]) * _SIZE_UNITS[match[2]] if match else math.inf  # inf: 400 digits
    return Size(int(size)) if size <= MAX_SIZE else None


def infer(raw: object) -> Value | None:
    """A default's typed value: its type is the knob's type."""
    if isinstance(raw, str):
        return parse_duration(raw) or parse_size(raw) or raw
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return raw
    return None


# Ratios of growth or of a budget may pass 1 (overcommitted_ratio 1.2: 20% over);
# shares of a limit or of the host may not.
GROWTH_RATIOS = {"drift_min_ratio", "leak_min_ratio", "overcommitted_ratio"}
MAX_GROWTH_RATIO = 10


def ratio_limit(key: str) -> float | None:
    """The largest value a *_ratio knob may take, None for other knobs."""
    if not key.endswith("_ratio"):
        return None
    return MAX_GROWTH_RATIO if key in GROWTH_RATIOS else 1


def coerce(key: str, default: Value, raw: object) -> Value:
    """raw as the type of default, within its range, or KnobError."""
    if isinstance(default, Duration):
        value = parse_duration(raw) if isinstance(raw, str) else None
        if value is None:
            raise KnobError(
                f"{key}: expected a duration like 30s, 10m, 1h30m, 1d, at most 10y, "
                f"got {shown(raw)}"
            )
        if value.ms == 0 and not key.endswith("_for"):
            raise KnobError(f"{key}: must be longer than 0s")
        return value
    if isinstance(default, Size):
        value = parse_size(raw)
        if value is None:
            raise KnobError(
                f"{key}: expected a size like 8MiB or a number of bytes, at most 1PiB, "
                f"got {shown(raw)}"
            )
        return value
    if isinstance(default, (int, float)):
        # A ratio written as a percentage (85 meant as 85%) makes an alert that never fires.
        top = ratio_limit(key) or MAX_NUMBER
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw <= top:
            what = f"{top:g} (a ratio, not a percentage)" if top != MAX_NUMBER else str(MAX_NUMBER)
            raise KnobError(f"{key}: expected a number from 0 to {what}, got {shown(raw)}")
        return raw
    if not isinstance(raw, str) or "\n" in raw or "'" in raw:
        raise KnobError(f"{key}: expected a one-line string without ', got {shown(raw)}")
    return raw


def read_yaml(path: Path) -> dict[str, object]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise KnobError(f"cannot read: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise KnobError(f"invalid YAML: {' '.join(str(err).split())}") from err
    except RecursionError:  # PyYAML recurses once per level of nesting
        raise KnobError("invalid YAML: nested too deep") from None
    except ValueError as err:  # an integer past Python's 4,300-digit limit, 2001-13-45
        raise KnobError(f"invalid YAML: {' '.join(str(err).split())[:100]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KnobError("expected a mapping of knob names to values")
    return data


def load_knobs(overrides: list[Path]) -> dict[str, Value]:
    """The defaults, overridden by each file in turn; raises KnobError naming the file."""
    knobs: dict[str, Value] = {}
    try:
        for key, raw in read_yaml(DEFAULTS).items():
            value = infer(raw)
            if value is None:
                raise KnobError(f"{key}: unsupported default {shown(raw)}")
            knobs[key] = coerce(key, value, raw)  # the defaults obey the same ranges
    except KnobError as err:
        raise KnobError(f"{DEFAULTS}: {err}") from None
    for path in overrides:
        try:
            for key, raw in read_yaml(path).items():
                if key not in knobs:
                    raise KnobError(f"unknown knob {shown(key)} (known: see {DEFAULTS.name})")
                knobs[key] = coerce(key, knobs[key], raw)
        except KnobError as err:
            raise KnobError(f"{path}: {err}") from None
    return knobs


def derived(knobs: dict[str, Value]) -> dict[str, Value]:
    """Values the template needs that PromQL cannot compute (durations are literals)."""

    def ms(key: str) -> int:
        value = knobs[key]
        assert isinstance(value, Duration), key
        return value.ms

    stale = knobs["collection_stale_intervals"]
    assert isinstance(stale, (int, float))
    return {
        "drift_baseline_start": Duration(ms("drift_offset") + ms("drift_baseline_lookback")),
        "leak_recent_window": Duration(ms("leak_window") // 2),
        "collection_stale_after": Duration(round(ms("collection_interval") * stale)),
    }


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def render_value(name: str, value: Value, form: str | None) -> str:
    if form is None:
        if isinstance(value, Size):
            return str(value.bytes)
        return str(value) if isinstance(value, (Duration, str)) else number(value)
    if form == "percent" and isinstance(value, (int, float)):
        return f"{number(round(value * 100, 6))}%"
    if form == "human" and isinstance(value, Size):
        return human_bytes(value.bytes)
    if form == "seconds" and isinstance(value, Duration):
        return number(value.ms / 1000)
    raise KnobError(f"{TEMPLATE}: ${{{name}:{form}}}: no such form for this knob")


def render(knobs: dict[str, Value], header: str) -> str:
    values = {**knobs, **derived(knobs)}

    def substitute(match: re.Match[str]) -> str:
        name, form = match[1], match[2]
        if name not in values:
            raise KnobError(f"{TEMPLATE}: unknown placeholder ${{{name}}}")
        return render_value(name, values[name], form)

    text = header + _PLACEHOLDER.sub(substitute, TEMPLATE.read_text())
    try:
        yaml.safe_load(text)
    except yaml.YAMLError as err:
        reason = " ".join(str(err).split())
        raise KnobError(f"the rendered rules are not valid YAML: {reason}") from None
    return text


def header(overrides: list[Path]) -> str:
    lines = [
        "# Generated by alerts/generate.py from alerts/pss-exporter.rules.yml.tmpl",
        "# and the knobs in alerts/thresholds.yml. Do not edit: change the knobs and",
        "# regenerate (see alerts/README.md).",
    ]
    lines += [f"# Knobs overridden by: {path}" for path in overrides]
    return "\n".join(lines) + "\n"


def prometheus_rule(rules: str) -> str:
    """The rules as a PrometheusRule for deploy/kubernetes (same namespace and
    labels as the other manifests there)."""
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "pss-exporter",
            "namespace": "monitoring",
            "labels": {
                "app.kubernetes.io/name": "pss-exporter",
                "app.kubernetes.io/component": "exporter",
            },
        },
        "spec": yaml.safe_load(rules),
    }
    comment = "# Generated by alerts/generate.py --prometheusrule: do not edit by hand.\n"
    return comment + yaml.dump(manifest, Dumper=_BlockDumper, sort_keys=False, width=1000)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line expressions and descriptions as `|` blocks, as in the rules file."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="generate.py", description="Render alerts/pss-exporter.rules.yml from the knobs."
    )
    parser.add_argument(
        "--thresholds",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="YAML file of knobs overriding alerts/thresholds.yml (repeatable; later wins)",
    )
    parser.add_argument(
        "--output", default=str(OUTPUT), metavar="FILE", help="where to write; - for stdout"
    )
    parser.add_argument(
        "--prometheusrule",
        action="store_true",
        help="wrap the rules in a prometheus-operator PrometheusRule manifest",
    )
    args = parser.parse_args(argv)
    try:
        text = render(load_knobs(args.thresholds), header(args.thresholds))
    except KnobError as err:
        print(f"generate.py: error: {err}", file=sys.stderr)
        return 2
    if args.prometheusrule:
        text = prometheus_rule(text)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
