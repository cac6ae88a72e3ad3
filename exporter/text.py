"""How values are shown to people: a user's value in a one-line message, a
size in a table. Shared by the config loaders, the php-fpm client and the CLI
views, so none of them imports another for it."""

from __future__ import annotations

from typing import Any

EXCERPT = 40  # characters of a user's value a message shows at most
_KINDS: dict[type, str] = {
    list: "a list",
    dict: "a mapping",
    set: "a set",
}  # what YAML collections become


def one_line(text: str) -> str:
    """text with newlines and other unprintable characters escaped, as repr does."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def clip(text: str, limit: int = EXCERPT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def excerpt(value: Any) -> str:
    """A user's value as a message shows it: a scalar's repr cut to EXCERPT
    characters, only the kind of a collection. An alias lets a few bytes of
    YAML name a value of millions of nodes, so a value is never expanded into
    a message; nor is an integer printed that Python refuses to convert."""
    if type(value) in _KINDS:
        return _KINDS[type(value)]
    if isinstance(value, int) and value.bit_length() > 128:
        return "an integer of more than 38 digits"
    return clip(repr(value[: EXCERPT + 1] if isinstance(value, (str, bytes)) else value))


def human(n: float | None) -> str:
    """Bytes in binary units, three significant digits: 512 B, 1.5 KiB, 38.2 MiB."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
