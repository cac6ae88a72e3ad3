"""Process grouping: php-fpm titles and process-exporter's process_names rules.

A rule is compiled once from YAML; matching takes a ProcessView whose
attributes (cmdline, user, cgroups, cwd) are read lazily, so a process costs
only the files its rules need, and only the first time it is seen (the
collector caches the result by (pid, starttime)).
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Protocol

NO_VALUE = "<no value>"  # what Go's text/template prints for a missing map key

# Template fields process-exporter offers.
TEMPLATE_FIELDS = ("Comm", "ExeBase", "ExeFull", "Username", "Cgroups", "Cwd", "PID", "StartTime")


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


# ---------------------------------------------------------------- templates


class _Field(NamedTuple):
    name: str  # a TEMPLATE_FIELDS key, or "Matches"
    key: str  # the capture name for Matches


_ACTION_RE = re.compile(r"{{(-?)\s*(.*?)\s*(-?)}}", re.S)


def compile_template(text: str) -> tuple[Any, ...]:
    """Split a Go text/template name into literal strings and _Field parts.

    Only field references are supported, which is all process-exporter
    documents; anything else is rejected at load time rather than rendered
    wrongly at run time. '{{-' and '-}}' trim adjacent whitespace as in Go.
    """
    parts: list[Any] = []
    pos = 0
    trim_next = False
    for m in _ACTION_RE.finditer(text):
        literal = text[pos : m.start()]
        if trim_next:
            literal = literal.lstrip()
        if m.group(1):
            literal = literal.rstrip()
        if literal:
            parts.append(literal)
        parts.append(_parse_action(m.group(2)))
        trim_next = bool(m.group(3))
        pos = m.end()
    tail = text[pos:]
    if "{{" in tail or "}}" in tail:
        raise ValueError(f"unbalanced braces in template {text[:40]!r}")
    if trim_next:
        tail = tail.lstrip()
    if tail:
        parts.append(tail)
    return tuple(parts)


def _parse_action(action: str) -> _Field:
    names = action.split(".")
    if names[0] != "" or len(names) < 2:
        raise ValueError(f"unsupported template action {{{{{action[:40]}}}}}")
    if names[1] == "Matches" and len(names) == 3 and names[2]:
        return _Field("Matches", names[2])
    if len(names) == 2 and names[1] in TEMPLATE_FIELDS:
        return _Field(names[1], "")
    raise ValueError(
        f"unknown template field {action[:40]!r} (known: "
        + ", ".join("." + f for f in (*TEMPLATE_FIELDS, "Matches.NAME"))
        + ")"
    )


def _go_time(t: datetime.datetime) -> str:
    # Go's time.Time String() layout for a UTC time.
    return t.strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def render_template(parts: tuple[Any, ...], proc: ProcessView, matches: dict[str, str]) -> str:
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        elif part.name == "Matches":
            out.append(matches.get(part.key, NO_VALUE))
        elif part.name == "Comm":
            out.append(proc.comm)
        elif part.name in ("ExeBase", "ExeFull"):
            argv0 = proc.cmdline[0] if proc.cmdline else proc.comm
            out.append(os.path.basename(argv0) if part.name == "ExeBase" else argv0)
        elif part.name == "Username":
            out.append(proc.username)
        elif part.name == "Cgroups":
            out.append("[" + " ".join(proc.cgroups) + "]")
        elif part.name == "Cwd":
            out.append(proc.cwd)
        elif part.name == "PID":
            out.append(str(proc.pid))
        else:  # StartTime
            out.append(_go_time(proc.start_time))
    return "".join(out)


# ------------------------------------------------------------------- regexes

# Go RE2 spellings that Python's re spells differently.
_POSIX_CLASSES = {
    "[:alnum:]": "0-9A-Za-z",
    "[:alpha:]": "A-Za-z",
    "[:ascii:]": "\\x00-\\x7F",
    "[:blank:]": "\\t ",
    "[:cntrl:]": "\\x00-\\x1F\\x7F",
    "[:digit:]": "0-9",
    "[:graph:]": "!-~",
    "[:lower:]": "a-z",
    "[:print:]": " -~",
    "[:punct:]": "!-/:-@\\[-`{-~",
    "[:space:]": "\\t\\n\\v\\f\\r ",
    "[:upper:]": "A-Z",
    "[:word:]": "0-9A-Za-z_",
    "[:xdigit:]": "0-9A-Fa-f",
}


def translate_go_regex(pattern: str) -> str:
    """Rewrite the Go (RE2) spellings Python's re spells differently:
    (?<name>...) named groups, \\z, and POSIX classes such as [[:alpha:]].

    A scan, not string replacement: escapes are copied as they are (only a
    real \\z changes) and POSIX classes are rewritten only inside [...].
    """
    out = []
    i, n, in_class = 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            out.append("\\Z" if pattern[i + 1] == "z" and not in_class else pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if pattern.startswith("[:^", i):
                raise ValueError(
                    f"invalid regex {pattern[:40]!r}: negated POSIX classes ([[:^alpha:]]) are not "
                    "supported; use [^[:alpha:]]"
                )
            if c == "[" and pattern[i + 1 : i + 2] == ":":
                end = pattern.find(":]", i + 2)
                posix = _POSIX_CLASSES.get(pattern[i : end + 2]) if end > 0 else None
                if posix is not None:
                    out.append(posix)
                    i = end + 2
                    continue
            elif c == "]" and out[-1] not in ("[", "[^"):
                in_class = False
            out.append(c)
        elif c == "[":
            in_class = True
            caret = pattern[i + 1 : i + 2] == "^"
            out.append("[^" if caret else "[")
            i += 2 if caret else 1
            continue
        elif pattern.startswith("(?<", i) and pattern[i + 3 : i + 4] not in ("=", "!"):
            out.append("(?P<")
            i += 3
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def compile_go_regex(pattern: str) -> re.Pattern[str]:
    """Compile a Go (RE2) regex with Python's re (see translate_go_regex)."""
    try:
        return re.compile(translate_go_regex(pattern))
    except (re.error, OverflowError, RecursionError) as exc:
        raise ValueError(f"invalid regex {pattern[:40]!r}: {exc}") from None


# --------------------------------------------------------------------- rules


@dataclass(frozen=True)
class GroupRule:
    """One process_names entry: all given matchers must match (AND)."""

    template: tuple[Any, ...]
    comm: frozenset[str] | None = None
    exe_base: dict[str, str] | None = None  # basename -> full path or ""
    cmdline: tuple[re.Pattern[str], ...] = ()
    has_cmdline_rule: bool = False

    def match(self, proc: ProcessView) -> str | None:
        """Return the group name for proc, or None when the rule does not match."""
        if self.comm is not None and proc.comm not in self.comm:
            return None
        if self.exe_base is not None:
            argv = proc.cmdline
            if not argv:
                return None
            full = self.exe_base.get(os.path.basename(argv[0]))
            if full is None or (full and full != argv[0]):
                return None
        matches: dict[str, str] = {}
        if self.has_cmdline_rule:
            joined = " ".join(proc.cmdline)
            for regex in self.cmdline:
                m = regex.search(joined)
                if m is None:
                    return None
                matches.update((k, v or "") for k, v in m.groupdict().items())
        return render_template(self.template, proc, matches)


_RULE_KEYS = {"name", "comm", "exe", "cmdline"}


def _string_list(raw: Any, key: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise ValueError(f".{key}: must be a list of strings")
    return raw


def compile_rule(raw: Any) -> GroupRule:
    """Build a GroupRule from one YAML process_names entry.

    Errors are ValueError('.key: reason') so the config loader can prefix the
    entry's position.
    """
    if not isinstance(raw, dict):
        raise ValueError(": must be a mapping with name/comm/exe/cmdline")
    for key in raw:
        if key not in _RULE_KEYS:
            raise ValueError(f".{str(key)[:40]}: unknown key (known: name, comm, exe, cmdline)")
    name = raw.get("name") or "{{.ExeBase}}"
    if not isinstance(name, str):
        raise ValueError(".name: must be a string")
    try:
        template = compile_template(name)
    except ValueError as exc:
        raise ValueError(f".name: {exc}") from None

    comm = exe = None
    regexes: list[re.Pattern[str]] = []
    if raw.get("comm") is not None:
        comm = frozenset(_string_list(raw["comm"], "comm"))
    if raw.get("exe") is not None:
        exe = {
            os.path.basename(e): (e if "/" in e else "") for e in _string_list(raw["exe"], "exe")
        }
    if raw.get("cmdline") is not None:
        for i, pattern in enumerate(_string_list(raw["cmdline"], "cmdline")):
            try:
                regexes.append(compile_go_regex(pattern))
            except ValueError as exc:
                raise ValueError(f".cmdline[{i}]: {exc}") from None
    if comm is None and exe is None and raw.get("cmdline") is None:
        raise ValueError(": needs at least one of comm, exe, cmdline")
    return GroupRule(
        template=template,
        comm=comm,
        exe_base=exe,
        cmdline=tuple(regexes),
        has_cmdline_rule=raw.get("cmdline") is not None,
    )


def template_fields(rule: GroupRule) -> set[str]:
    """The template fields a rule's name uses (to document/plan reads)."""
    return {p.name for p in rule.template if isinstance(p, _Field)}


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
