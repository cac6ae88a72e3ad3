"""Process grouping: php-fpm titles and process-exporter's process_names rules.

A rule is compiled once from YAML; matching takes a ProcessView whose
attributes (cmdline, user, cgroups, cwd) are read lazily, so a process costs
only the files its rules need, and only the first time it is seen (the
collector caches the result by (pid, starttime)).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Protocol

import re2  # type: ignore[import-untyped]

from .gotemplate import GoTime, Template, TemplateError, Value
from .gotemplate import parse as parse_template
from .text import clip, excerpt


class ProcessView(Protocol):
    """What grouping may ask about a process; implemented by the collector."""

    pid: int
    comm: str
    starttime: int

    @property
    def cmdline(self) -> tuple[str, ...]: ...

    @property
    def username(self) -> str: ...

    @property
    def cgroups(self) -> tuple[str, ...]: ...

    @property
    def cwd(self) -> str: ...

    @property
    def start_time(self) -> datetime.datetime: ...


# ------------------------------------------------------------------- regexes

# RE2 itself (google-re2), not Python's re: configs are written for Go's
# regexp, which is RE2's syntax and semantics (\w and \b ASCII, $ only at the
# end, \pL, \Q...\E, \x{...}), and RE2 matches in time linear in the title,
# so no rule makes a process's title stall the collection (ReDoS).
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is one config line, not a C++ log line
_RE2_OPTIONS.max_mem = 8 << 20  # per regex (RE2's default): a larger program fails to compile


class GoRegex:
    """A compiled cmdline regex and what .Matches takes from it."""

    __slots__ = ("_names", "_regex")

    def __init__(self, pattern: str) -> None:
        try:
            self._regex = re2.compile(pattern, _RE2_OPTIONS)
        except re2.error as exc:
            reason = exc.args[0] if exc.args else exc
            if isinstance(reason, bytes):
                reason = reason.decode("utf-8", "replace")
            raise ValueError(f"invalid regex {excerpt(pattern)}: {clip(str(reason), 80)}") from None
        # Go's SubexpNames(): "" for the whole match and each unnamed group.
        names = [""] * (self._regex.groups + 1)
        for name, index in self._regex.groupindex.items():
            names[index] = name
        self._names = tuple(names)

    def captures(self, text: bytes) -> list[tuple[str, str]] | None:
        """(name, capture) of every group, in order, as process-exporter
        stores them into .Matches (a later group of the same name wins, an
        unmatched group is ""); None when the regex does not match.

        text is UTF-8 bytes: a str costs the wrapper an offset translation
        (3 times the time of the match itself)."""
        m = self._regex.search(text)
        if m is None:
            return None
        spans = (m.group(0), *m.groups())
        return [
            (name, span.decode("utf-8", "replace") if span else "")
            for name, span in zip(self._names, spans)
        ]


def compile_go_regex(pattern: str) -> GoRegex:
    """Compile a Go (RE2) regex; ValueError with the reason when invalid."""
    return GoRegex(pattern)


def go_base(path: str) -> str:
    """Go's filepath.Base: '' is '.', trailing slashes go, '/' stays '/'."""
    if not path:
        return "."
    path = path.rstrip("/")
    return path.rsplit("/", 1)[-1] if path else "/"


# --------------------------------------------------------------------- rules


def _replace_undecodable(text: str) -> str:
    """A name the OS decoded with surrogateescape (os.readlink, pwd), decoded
    with "replace" as comm and cmdline are: a lone surrogate in a label makes
    every exposition fail, and a tenant names its own cwd."""
    return os.fsencode(text).decode("utf-8", "replace")


def _field_value(name: str, proc: ProcessView, matches: dict[str, str]) -> Value:
    """One template field of proc, as process-exporter computes it."""
    if name == "Matches":
        return matches
    if name == "Comm":
        return proc.comm
    if name in ("ExeBase", "ExeFull"):
        argv = proc.cmdline
        if not argv:
            return proc.comm  # a zombie or kernel thread: both are comm
        return go_base(argv[0]) if name == "ExeBase" else argv[0]
    if name == "Username":
        return _replace_undecodable(proc.username)
    if name == "Cgroups":
        return proc.cgroups
    if name == "Cwd":
        return _replace_undecodable(proc.cwd)
    if name == "PID":
        return proc.pid
    return GoTime(proc.start_time)


@dataclass(frozen=True)
class GroupRule:
    """One process_names entry: all given matchers must match (AND)."""

    template: Template
    key: str = "process_names[0]"  # names a process whose name renders empty
    comm: frozenset[str] | None = None
    exe_base: dict[str, str] | None = None  # basename -> full path or ""
    cmdline: tuple[GoRegex, ...] | None = None

    @property
    def matches_without_argv(self) -> bool:
        """Whether a process with an empty cmdline (a kernel thread) can match."""
        if self.exe_base is not None:
            return False
        return all(r.captures(b"") is not None for r in self.cmdline or ())

    def match(self, proc: ProcessView) -> str | None:
        """Return the group name for proc, or None when the rule does not match.

        A name that renders empty (a capture that matched nothing, an index
        out of range) is the rule's key, e.g. 'process_names[2]': no two
        rules merge into one nameless group, and the series keeps a label.
        """
        if self.comm is not None and proc.comm not in self.comm:
            return None
        if self.exe_base is not None:
            argv = proc.cmdline
            if not argv:
                return None
            full = self.exe_base.get(go_base(argv[0]))
            if full is None or (full and full != argv[0]):
                return None
        matches: dict[str, str] = {}
        if self.cmdline is not None:
            joined = " ".join(proc.cmdline).encode()  # no surrogates: decoded with "replace"
            for regex in self.cmdline:
                captures = regex.captures(joined)
                if captures is None:
                    return None
                matches.update(captures)
        name = self.template.render(lambda field: _field_value(field, proc, matches))
        return name or self.key


RULE_KEYS = ("name", "comm", "exe", "cmdline")


def _string_list(raw: Any, key: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise ValueError(f".{key}: must be a list of strings")
    return raw


def compile_rule(raw: Any, key: str = "process_names[0]") -> GroupRule:
    """Build a GroupRule from one YAML process_names entry; keys other than
    RULE_KEYS are ignored, as process-exporter does (the loader warns).

    Errors are ValueError('.key: reason') so the config loader can prefix the
    entry's position.
    """
    if not isinstance(raw, dict):
        raise ValueError(": must be a mapping with name/comm/exe/cmdline")
    name = raw.get("name") or "{{.ExeBase}}"
    if not isinstance(name, str):
        raise ValueError(".name: must be a string")
    try:
        template = parse_template(name)
    except TemplateError as exc:
        raise ValueError(f".name: {exc} in {excerpt(name)}") from None

    comm = exe = regexes = None
    if raw.get("comm") is not None:
        comm = frozenset(_string_list(raw["comm"], "comm"))
    if raw.get("exe") is not None:
        exe = {go_base(e): (e if "/" in e else "") for e in _string_list(raw["exe"], "exe")}
    if raw.get("cmdline") is not None:
        regexes = []
        for i, pattern in enumerate(_string_list(raw["cmdline"], "cmdline")):
            try:
                regexes.append(compile_go_regex(pattern))
            except ValueError as exc:
                raise ValueError(f".cmdline[{i}]: {exc}") from None
    if comm is None and exe is None and regexes is None:
        raise ValueError(": needs at least one of comm, exe, cmdline")
    return GroupRule(
        template=template,
        key=key,
        comm=comm,
        exe_base=exe,
        cmdline=None if regexes is None else tuple(regexes),
    )


def template_fields(rule: GroupRule) -> frozenset[str]:
    """The template fields a rule's name uses (to document/plan reads)."""
    return rule.template.fields


# ------------------------------------------------------------------- php-fpm

FPM_MASTER_PREFIX = "php-fpm: master process"
FPM_POOL_PREFIX = "php-fpm: pool "
FPM_GROUP_PREFIX = "php-fpm:"
FPM_MASTER_GROUP = "php-fpm:master"
UNTRUSTED_PREFIX = "untrusted:"


def outside_fpm_groups(group: str) -> str:
    """The group of a process that is no trusted php-fpm process, which a
    process_names rule named: the php-fpm: names belong to trusted pools, so
    a comm of 'php-fpm:www' cannot join the real pool www."""
    return UNTRUSTED_PREFIX + group if group.startswith(FPM_GROUP_PREFIX) else group


class FpmRole(NamedTuple):
    """What a php-fpm process's title says: a master (with its config path)
    or a worker of a named pool."""

    is_master: bool
    name: str  # pool name, or the master's config path


def fpm_role(comm: str, cmdline: Callable[[], tuple[str, ...]]) -> FpmRole | None:
    """Classify a process by php-fpm's title; None if it is not php-fpm's."""
    if not comm.startswith("php-fpm"):
        return None  # cheap test first: cmdline is read only for php-fpm
    argv = cmdline()
    title = " ".join(argv).strip() if argv else ""
    if title.startswith(FPM_POOL_PREFIX):
        return FpmRole(False, title[len(FPM_POOL_PREFIX) :].strip())
    if title.startswith(FPM_MASTER_PREFIX):
        conf = title[len(FPM_MASTER_PREFIX) :].strip()
        if conf.startswith("(") and conf.endswith(")"):
            conf = conf[1:-1]
        return FpmRole(True, conf)
    return None


class FpmMaster(NamedTuple):
    """A trusted php-fpm master, as pool naming needs it."""

    conf: str  # the config path in its title
    starttime: int
    uid: int  # effective uid


def fpm_pool_groups(
    pools: dict[tuple[str, int], None], masters: dict[int, FpmMaster]
) -> dict[tuple[str, int], str]:
    """Name each (pool, master pid) pair's group; every master is in masters.

    A pool name run by one master is 'php-fpm:NAME'. When several masters run
    a pool of the same name, each gets a suffix: '@CONFIG' (the master's
    config path) when their config paths differ, otherwise '#N', N counting
    the masters by start time (oldest is 1). When exactly one of them runs
    as root, it keeps the plain name and only the others get suffixes: a
    user starting php-fpm with a pool www cannot rename the system's.
    """
    by_name: dict[str, list[int]] = {}
    for name, ppid in pools:
        by_name.setdefault(name, []).append(ppid)
    out: dict[tuple[str, int], str] = {}
    for name, ppids in by_name.items():
        base = f"php-fpm:{name}"
        roots = [p for p in ppids if masters[p].uid == 0]
        if len(ppids) > 1 and len(roots) == 1:
            out[(name, roots[0])] = base
            ppids = [p for p in ppids if p != roots[0]]
        elif len(ppids) == 1:
            out[(name, ppids[0])] = base
            continue
        confs = [masters[p].conf for p in ppids]
        if all(confs) and len(set(confs)) == len(confs):
            for ppid, conf in zip(ppids, confs):
                out[(name, ppid)] = f"{base}@{conf}"
        else:
            ordered = sorted(ppids, key=lambda p: (masters[p].starttime, p))
            for n, ppid in enumerate(ordered, 1):
                out[(name, ppid)] = f"{base}#{n}"
    return out
