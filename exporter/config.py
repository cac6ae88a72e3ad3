"""Configuration: YAML in, validated frozen dataclasses out.

Every problem is reported as a ConfigError naming the file, the key and the
reason, so the CLI can print one line and exit 2. Unknown keys inside our
own sections are errors; at the top level and inside process_names entries
they are ignored with a one-line warning, as process-exporter ignores them,
so a config written for it loads unchanged.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from .fileio import read_regular
from .grouping import RULE_KEYS, GroupRule, compile_rule
from .text import EXCERPT, clip, excerpt, one_line

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """Invalid configuration: str() is the one-line message for the user."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        where = f"{source}: {key}" if key else source
        super().__init__(one_line(f"{where}: {reason}"))


def _key_text(name: Any) -> str:
    """A mapping key in a message: as written when short and printable."""
    text = name if isinstance(name, str) else excerpt(name)
    return text if text.isprintable() and len(text) <= EXCERPT else excerpt(text)


@dataclass(frozen=True)
class CollectionConfig:
    interval: float = 15.0
    # Cached smaps values of an unchanged process are re-read after this long;
    # 0 re-reads every process every cycle (full freshness).
    max_age: float = 75.0
    # Reading smaps stops for the cycle after this long; the rest is deferred.
    budget: float = 7.5
    # Processes with at least this much Rss are read at most every large_interval.
    large_rss: int = 2 << 30
    large_interval: float = 120.0
    threads: int = 1


@dataclass(frozen=True)
class PoolOverride:
    """php_fpm.pools.<name>: what the exporter cannot learn from the pool."""

    status: str | None = None  # HTTP(S) URL of the status page
    max_children: int | None = None


@dataclass(frozen=True)
class PhpFpmConfig:
    enabled: bool = True
    status_timeout: float = 1.0
    sizing: str = "p95"  # worker size for capacity: p95 or max of the workers' peak USS
    reserve: float = 0.1  # share of the budget kept free
    window: float = 3600.0  # seconds the workers' peaks are kept (peaks.py)
    pools: dict[str, PoolOverride] = field(default_factory=dict)  # by pool or group name


@dataclass(frozen=True)
class AccountingConfig:
    """Host reconciliation: PSS of every process set against /proc/meminfo."""

    enabled: bool = True
    interval: float = 60.0  # reading every process's smaps costs more: own cadence


@dataclass(frozen=True)
class CgroupConfig:
    enabled: bool = True  # per-group cgroup usage, limit, OOM kills, pressure


@dataclass(frozen=True)
class KmsgConfig:
    enabled: bool = True  # attribute OOM kills in the kernel log to groups


DEFAULT_RULES_YAML = [{"name": "{{.Comm}}", "cmdline": [".+"]}]


@dataclass(frozen=True)
class Config:
    source: str = "built-in config"
    collection: CollectionConfig = field(default_factory=CollectionConfig)
    max_groups: int = 500
    php_fpm: PhpFpmConfig = field(default_factory=PhpFpmConfig)
    accounting: AccountingConfig = field(default_factory=AccountingConfig)
    cgroups: CgroupConfig = field(default_factory=CgroupConfig)
    kmsg: KmsgConfig = field(default_factory=KmsgConfig)
    process_names: tuple[GroupRule, ...] = ()
    # process-exporter's -children: a process no rule matches joins the group
    # of its nearest grouped ancestor (decided when it is first seen).
    children: bool = True


_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}
MAX_DURATION = 7 * 86400.0  # longer waits overflow the platform's timers
MIN_INTERVAL = 0.1  # collection.interval: shorter would be a busy loop over /proc
MAX_SIZE = 1 << 50  # 1 PiB: sizes are compared with a process's Rss
MAX_GROUPS = 100_000  # max_groups: each group is a few dozen series
MAX_THREADS = 64  # collection.threads: more cannot help, parsing smaps holds the GIL
MAX_CHILDREN = 100_000  # php_fpm.pools.NAME.max_children
# Prometheus durations (model.ParseDuration), as alerts/generate.py reads
# them: units in this order, each at most once, integers of 1 to 15 digits
# (int() never meets Python's digit limit). tests/test_config.py holds both
# to one table.
_DURATION_MS = {
    "y": 365 * 86_400_000,
    "w": 7 * 86_400_000,
    "d": 86_400_000,
    "h": 3_600_000,
    "m": 60_000,
    "s": 1000,
    "ms": 1,
}
_DURATION = re.compile("".join(rf"(?:([0-9]{{1,15}}){unit})?" for unit in _DURATION_MS))


def parse_duration(text: str) -> float:
    """Parse a Prometheus duration ('500ms', '15s', '1m30s', '1d') into seconds."""
    match = _DURATION.fullmatch(text)
    if not text:
        raise ValueError("empty duration")
    if not match:
        raise ValueError(
            f"invalid duration {excerpt(text)} (use e.g. 500ms, 15s, 1m30s: "
            "units y, w, d, h, m, s, ms in this order, each once)"
        )
    ms = sum(int(n) * unit for n, unit in zip(match.groups(), _DURATION_MS.values()) if n)
    return ms / 1000


def duration_text(seconds: float) -> str:
    """A whole number of milliseconds as parse_duration reads it back (a
    message's '0.1s' would be refused): '100ms', '15s'."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def parse_size(text: str) -> int:
    """Parse a size ('512MiB', '2GiB', '1GB', or plain bytes) into bytes, at
    most MAX_SIZE."""
    text = text.strip()
    digits = len(text) - len(text.lstrip("0123456789."))
    number, unit = text[:digits], text[digits:].strip()
    try:
        size = float(number) * _SIZE_UNITS[unit]  # inf for hundreds of digits
    except (ValueError, KeyError):
        raise ValueError(f"invalid size {excerpt(text)} (use e.g. 512MiB, 2GiB or bytes)") from None
    if not size <= MAX_SIZE:
        raise ValueError(f"size {excerpt(text)} is over 1PiB")
    return int(size)


_IGNORED_KEY = "unknown key, ignored (as process-exporter does)"


class _Section:
    """Reads keys of one YAML mapping, remembering its path for messages."""

    def __init__(self, source: str, path: str, data: Any) -> None:
        self.source, self.path = source, path
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(source, path or "(top level)", "must be a mapping")
        self.data = data

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, reason: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), reason)

    def reject_unknown(self, known: set[str]) -> None:
        for name in self.data:
            if name not in known:
                raise self.error(_key_text(name), "unknown key")

    def warn_unknown(self, known: set[str] | tuple[str, ...]) -> None:
        """process-exporter ignores keys it does not know: so do we, saying so."""
        for name in self.data:
            if name not in known:
                log.warning("%s", ConfigError(self.source, self.key(_key_text(name)), _IGNORED_KEY))

    def sub(self, name: str) -> _Section:
        return _Section(self.source, self.key(name), self.data.get(name))

    def duration(self, name: str, default: float, minimum: float = 0.0) -> float:
        if name not in self.data:
            return default
        raw = self.data[name]
        if not isinstance(raw, str):
            raise self.error(
                name, f"must be a duration like 500ms, 15s or 1m30s, got {excerpt(raw)}"
            )
        try:
            value = parse_duration(raw)
        except ValueError as exc:
            raise self.error(name, str(exc)) from None
        if not minimum <= value <= MAX_DURATION:  # hundreds of digits make inf
            raise self.error(name, f"must be a duration from {duration_text(minimum)} to 7d")
        return value

    def size(self, name: str, default: int) -> int:
        raw = self.data.get(name, default)
        if isinstance(raw, str):
            try:
                return parse_size(raw)
            except ValueError as exc:
                raise self.error(name, str(exc)) from None
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_SIZE:
            raise self.error(name, f"must be a size from 0 to 1PiB, got {excerpt(raw)}")
        return raw

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        raw = self.data.get(name, default)
        if isinstance(raw, bool) or not isinstance(raw, int) or not minimum <= raw <= maximum:
            raise self.error(
                name, f"must be an integer from {minimum} to {maximum}, got {excerpt(raw)}"
            )
        return raw

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.data.get(name, default)
        if not isinstance(raw, bool):
            raise self.error(name, f"must be true or false, got {excerpt(raw)}")
        return raw


def _php_fpm(fpm: _Section, interval: float) -> PhpFpmConfig:
    fpm.reject_unknown({"enabled", "status_timeout", "sizing", "reserve", "window", "pools"})
    sizing = fpm.data.get("sizing", "p95")
    if sizing not in ("p95", "max"):
        raise fpm.error("sizing", f"must be p95 or max, got {excerpt(sizing)}")
    reserve = fpm.data.get("reserve", 0.1)
    if isinstance(reserve, bool) or not isinstance(reserve, (int, float)) or not 0 <= reserve < 1:
        raise fpm.error("reserve", f"must be a ratio from 0 to below 1, got {excerpt(reserve)}")
    # The status queries must leave the collection time to finish its interval.
    status_timeout = fpm.duration("status_timeout", min(1.0, interval / 2), minimum=0.001)
    if status_timeout > interval / 2:
        raise fpm.error(
            "status_timeout",
            f"must be at most half of collection.interval ({duration_text(interval)})",
        )
    # At least one interval: a shorter window would forget each peak before the next cycle.
    window = fpm.duration("window", 3600.0, minimum=interval)
    pools_section = fpm.sub("pools")
    pools = {}
    for name, data in pools_section.data.items():
        # YAML may read a pool name as a number or a boolean (8080:, yes:).
        pool = _Section(fpm.source, pools_section.key(_key_text(name)), data)
        pool.reject_unknown({"status", "max_children"})
        status = pool.data.get("status")
        if status is not None and (
            not isinstance(status, str) or not status.startswith(("http://", "https://"))
        ):
            raise pool.error("status", f"must be an http:// or https:// URL, got {excerpt(status)}")
        max_children = pool.data.get("max_children")
        if max_children is not None:
            max_children = pool.integer("max_children", 0, 1, MAX_CHILDREN)
        pools[str(name)] = PoolOverride(status, max_children)
    return PhpFpmConfig(
        enabled=fpm.boolean("enabled", True),
        status_timeout=status_timeout,
        sizing=sizing,
        reserve=float(reserve),
        window=window,
        pools=pools,
    )


def build_config(data: Any, source: str) -> Config:
    """Validate parsed YAML and build a Config; raises ConfigError."""
    top = _Section(source, "", data)
    top.warn_unknown(
        {
            "collection",
            "max_groups",
            "php_fpm",
            "accounting",
            "cgroups",
            "kmsg",
            "process_names",
            "children",
        }
    )

    coll = top.sub("collection")
    coll.reject_unknown({"interval", "max_age", "budget", "large_rss", "large_interval", "threads"})
    interval = coll.duration("interval", 15.0, minimum=MIN_INTERVAL)
    collection = CollectionConfig(
        interval=interval,
        max_age=coll.duration("max_age", 5 * interval),
        budget=coll.duration("budget", interval / 2, minimum=0.001),
        large_rss=coll.size("large_rss", CollectionConfig.large_rss),
        large_interval=coll.duration("large_interval", CollectionConfig.large_interval),
        threads=coll.integer("threads", 1, 1, MAX_THREADS),
    )

    php_fpm = _php_fpm(top.sub("php_fpm"), interval)
    acc = top.sub("accounting")
    acc.reject_unknown({"enabled", "interval"})
    accounting = AccountingConfig(
        enabled=acc.boolean("enabled", True),
        interval=acc.duration("interval", 60.0, minimum=0.001),
    )
    cg = top.sub("cgroups")
    cg.reject_unknown({"enabled"})
    km = top.sub("kmsg")
    km.reject_unknown({"enabled"})

    raw_rules = top.data.get("process_names", DEFAULT_RULES_YAML)
    if raw_rules is None:
        raw_rules = []
    if not isinstance(raw_rules, list):
        raise ConfigError(source, "process_names", "must be a list")
    rules = []
    for i, raw in enumerate(raw_rules):
        entry = f"process_names[{i}]"
        try:
            rules.append(compile_rule(raw, entry))
        except ValueError as exc:
            key, _, reason = str(exc).partition(": ")
            unknown = (
                [_key_text(k) for k in raw if k not in RULE_KEYS] if isinstance(raw, dict) else []
            )
            if unknown:  # a rule of only a typo (cmdlin:): say what was ignored
                reason += f" (unknown keys are ignored: {', '.join(unknown[:3])})"
            raise ConfigError(source, f"{entry}{key}", reason) from None
        _Section(source, entry, raw).warn_unknown(RULE_KEYS)

    return Config(
        source=source,
        collection=collection,
        max_groups=top.integer("max_groups", 500, 1, MAX_GROUPS),
        php_fpm=php_fpm,
        accounting=accounting,
        cgroups=CgroupConfig(enabled=cg.boolean("enabled", True)),
        kmsg=KmsgConfig(enabled=km.boolean("enabled", True)),
        process_names=tuple(rules),
        children=top.boolean("children", True),
    )


MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 100_000


def _yaml_shape_error(text: bytes) -> tuple[str, str] | None:
    """(where, reason) when a document nests too deep or grows too large once
    its aliases are expanded; None when it is fit to load.

    PyYAML's composer recurses once per level, and a 366-byte "billion laughs"
    builds a value that anything walking it (a loop, an error message) would
    expand to gigabytes. The event stream is flat, so it is checked first:
    every alias counts the nodes of the value it names.
    """
    sizes: dict[str, int] = {}  # anchor -> expanded node count
    frames: list[list[Any]] = [[None, 0]]  # open collections: [anchor, node count]
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        where = f"line {event.start_mark.line + 1}" if event.start_mark else ""
        if isinstance(event, yaml.CollectionStartEvent):
            if len(frames) > MAX_YAML_DEPTH:
                return where, f"nested deeper than {MAX_YAML_DEPTH} levels"
            frames.append([event.anchor, 1])
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            anchor, count = frames.pop()
        elif isinstance(event, yaml.ScalarEvent):
            anchor, count = event.anchor, 1
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor not in sizes:  # undefined, or inside its own value
                return where, f"alias *{clip(str(event.anchor))} names no complete value before it"
            anchor, count = None, sizes[event.anchor]
        else:  # stream and document boundaries
            continue
        if anchor is not None:
            sizes[anchor] = count
        frames[-1][1] += count
        if frames[-1][1] > MAX_YAML_NODES:
            return where, f"more than {MAX_YAML_NODES} values once aliases are expanded"
    return None


class _Loader(yaml.SafeLoader):
    """SafeLoader for which a value Python cannot hold is a YAML error with a
    position: a ValueError (an integer past Python's 4,300-digit conversion
    limit, a timestamp 2001-13-45) or an integer of more than 1,024 bits
    (sexagesimal 1:59:59:... grows past that limit without a long number)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            value = super().construct_object(node, deep)
            if not isinstance(value, int) or value.bit_length() <= 1024:
                return value
        except ValueError:
            pass
        kind = node.tag.rpartition(":")[2]
        raise yaml.constructor.ConstructorError(
            None, None, f"cannot read {excerpt(node.value)} as {kind}", node.start_mark
        )


def load_yaml(path: str) -> Any:
    """The YAML document in the file at path, read within MAX_CONFIG_BYTES and
    checked by _yaml_shape_error first; every problem is a ConfigError."""
    try:
        text = read_regular(path, MAX_CONFIG_BYTES)
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror or exc}") from None
    except ValueError:
        raise ConfigError(path, "", "cannot read: the path has a NUL byte") from None
    try:
        shape = _yaml_shape_error(text)
        if shape:
            raise ConfigError(path, *shape)
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        # A problem may quote the document (an unknown tag): keep it short.
        raise ConfigError(path, where, f"YAML syntax error: {clip(problem, 100)}") from None
    except ValueError as exc:  # the scanner's chr() of an escape past U+10FFFF
        raise ConfigError(path, "", f"YAML syntax error: {clip(str(exc), 100)}") from None


def load_config(path: str | None) -> Config:
    """Load the YAML file at path, or the built-in config when path is None."""
    if path is None:
        return build_config({}, "built-in config")
    return build_config(load_yaml(path), path)
