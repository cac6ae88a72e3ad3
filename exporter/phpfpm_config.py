"""php-fpm's configuration: the pools a master runs and their settings.

From the config path in a master's title (`php-fpm: master process
(/etc/php/8.2/fpm/php-fpm.conf)`) this reads the main file, follows its
`include=` globs and returns, per pool, the settings that size it. Files are
read under a root, normally /proc/MASTER/root, so a pool inside a container is
read from the host; paths in results and messages are the in-root ones.

The format follows php-src sapi/fpm (fpm_conf.c), checked against php-fpm 8.2's
`-tt` dump:
- INI lines, `;` comments, `[global]` and `[pool]` sections. Section names
  match case-insensitively and a pool may appear in several places (several
  files): its settings merge, the last assignment wins, and the pool keeps the
  name it was first written with (its workers' titles use that name).
- Setting names match case-insensitively; `include`, `php_value[...]` and
  `php_admin_value[...]` are case-sensitive, as in php-fpm.
- `include=GLOB` may appear in any section. php-fpm keeps one "current
  section" across files: an included file without a header continues the
  including section, and lines after an include continue the last section
  the included files opened. Matches are read in name order, directories
  skipped, at most MAX_INCLUDE_DEPTH files nested (php-fpm's own limit).
- Values: unquoted (trimmed, up to `;`), "double-quoted" (escapes \\" \\\\ \\$)
  or 'single-quoted' (raw); adjacent pieces concatenate. Unquoted
  yes/on/true become "1", no/off/false/none/null "".
- `$pool` in a pool's values expands to the pool's name.
- A relative unix socket path in `listen` is relative to the pool's `prefix`,
  itself relative to php-fpm's prefix (see below).
- Integers as php-fpm reads them: an optional '-' and digits ("" counts 0),
  within 0..2**31-1 (php-fpm keeps them in a C int and refuses negative
  ones, beyond that atoi() wraps). For pm = dynamic without
  pm.start_servers, php-fpm's default min_spare + (max_spare - min_spare) / 2
  is applied.
- memory_limit at most 2**62 bytes (4 EiB): PHP keeps it in a signed 64-bit
  integer, and no larger value means anything.

Approximations, documented rather than guessed at:
- A relative include (or socket) path is relative to php-fpm's prefix (-p, or the
  compiled prefix), which a running master does not show. We use the main
  file's directory, or its parent when that directory is named `etc` (a
  `./configure --prefix=P` install keeps P/etc/php-fpm.conf, e.g. the official
  Docker image's /usr/local/etc/php-fpm.conf with include=etc/php-fpm.d/*.conf).
- `${VAR}` (environment) stays unexpanded: the master's environment is not
  reliably known. PHP constants and expressions (E_ALL & ~E_NOTICE) are kept
  as text; no setting read here uses them.
- memory_limit: php_admin_value[memory_limit], else php_value[memory_limit],
  else the php.ini chain: the first of <conf dir> and <conf dir>/php holding a
  php.ini or a conf.d/ or php.d/ scan directory (Debian, Alpine, Docker,
  RHEL layouts); php.ini first, then the scan directory's *.ini in name order,
  the last memory_limit wins; [PATH=...] and [HOST=...] sections are ignored;
  malformed lines there are skipped (php.ini allows multi-line strings).
  Nothing found: PHP's built-in 128M. A master started with -c, -d or
  PHP_INI_SCAN_DIR is not visible and not followed.
- Symlinks are resolved inside the root (an absolute link in a container
  points into the container), include patterns' directories too.
- php-fpm's validation (listen set, spare servers in range, ...) is not
  repeated: unknown settings are ignored. Bad numbers, a bad `pm`, malformed
  lines, unreadable files and include loops raise FpmConfigError.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import itertools
import os
import posixpath
import re
import stat
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from .fileio import read_regular
from .text import excerpt

MAX_INCLUDE_DEPTH = 5  # files nested, the main one included: php-fpm's limit
MAX_FILES = 10_000  # per load: a shared host may run thousands of pools
MAX_FILE_BYTES = 1 << 20
# All files of one load, in characters (what parsing costs; a byte at least
# each): about 1 KiB per pool, thousands of pools.
MAX_LOAD_CHARS = 16 << 20
MAX_GLOB_ENTRIES = 100_000  # directory entries the include patterns of one load look at
MAX_SYMLINKS = 40  # as the kernel's path walk
MAX_FPM_INT = 2**31 - 1  # php-fpm's settings are C ints
MAX_MEMORY_LIMIT = 2**62
DEFAULT_MEMORY_LIMIT = 128 << 20  # PHP's built-in memory_limit
PM_STYLES = ("static", "dynamic", "ondemand")


class FpmConfigError(Exception):
    """A php-fpm config that cannot be read or parsed; str() is one line
    naming the (in-root) file, the line when known, and the reason."""

    def __init__(self, path: str, reason: str, lineno: int | None = None) -> None:
        self.path, self.reason, self.lineno = path, reason, lineno
        where = f"{path}:{lineno}" if lineno is not None else path
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class PoolSettings:
    """One pool's settings; None where the configuration does not set them."""

    name: str
    pm: str | None  # static, dynamic or ondemand
    max_children: int | None
    start_servers: int | None
    min_spare_servers: int | None
    max_spare_servers: int | None
    max_requests: int  # 0: workers are never respawned
    listen: str | None  # host:port, port, or an absolute socket path
    status_path: str | None
    memory_limit: int | None  # bytes; None when unlimited (-1)
    status_listen: str | None = None  # pm.status_listen (PHP >= 8.0): status socket


# --------------------------------------------------------------- INI syntax


class IniEntry(NamedTuple):
    """One meaningful line. A `[section]` header has key None; a setting has
    the section it sits under in its own file (None before the first header)
    and, for `name[offset] = value`, key 'name[offset]'."""

    section: str | None
    key: str | None
    value: str
    lineno: int


_SECTION_RE = re.compile(r"\[([^\]]*)\]\s*(?:;.*)?")
# Characters the Zend INI scanner's LABEL (a key) cannot hold.
_NOT_KEY = frozenset('=\t;&|^$~(){}!"[]')
_TRUE = {"1", "true", "on", "yes"}
_FALSE = {"false", "off", "no", "none", "null"}
_ESCAPABLE = '"\\$'


def parse_ini(text: str, source: str, *, strict: bool = True) -> list[IniEntry]:
    """Parse INI text into entries. A malformed line raises FpmConfigError
    (naming source and line) when strict, and is skipped otherwise."""
    entries: list[IniEntry] = []
    section: str | None = None
    # Lines end as php's INI scanner ends them: \n, \r\n or \r, never at the
    # other characters str.splitlines() splits on ('\x85', '\u2028', ...), or a
    # tenant's file would hold lines php-fpm does not see.
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith(";"):
            continue
        try:
            if line.startswith("["):
                m = _SECTION_RE.fullmatch(line)
                if not m or not m.group(1).strip():
                    raise ValueError("malformed section header")
                section = m.group(1).strip()
                entries.append(IniEntry(section, None, "", lineno))
                continue
            key, offset, raw_value = split_setting(line)
            value = parse_value(raw_value)
            if offset is not None:
                key = f"{key}[{offset.lstrip()}]"  # php keeps trailing blanks
            entries.append(IniEntry(section, key, value, lineno))
        except ValueError as exc:
            if strict:
                raise FpmConfigError(source, str(exc), lineno) from None
    return entries


def split_setting(line: str) -> tuple[str, str | None, str]:
    """'key = value' or 'name[offset] = value' (a stripped line) into key,
    offset (None without one) and the raw value; ValueError otherwise.
    Splits, not a regex: a regex's backtracking over a long line without
    '=' took minutes, and the line is a tenant's."""
    equals, bracket = line.find("="), line.find("[")
    if equals < 0:
        raise ValueError("malformed line, expected 'key = value'")
    offset = None
    if 0 <= bracket < equals:  # name[offset] = value: the offset may hold '='
        close = line.find("]", bracket)
        after = line[close + 1 :].lstrip() if close >= 0 else ""
        if not after.startswith("="):
            raise ValueError("malformed line, expected 'key = value'")
        key, offset, value = line[:bracket], line[bracket + 1 : close], after[1:]
    else:
        key, value = line[:equals], line[equals + 1 :]
    key = key.rstrip()
    if not key or not _NOT_KEY.isdisjoint(key):
        raise ValueError("malformed line, expected 'key = value'")
    return key, offset, value


def parse_value(raw: str) -> str:
    """The value of `key = RAW`: comments dropped, quotes resolved, pieces
    concatenated, unquoted booleans mapped to "1"/"". Raises ValueError on an
    unterminated quote."""
    pieces: list[str] = []
    run: list[str] = []  # the current unquoted run
    quoted = False
    i, n = 0, len(raw)

    def end_run() -> None:
        text = "".join(run).strip()
        if text:
            pieces.append(text)
        run.clear()

    while i < n:
        c = raw[i]
        if c == ";":
            break
        if c == '"':
            end_run()
            quoted = True
            chars, i = [], i + 1
            while i < n and raw[i] != '"':
                if raw[i] == "\\" and i + 1 < n and raw[i + 1] in _ESCAPABLE:
                    i += 1
                chars.append(raw[i])
                i += 1
            if i >= n:
                raise ValueError("unterminated double-quoted value")
            pieces.append("".join(chars))
        elif c == "'":
            close = raw.find("'", i + 1)
            if close < 0:  # php drops the rest of the line, unless it is all of it
                if not pieces and not "".join(run).strip():
                    raise ValueError("unterminated single-quoted value")
                break
            end_run()
            quoted = True
            pieces.append(raw[i + 1 : close])
            i = close
        else:
            run.append(c)
        i += 1
    end_run()
    value = "".join(pieces)
    if not quoted and value.lower() in _TRUE:
        return "1"
    if not quoted and value.lower() in _FALSE:
        return ""
    return value


_SIZE_RE = re.compile(r"([+-]?[0-9]+)\s*([kKmMgG]?)")
_SIZE_FACTORS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_MAX_DIGITS = 20  # more than any value in range has: int() is never given hundreds


def parse_php_size(text: str) -> int | None:
    """PHP's shorthand byte size (memory_limit): bytes, or a K/M/G suffix
    (either case), at most MAX_MEMORY_LIMIT. -1 means unlimited: None.
    Raises ValueError otherwise."""
    m = _SIZE_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"{excerpt(text)} is not a size (bytes, or with a K, M or G suffix)")
    digits, unit = m.group(1), m.group(2).lower()
    if len(digits.lstrip("+-").lstrip("0")) > _MAX_DIGITS:
        raise ValueError(f"{excerpt(text)} is out of range (at most 2**62 bytes)")
    number = int(digits)
    if number == -1:
        return None
    if number < 0:
        raise ValueError(f"{excerpt(text)} is negative (only -1, unlimited, is allowed)")
    size = number * _SIZE_FACTORS[unit]
    if size > MAX_MEMORY_LIMIT:
        raise ValueError(f"{excerpt(text)} is out of range (at most 2**62 bytes)")
    return size


def parse_fpm_int(text: str) -> int:
    """An integer setting as php-fpm reads it: optional '-', digits; "" is 0
    (atoi); within 0..MAX_FPM_INT. Raises ValueError otherwise."""
    digits = text.removeprefix("-")
    if digits and not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"{excerpt(text)} is not an integer")
    value = None
    if len(digits.lstrip("0")) <= _MAX_DIGITS:
        value = int(text) if digits else 0
    if value is None or not 0 <= value <= MAX_FPM_INT:
        raise ValueError(f"{excerpt(text)} is out of range (0 to {MAX_FPM_INT})")
    return value


# ------------------------------------------------------------ file access


class ConfigFiles(Protocol):
    """Reads files by in-root absolute path; raises OSError."""

    def read_text(self, path: str) -> str: ...

    def glob(self, pattern: str) -> list[str]:
        """Files (not directories) matching pattern, sorted; OSError when a
        directory cannot be read."""
        ...


_MAGIC_RE = re.compile(r"[*?\[]")


class Reader(NamedTuple):
    """The user a master not running as root reads its config as: the root
    exporter reads only what that user could (its include of /etc/shadow or
    /proc/kmsg, a file it cannot read, is an error, not read)."""

    uid: int
    gids: frozenset[int]  # its effective and supplementary groups

    def may_read(self, st: os.stat_result) -> bool:
        """The kernel's permission check by mode bits (ACLs aside)."""
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IRUSR)
        if st.st_gid in self.gids:
            return bool(st.st_mode & stat.S_IRGRP)
        return bool(st.st_mode & stat.S_IROTH)


class RootedFiles:
    """Files under a root directory such as /proc/PID/root ("" or "/": the
    host's own). Symlinks are resolved inside the root. With a reader, only
    files and directories it may read are read."""

    def __init__(self, root: str = "", reader: Reader | None = None) -> None:
        self.root = root.rstrip("/")
        self.reader = reader
        self.entries = 0  # directory entries glob() looked at: bounded per load

    def resolve(self, path: str) -> str:
        """Host path of an absolute in-root path, following symlinks as the
        root's owner would see them. Missing components are left as they are
        (opening the result fails then)."""
        if not self.root:
            return path
        pending = [p for p in path.split("/") if p]
        done: list[str] = []
        links = 0
        while pending:
            part = pending.pop(0)
            if part == ".":
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            try:
                target = os.readlink("/".join([self.root, *done, part]))
            except OSError:  # not a link, or missing
                done.append(part)
                continue
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            if target.startswith("/"):
                done = []
            pending[:0] = [p for p in target.split("/") if p]
        return "/".join([self.root, *done])

    def read_text(self, path: str) -> str:
        # resolve() followed the links inside the root already: a link swapped
        # in after it is not followed.
        host, nofollow = self.resolve(path), bool(self.root)
        if self.reader is None:
            data = read_regular(host, MAX_FILE_BYTES, nofollow=nofollow)
        else:  # checked and read through one O_PATH descriptor: nothing swapped between
            fd = os.open(host, os.O_PATH | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0))
            try:
                self._check(os.fstat(fd), path)
                data = read_regular(f"/proc/self/fd/{fd}", MAX_FILE_BYTES)
            finally:
                os.close(fd)
        return data.decode("utf-8", "surrogateescape")

    def _check(self, st: os.stat_result, path: str) -> None:
        if stat.S_ISLNK(st.st_mode):
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        if self.reader is not None and not self.reader.may_read(st):
            raise OSError(errno.EACCES, "not readable by the master's user", path)

    def glob(self, pattern: str) -> list[str]:
        """Matched one component at a time, each directory resolved inside
        the root (a link in a container's tree must not lead the walk
        through the host's). All globs of one RootedFiles (one load) look at
        MAX_GLOB_ENTRIES directory entries at most, OSError beyond: an
        include of `/*/*/*/*/*.conf` would list all of /proc."""
        paths = [""]
        for part in (p for p in pattern.split("/") if p):
            if not _MAGIC_RE.search(part):
                paths = [f"{path}/{part}" for path in paths]
                continue
            matched = []
            for path in paths:
                directory = self.resolve(path or "/")
                try:  # an unreadable directory must not look empty
                    if self.reader is not None:
                        self._check(os.stat(directory), path or "/")
                    with os.scandir(directory) as entries:
                        left = MAX_GLOB_ENTRIES - self.entries + 1
                        names = [e.name for e in itertools.islice(entries, left)]
                except (FileNotFoundError, NotADirectoryError):
                    continue
                self.entries += len(names)
                if self.entries > MAX_GLOB_ENTRIES:
                    reason = f"more than {MAX_GLOB_ENTRIES} directory entries listed"
                    raise OSError(errno.E2BIG, reason)
                hidden = part.startswith(".")  # as glob(3): '*' matches no leading dot
                matched += [
                    f"{path}/{name}"
                    for name in names
                    if (hidden or not name.startswith(".")) and fnmatch.fnmatchcase(name, part)
                ]
            paths = matched
        return sorted(path for path in paths if self._is_file(path or "/"))

    def _is_file(self, path: str) -> bool:
        """Whether path exists and is no directory (a FIFO is refused when read)."""
        try:
            return not stat.S_ISDIR(os.stat(self.resolve(path)).st_mode)
        except (OSError, ValueError):
            return False


class _Budget:
    """ConfigFiles reading at most MAX_LOAD_CHARS in all: includes may name
    one file again and again (10,000 times a 1 MiB file is 10 GiB a load)."""

    def __init__(self, files: ConfigFiles) -> None:
        self.files, self.left = files, MAX_LOAD_CHARS

    def read_text(self, path: str) -> str:
        text = self.files.read_text(path)
        self.left -= len(text)
        if self.left < 0:
            raise OSError(
                errno.EFBIG, f"configuration longer than {MAX_LOAD_CHARS} characters in all"
            )
        return text

    def glob(self, pattern: str) -> list[str]:
        return self.files.glob(pattern)


def _read(files: ConfigFiles, path: str) -> str:
    try:
        return files.read_text(path)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise FpmConfigError(
            path, f"cannot read: {getattr(exc, 'strerror', None) or exc}"
        ) from None


# ---------------------------------------------------------------- loading


class _Value(NamedTuple):
    text: str
    path: str
    lineno: int


@dataclass
class _Pool:
    name: str
    values: dict[str, _Value] = field(default_factory=dict)


@dataclass
class _Walk:
    files: ConfigFiles
    base: str  # directory relative include paths are resolved against
    pools: dict[str, _Pool] = field(default_factory=dict)  # lowercased name ->
    section: _Pool | None = None  # None: [global]
    count: int = 0


def include_base(main_path: str) -> str:
    """Where relative include paths point: see the module docstring."""
    directory = posixpath.dirname(main_path)
    return posixpath.dirname(directory) if posixpath.basename(directory) == "etc" else directory


def _setting_key(key: str) -> str | None:
    """The key a pool setting is stored under, None for ones not kept."""
    name, bracket, _ = key.partition("[")
    if bracket:
        return key if name in ("php_value", "php_admin_value") else None
    return key.lower()


def _walk_file(walk: _Walk, path: str, stack: tuple[str, ...]) -> None:
    walk.count += 1
    if walk.count > MAX_FILES:
        raise FpmConfigError(path, f"more than {MAX_FILES} files in the configuration")
    stack = (*stack, path)
    for entry in parse_ini(_read(walk.files, path), path):
        if entry.key is None:
            _enter_section(walk, entry.section or "")
        elif entry.key == "include":
            for included in _included(walk, entry, stack):
                _walk_file(walk, included, stack)
        elif walk.section is not None:
            key = _setting_key(entry.key)
            if key is not None:
                value = entry.value.replace("$pool", walk.section.name)
                walk.section.values[key] = _Value(value, path, entry.lineno)


def _included(walk: _Walk, entry: IniEntry, stack: tuple[str, ...]) -> list[str]:
    """The files an include line names, checked for loops and depth."""
    pattern = posixpath.normpath(posixpath.join(walk.base, entry.value))
    matches = _glob(walk.files, pattern, stack[-1], entry.lineno, f"include {pattern}")
    for path in matches:
        if path in stack:
            chain = " -> ".join([*stack[stack.index(path) :], path])
            raise FpmConfigError(stack[-1], f"include loop: {chain}", entry.lineno)
    if matches and len(stack) >= MAX_INCLUDE_DEPTH:
        reason = f"includes nested more than {MAX_INCLUDE_DEPTH} files deep"
        raise FpmConfigError(stack[-1], reason, entry.lineno)
    return matches


def _enter_section(walk: _Walk, name: str) -> None:
    if name.lower() == "global":
        walk.section = None
        return
    walk.section = walk.pools.setdefault(name.lower(), _Pool(name))


def _int(pool: _Pool, key: str) -> int | None:
    value = pool.values.get(key)
    if value is None:
        return None
    try:
        return parse_fpm_int(value.text)
    except ValueError as exc:
        raise FpmConfigError(value.path, f"bad value for {key}: {exc}", value.lineno) from None


def _text(pool: _Pool, key: str) -> str | None:
    value = pool.values.get(key)
    return value.text if value is not None and value.text else None


def _pm(pool: _Pool) -> str | None:
    value = pool.values.get("pm")
    if value is None:
        return None
    pm = value.text.lower()
    if pm not in PM_STYLES:
        reason = f"bad value for pm: {excerpt(value.text)} is not one of {', '.join(PM_STYLES)}"
        raise FpmConfigError(value.path, reason, value.lineno)
    return pm


def _size(value: _Value, what: str) -> int | None:
    try:
        return parse_php_size(value.text)
    except ValueError as exc:
        raise FpmConfigError(value.path, f"bad value for {what}: {exc}", value.lineno) from None


def _glob(
    files: ConfigFiles, pattern: str, source: str, lineno: int | None, what: str
) -> list[str]:
    """files.glob(pattern), its failure an FpmConfigError of source."""
    try:
        return files.glob(pattern)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the pattern
        reason = f"{what}: {getattr(exc, 'strerror', None) or exc}"
        raise FpmConfigError(source, reason, lineno) from None


def php_ini_files(main_path: str, files: ConfigFiles) -> list[str]:
    """The php.ini chain a master beside main_path uses: see the docstring.
    Raises FpmConfigError."""
    directory = posixpath.dirname(main_path)
    for candidate in (directory, posixpath.join(directory, "php")):
        d = glob.escape(candidate)
        found = []
        for pattern in (f"{d}/php.ini", f"{d}/conf.d/*.ini", f"{d}/php.d/*.ini"):
            found += _glob(files, pattern, main_path, None, f"php.ini chain {pattern}")
        if found:
            return found
    return []


def ini_memory_limit(main_path: str, files: ConfigFiles) -> int | None:
    """memory_limit from the php.ini chain, PHP's default when none sets it."""
    last: _Value | None = None
    for path in php_ini_files(main_path, files):
        for entry in parse_ini(_read(files, path), path, strict=False):
            section = (entry.section or "").upper()
            if entry.key == "memory_limit" and not section.startswith(("PATH=", "HOST=")):
                last = _Value(entry.value, path, entry.lineno)
    return DEFAULT_MEMORY_LIMIT if last is None else _size(last, "memory_limit")


def _listen(pool: _Pool, key: str, base: str) -> str | None:
    """A listen address; a relative socket path is made absolute against the
    pool's prefix, else php-fpm's (guessed) prefix, as php-fpm does."""
    address = _text(pool, key)
    if address is None or address.startswith("/") or ":" in address or address.isdigit():
        return address  # absolute socket path, host:port, or port
    prefix = posixpath.join(base, _text(pool, "prefix") or "")
    return posixpath.join(prefix, address)


def _settings(pool: _Pool, ini_limit: int | None, base: str) -> PoolSettings:
    pm = _pm(pool)
    start, low, high = (
        _int(pool, k) for k in ("pm.start_servers", "pm.min_spare_servers", "pm.max_spare_servers")
    )
    if pm == "dynamic" and (start is None or start <= 0) and low is not None and high is not None:
        start = low + (high - low) // 2  # php-fpm's default (fpm_conf.c)
    limit = pool.values.get("php_admin_value[memory_limit]") or pool.values.get(
        "php_value[memory_limit]"
    )
    return PoolSettings(
        name=pool.name,
        pm=pm,
        max_children=_int(pool, "pm.max_children"),
        start_servers=start,
        min_spare_servers=low,
        max_spare_servers=high,
        max_requests=_int(pool, "pm.max_requests") or 0,
        listen=_listen(pool, "listen", base),
        status_path=_text(pool, "pm.status_path"),
        memory_limit=ini_limit if limit is None else _size(limit, "memory_limit"),
        status_listen=_listen(pool, "pm.status_listen", base),
    )


def read_fpm_config(main_path: str, files: ConfigFiles) -> dict[str, PoolSettings]:
    """Pools of the php-fpm config at main_path (an absolute path as the
    master sees it), read through files: {pool name: settings}, in the order
    php-fpm defines them. Raises FpmConfigError."""
    if not main_path.startswith("/"):
        raise FpmConfigError(main_path, "not an absolute path")
    files = _Budget(files)
    walk = _Walk(files, include_base(main_path))
    _walk_file(walk, main_path, ())
    limits = ("php_admin_value[memory_limit]", "php_value[memory_limit]")
    needs_ini = any(all(k not in p.values for k in limits) for p in walk.pools.values())
    ini_limit = ini_memory_limit(main_path, files) if needs_ini else DEFAULT_MEMORY_LIMIT
    return {p.name: _settings(p, ini_limit, walk.base) for p in walk.pools.values()}


def load_fpm_config(
    main_path: str, root: str = "", reader: Reader | None = None
) -> dict[str, PoolSettings]:
    """read_fpm_config with files under root (e.g. /proc/PID/root; "" for the
    host's own): include globs and symlinks resolve inside it, and paths in
    results and errors are the in-root ones; only what reader may read is
    read (None: anything, as a master running as root). Raises FpmConfigError."""
    return read_fpm_config(main_path, RootedFiles(root, reader))
