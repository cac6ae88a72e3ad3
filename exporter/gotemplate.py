"""A bounded subset of Go's text/template, for process_names' `name`.

process-exporter renders a group's name with Go's text/template; configs
written for it use field references, pipelines and the functions below, and
this module renders them as Go does (checked side by side with Debian's
prometheus-process-exporter 0.7.10, tests/test_side_by_side.py). Anything
outside the subset is a TemplateError at load, never a broken name at run
time.

Supported: text, `{{/* comments */}}`, `{{-`/`-}}` trimming, fields
(`.Comm`, `.Matches.KEY`, ...), string, integer and boolean literals, `nil`
as a function argument, `(...)` sub-pipelines, `a | f b`, `if`/`else if`/
`else`/`end`, and the functions printf, print, len, index, slice, eq, ne,
lt, le, gt, ge, and, or, not. printf's format must be a string literal; its
verbs (%v %s %d %q %x %X %o %b %c %t, flags, width and precision up to
MAX_WIDTH) are checked at load.

As in Go, an error while rendering (an index out of range) stops the
output where it happened; the caller decides what an empty name means.
"""

from __future__ import annotations

import contextlib
import datetime
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Union

MAX_WIDTH = 1000  # printf width/precision: Go allows 1e6, a label needs far less
MAX_DEPTH = 32  # nesting of (...) and if blocks
NO_VALUE = "<no value>"  # what Go prints for a missing map key


class TemplateError(ValueError):
    """A template outside the subset: str() is the reason."""


class _ExecError(Exception):
    """A run-time error: Go stops the output there."""


@dataclass(frozen=True)
class GoTime:
    """A time.Time as process-exporter's StartTime: UTC, printed by Go's
    String() ('2026-12-03 14:53:11.04 +0000 UTC')."""

    at: datetime.datetime

    def __str__(self) -> str:
        t = self.at.astimezone(datetime.timezone.utc)
        frac = f"{t.microsecond:06d}".rstrip("0")  # Go's .999999999: no trailing zeros
        return t.strftime("%Y-%m-%d %H:%M:%S") + (f".{frac}" if frac else "") + " +0000 UTC"


class _Missing:
    """Go's invalid reflect.Value: a map key that is not there."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()
Value = Union[str, int, bool, tuple[str, ...], dict[str, str], GoTime, None, _Missing]


# ------------------------------------------------------------------ parse


@dataclass(frozen=True)
class _Field:
    path: tuple[str, ...]  # ("Comm",) or ("Matches", "key")


@dataclass(frozen=True)
class _Lit:
    value: Value


@dataclass(frozen=True)
class _Call:
    func: str
    args: tuple[_Node, ...]


@dataclass(frozen=True)
class _If:
    branches: tuple[tuple[_Node, tuple[_Part, ...]], ...]  # (condition, body)
    otherwise: tuple[_Part, ...]


_Node = Union[_Field, _Lit, _Call]
_Part = Union[str, _Node, _If]

# name -> (minimum, maximum) arguments, the piped value included
_FUNCS = {
    "printf": (1, None),
    "print": (0, None),
    "len": (1, 1),
    "index": (1, None),
    "slice": (1, 4),
    "eq": (2, None),
    "ne": (2, 2),
    "lt": (2, 2),
    "le": (2, 2),
    "gt": (2, 2),
    "ge": (2, 2),
    "and": (1, None),
    "or": (1, None),
    "not": (1, 1),
}
_GO_ONLY = {"html", "js", "urlquery", "println", "call", "range", "with", "define", "template"}
_GO_ONLY |= {"block", "break", "continue"}

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\\n]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<num>[+-]?\d[\w.+-]*)
    | (?P<field>(?:\.[A-Za-z_]\w*)+|\.)
    | (?P<var>\$\w*)
    | (?P<ident>[A-Za-z_]\w*)
    | (?P<punct>[|()])
    | (?P<other>\S)
    )""",
    re.X | re.S,
)
_GO_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_GO_ESCAPES |= {"\\": "\\", '"': '"', "'": "'"}


def _unquote(text: str) -> str:
    out, i = [], 1
    while i < len(text) - 1:
        c = text[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = text[i + 1]
        if e in _GO_ESCAPES:
            out.append(_GO_ESCAPES[e])
            i += 2
            continue
        size = {"x": 2, "u": 4, "U": 8}.get(e)
        digits = text[i + 2 : i + 2 + size] if size else ""
        if size and len(digits) == size and all(d in "0123456789abcdefABCDEF" for d in digits):
            code = int(digits, 16)
            if code <= 0x10FFFF and not 0xD800 <= code < 0xE000:
                out.append(chr(code))
                i += 2 + size
                continue
        raise TemplateError(f"invalid escape in string {text[:40]!r}")
    return "".join(out)


class _Lexer:
    def __init__(self, action: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(action):
            m = _TOKEN.match(action, pos)
            if m is None or m.end() == pos:
                break
            pos = m.end()
            kind = m.lastgroup or "other"
            self.tokens.append((kind, m.group(kind)))
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def next(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise TemplateError("unexpected end of action")
        self.pos += 1
        return token


_FIELD_TYPES = {
    "Comm": "string",
    "ExeBase": "string",
    "ExeFull": "string",
    "Username": "string",
    "Cwd": "string",
    "PID": "int",
    "StartTime": "time.Time",
    "Cgroups": "[]string",
    "Matches": "map[string]string",
}
FIELDS = tuple(_FIELD_TYPES)


def _field(text: str) -> _Field:
    path = tuple(text.split(".")[1:])
    if text == ".":
        raise TemplateError("'.' alone is not supported: name a field such as .Comm")
    if path[0] not in _FIELD_TYPES:
        known = ", ".join("." + f for f in FIELDS)
        raise TemplateError(f"unknown template field .{path[0][:40]} (known: {known})")
    if len(path) == 1 or (path[0] == "Matches" and len(path) == 2):
        return _Field(path)
    raise TemplateError(f"field {text[:40]} has no field {path[-1][:40]}")


def _operand(lex: _Lexer, depth: int) -> _Node:
    kind, text = lex.next()
    if kind == "field":
        return _field(text)
    if kind in ("str", "raw"):
        return _Lit(_unquote(text) if kind == "str" else text[1:-1])
    if kind == "num":
        if not re.fullmatch(r"[+-]?(?:0|[1-9]\d{0,17})", text):
            raise TemplateError(f"number {text[:40]} is not supported (decimal integers only)")
        return _Lit(int(text))
    if kind == "ident" and text in ("true", "false", "nil"):
        return _Lit({"true": True, "false": False, "nil": None}[text])
    if kind == "ident" and text in _FUNCS:
        raise TemplateError(f"{text} as an argument needs parentheses and arguments: ({text} ...)")
    if kind == "punct" and text == "(":
        node = _pipeline(lex, depth + 1)
        if lex.next() != ("punct", ")"):
            raise TemplateError("unclosed (")
        return node
    raise _unsupported(kind, text)


def _unsupported(kind: str, text: str) -> TemplateError:
    if kind == "var":
        return TemplateError("variables ($x) are not supported")
    if kind == "ident" and text in _GO_ONLY:
        return TemplateError(f"{text} is not supported in process_names templates")
    if kind == "ident":
        return TemplateError(f'function "{text[:40]}" not defined')
    return TemplateError(f"unexpected {text[:40]!r} in action")


def _command(lex: _Lexer, depth: int, piped: _Node | None) -> _Node:
    if depth > MAX_DEPTH:
        raise TemplateError(f"nested deeper than {MAX_DEPTH} levels")
    token = lex.peek()
    if token is not None and token[0] == "ident" and token[1] in _FUNCS:
        lex.next()
        name = token[1]
        args = []
        while (t := lex.peek()) is not None and t not in (("punct", "|"), ("punct", ")")):
            args.append(_operand(lex, depth))
        if piped is not None:
            args.append(piped)
        low, high = _FUNCS[name]
        if len(args) < low or (high is not None and len(args) > high):
            raise TemplateError(f"wrong number of arguments for {name}: {len(args)}")
        if name == "printf":
            _check_format(args[0])
        return _Call(name, tuple(args))
    node = _operand(lex, depth)
    t = lex.peek()
    if piped is not None or (t is not None and t not in (("punct", "|"), ("punct", ")"))):
        raise TemplateError("can't give argument to non-function")
    return node


def _pipeline(lex: _Lexer, depth: int) -> _Node:
    node = _command(lex, depth, None)
    while lex.peek() == ("punct", "|"):
        lex.next()
        depth += 1  # a stage nests the pipeline so far: parsed and rendered recursively
        node = _command(lex, depth, node)
    return node


_VERB = re.compile(r"%([-+# 0]*)(\d*)(?:\.(\d*))?(.)?", re.S)
_VERBS = "vsdqxXobct"


def _check_format(node: _Node) -> None:
    if not (isinstance(node, _Lit) and isinstance(node.value, str)):
        raise TemplateError("printf's format must be a string literal")
    for m in _VERB.finditer(node.value):
        _, width, prec, verb = m.groups()
        if verb == "%" and m.group(0) == "%%":
            continue
        if verb is None or verb not in _VERBS:
            raise TemplateError(f"printf verb {m.group(0)[:10]!r} is not supported")
        if _over_width(width) or _over_width(prec):
            raise TemplateError(f"printf width or precision over {MAX_WIDTH}")


def _over_width(digits: str | None) -> bool:
    """Over MAX_WIDTH; the length first, as int() refuses over 4300 digits."""
    digits = (digits or "").lstrip("0")
    return len(digits) > len(str(MAX_WIDTH)) or int(digits or 0) > MAX_WIDTH


# Go trims only with a space after '{{-' and before '-}}': '{{-3}}' is the number -3.
_ACTION = re.compile(r"{{(-[ \t\r\n])?(.*?)([ \t\r\n]-)?}}", re.S)


@dataclass(frozen=True)
class Template:
    parts: tuple[_Part, ...]
    fields: frozenset[str]  # the fields it reads

    def render(self, lookup: Callable[[str], Value]) -> str:
        """The name for the fields lookup gives (read only when used)."""
        out: list[str] = []
        with contextlib.suppress(_ExecError):  # Go stops there: what was written stands
            _run(self.parts, lookup, out)
        return "".join(out)


def parse(text: str) -> Template:
    """Parse a process_names name template; raises TemplateError."""
    if any("\ud800" <= c <= "\udfff" for c in text):  # YAML's "\ud800" makes one
        raise TemplateError("a lone surrogate is no character: no label can hold it")
    actions: list[tuple[str, _Part | str]] = []  # ("text"|"part"|"if"|"else"|"elif"|"end")
    pos, trim_next = 0, False
    for m in _ACTION.finditer(text):
        literal = text[pos : m.start()]
        if trim_next:
            literal = literal.lstrip()
        if m.group(1):
            literal = literal.rstrip()
        if literal:
            actions.append(("text", literal))
        actions.append(_action(m.group(2)))
        trim_next, pos = bool(m.group(3)), m.end()
    tail = text[pos:]
    if "{{" in tail:
        raise TemplateError("unclosed action")
    if trim_next:
        tail = tail.lstrip()
    if tail:
        actions.append(("text", tail))
    parts, rest = _block(actions, 0, 0)
    if rest < len(actions):
        raise TemplateError(f"unexpected {{{{{actions[rest][0]}}}}}")
    fields = set()
    for a in actions:
        if not isinstance(a[1], str):
            fields |= _fields_of(a[1])
    return Template(parts, frozenset(fields))


def _action(body: str) -> tuple[str, _Part | str]:
    if body.startswith("/*"):  # Go: only right after the delimiters
        if not body.endswith("*/"):
            raise TemplateError("unclosed comment")
        return ("comment", "")
    lex = _Lexer(body)
    first = lex.peek()
    keyword = first[1] if first is not None and first[0] == "ident" else ""
    if keyword in ("end", "else") and len(lex.tokens) == 1:
        return (keyword, "")
    if keyword == "else" and lex.tokens[1] == ("ident", "if"):
        lex.pos = 2
        kind = "elif"
    elif keyword == "if":
        lex.pos = 1
        kind = "if"
    else:
        kind = "part"
    if lex.peek() is None:
        raise TemplateError("missing value" if kind != "part" else "empty action")
    node = _pipeline(lex, 0)
    if lex.peek() is not None:
        raise TemplateError(f"unexpected {lex.peek()[1][:40]!r} in action")  # type: ignore[index]
    return (kind, node)


def _block(
    actions: list[tuple[str, _Part | str]], i: int, depth: int
) -> tuple[tuple[_Part, ...], int]:
    """Parts up to an else/elif/end (not consumed)."""
    if depth > MAX_DEPTH:
        raise TemplateError(f"nested deeper than {MAX_DEPTH} levels")
    parts: list[_Part] = []
    while i < len(actions):
        kind, value = actions[i]
        if kind in ("else", "elif", "end"):
            break
        i += 1
        if kind in ("text", "part"):
            parts.append(value)
        elif kind == "if":
            branches = []
            cond = value
            while True:
                body, i = _block(actions, i, depth + 1)
                branches.append((cond, body))
                if i >= len(actions):
                    raise TemplateError("unexpected EOF: if without end")
                kind, value = actions[i]
                i += 1
                if kind != "elif":
                    break
                cond = value
            otherwise: tuple[_Part, ...] = ()
            if kind == "else":
                otherwise, i = _block(actions, i, depth + 1)
                if i >= len(actions) or actions[i][0] != "end":
                    raise TemplateError("unexpected EOF: else without end")
                i += 1
            parts.append(_If(tuple(branches), otherwise))  # type: ignore[arg-type]
    return tuple(parts), i


def _fields_of(node: _Part | str) -> set[str]:
    if isinstance(node, _Field):
        return {node.path[0]}
    if isinstance(node, _Call):
        return set().union(*(_fields_of(a) for a in node.args))
    return set()


# ------------------------------------------------------------------- run


def _run(parts: tuple[_Part, ...], lookup: Callable[[str], Value], out: list[str]) -> None:
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, _If):
            for cond, body in part.branches:
                if _truth(_eval(cond, lookup)):
                    _run(body, lookup, out)
                    break
            else:
                _run(part.otherwise, lookup, out)
        else:
            value = _eval(part, lookup)
            out.append(NO_VALUE if value is MISSING else _sprint_one(value))


def _eval(node: _Node, lookup: Callable[[str], Value]) -> Value:
    if isinstance(node, _Lit):
        return node.value
    if isinstance(node, _Field):
        value = lookup(node.path[0])
        if len(node.path) == 2:
            assert isinstance(value, dict)
            return value.get(node.path[1], MISSING)
        return value
    args = [_eval(a, lookup) for a in node.args]
    if node.func in ("and", "or"):
        for a in args[:-1]:
            if _truth(a) == (node.func == "or"):
                return a
        return args[-1]
    # A missing value passed to a function is Go's nil interface.
    return _CALLS[node.func]([None if a is MISSING else a for a in args])


def _truth(value: Value) -> bool:
    if value is None or value is MISSING:
        return False
    if isinstance(value, GoTime):
        return True
    return bool(value)


def _type(value: Value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, str):
        return "string"
    if isinstance(value, tuple):
        return "[]string"
    if isinstance(value, dict):
        return "map[string]string"
    return "time.Time"


def _sprint_one(value: Value) -> str:
    """fmt's %v."""
    if value is None or value is MISSING:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + " ".join(value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{value[k]}" for k in sorted(value)) + "]"
    return str(value)


def _print(args: list[Value]) -> str:
    # fmt.Sprint: a space between two operands when neither is a string.
    out = []
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(_sprint_one(a))
    return "".join(out)


def _rune(value: int) -> str:
    """Go's rune for %c and %q: U+FFFD for no Unicode scalar value (a
    surrogate too, which no label could encode)."""
    valid = 0 <= value <= 0x10FFFF and not 0xD800 <= value <= 0xDFFF
    return chr(value) if valid else "\ufffd"


def _go_quote(text: str, quote: str = '"') -> str:
    out = [quote]
    for c in text:
        if c == quote or c == "\\":
            out.append("\\" + c)
        elif c in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(c)])
        elif c.isprintable():
            out.append(c)
        elif ord(c) < 0x80:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) < 0x10000:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return "".join(out) + quote


def _pad(text: str, flags: str, width: str, zero_ok: bool = False) -> str:
    if not width or len(text) >= int(width):
        return text
    n = int(width) - len(text)
    if "-" in flags:
        return text + " " * n
    if "0" in flags and zero_ok:
        sign = text[0] if text[:1] in "+-" else ""
        return sign + "0" * n + text[len(sign) :]
    return " " * n + text


def _int_verb(value: int, flags: str, verb: str) -> str:
    base = {"d": "d", "v": "d", "x": "x", "X": "X", "o": "o", "b": "b"}[verb]
    digits = format(abs(value), base)
    if "#" in flags and verb in "xX":
        digits = "0" + verb + digits
    sign = "-" if value < 0 else ("+" if "+" in flags else (" " if " " in flags else ""))
    return sign + digits


def _format_one(value: Value, flags: str, width: str, prec: str | None, verb: str) -> str:
    if value is None:
        return "<nil>" if verb == "v" else f"%!{verb}(<nil>)"
    if isinstance(value, tuple):
        return "[" + " ".join(_format_one(v, flags, width, prec, verb) for v in value) + "]"
    if isinstance(value, dict) and verb != "v":
        spec = (flags, width, prec, verb)
        items = " ".join(
            f"{_format_one(k, *spec)}:{_format_one(value[k], *spec)}" for k in sorted(value)
        )
        return f"map[{items}]"
    if isinstance(value, bool):
        if verb in "vt":
            return _pad(_sprint_one(value), flags, width)
    elif isinstance(value, int):
        if verb in "dvxXob":
            return _pad(_int_verb(value, flags, verb), flags, width, zero_ok=prec is None)
        if verb == "c":
            return _pad(_rune(value), flags, width)
        if verb == "q":
            return _pad(_go_quote(_rune(value), "'"), flags, width)
    elif isinstance(value, (str, GoTime)) and verb in "vsqxX":
        text = str(value)
        if prec is not None:
            text = text[: int(prec or 0)]
        if verb == "q":
            text = _go_quote(text)
        elif verb in "xX":
            text = text.encode("utf-8", "surrogateescape").hex()
            text = text.upper() if verb == "X" else text
        return _pad(text, flags, width)
    elif isinstance(value, dict):
        return _pad(_sprint_one(value), flags, width)
    return f"%!{verb}({_type(value)}={_sprint_one(value)})"


def _printf(args: list[Value]) -> str:
    fmt, rest = str(args[0]), list(args[1:])
    out, pos, used = [], 0, 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        flags, width, prec, verb = m.groups()
        if m.group(0) == "%%":
            out.append("%")
            continue
        if used >= len(rest):
            out.append(f"%!{verb}(MISSING)")
            continue
        out.append(_format_one(rest[used], flags, width, prec, verb or "v"))
        used += 1
    out.append(fmt[pos:])
    if used < len(rest):
        extra = ", ".join(
            "<nil>" if a is None else f"{_type(a)}={_sprint_one(a)}" for a in rest[used:]
        )
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _len(args: list[Value]) -> int:
    (value,) = args
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogateescape"))  # Go counts bytes
    if isinstance(value, (tuple, dict)):
        return len(value)
    raise _ExecError(f"len of type {_type(value)}")


def _index(args: list[Value]) -> Value:
    item = args[0]
    for key in args[1:]:
        if isinstance(item, dict) and isinstance(key, str):
            item = item.get(key, "")  # the zero value, unlike a .Matches.KEY field
        elif isinstance(item, (tuple, str)) and isinstance(key, int) and not isinstance(key, bool):
            seq = item.encode("utf-8", "surrogateescape") if isinstance(item, str) else item
            if not 0 <= key < len(seq):
                raise _ExecError(f"index out of range: {key}")
            item = seq[key]
        else:
            raise _ExecError("cannot index")
    return item


def _slice(args: list[Value]) -> Value:
    item, bounds = args[0], args[1:]
    if not isinstance(item, (str, tuple)) or not all(
        isinstance(b, int) and not isinstance(b, bool) for b in bounds
    ):
        raise _ExecError("cannot slice")
    seq = item.encode("utf-8", "surrogateescape") if isinstance(item, str) else item
    ints = [int(b) for b in bounds if isinstance(b, int)]
    lo = ints[0] if ints else 0
    hi = ints[1] if len(ints) > 1 else len(seq)
    if len(ints) > 2 or not 0 <= lo <= hi <= len(seq):
        raise _ExecError("slice index out of range")
    part = seq[lo:hi]
    return part.decode("utf-8", "replace") if isinstance(part, bytes) else part


def _comparable(a: Value, b: Value) -> None:
    basic = (str, int, bool)
    if not (isinstance(a, basic) and isinstance(b, basic)) or (
        isinstance(a, bool) != isinstance(b, bool) or isinstance(a, str) != isinstance(b, str)
    ):
        raise _ExecError("incompatible types for comparison")


def _eq(args: list[Value]) -> bool:
    first = args[0]
    if first is None:
        return False
    for other in args[1:]:
        if other is None:
            continue
        _comparable(first, other)
        if first == other:
            return True
    return False


def _ordered(op: Callable[[int, int], bool]) -> Callable[[list[Value]], bool]:
    def compare(args: list[Value]) -> bool:
        a, b = args
        _comparable(a, b)
        if isinstance(a, bool):
            raise _ExecError("invalid type for comparison")
        return op((a > b) - (a < b), 0)  # type: ignore[operator]

    return compare


_CALLS: Mapping[str, Callable[[list[Value]], Value]] = {
    "printf": _printf,
    "print": _print,
    "len": _len,
    "index": _index,
    "slice": _slice,
    "eq": _eq,
    "ne": lambda args: not _eq(args),
    "lt": _ordered(lambda c, z: c < z),
    "le": _ordered(lambda c, z: c <= z),
    "gt": _ordered(lambda c, z: c > z),
    "ge": _ordered(lambda c, z: c >= z),
    "not": lambda args: not _truth(args[0]),
}
