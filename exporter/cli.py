"""Command line: serve (default), once, check-config."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, NoReturn, TypeVar, overload

from . import __version__, explain, privileges, top
from .collector import Collector
from .config import Config, ConfigError, load_config
from .grouping import template_fields
from .kmsg import KmsgWatcher
from .loop import CollectionLoop
from .metrics import TEXT, render
from .web import make_server, parse_listen_address
from .webconfig import WebConfigError, WebConfigWatcher, load_web_config

log = logging.getLogger("pss-exporter")
_N = TypeVar("_N")

_COLLECTING = ("config", "procfs", "sysfs", "log_level", "children")
# The flags (by dest) each command takes; any other flag it is given is a usage
# error rather than silently ignored. check-config takes serve's, to check them.
COMMAND_FLAGS: dict[str, tuple[str, ...]] = {
    "serve": (*_COLLECTING, "listen", "web_config"),
    "once": _COLLECTING,
    "check-config": (*_COLLECTING, "listen", "web_config"),
    "top": (*_COLLECTING, "once"),
    "explain": (*_COLLECTING, "json", "pool"),
}
COMMANDS = tuple(COMMAND_FLAGS)
_UNSET = object()  # what a flag holds after parsing when it was not given


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    # ArgumentParser's overloads: the namespace given (if any) is the one returned.
    @overload
    def parse_known_args(
        self, args: Iterable[str] | None = None, namespace: None = None
    ) -> tuple[argparse.Namespace, list[str]]: ...
    @overload
    def parse_known_args(
        self, args: Iterable[str] | None, namespace: _N
    ) -> tuple[_N, list[str]]: ...
    @overload
    def parse_known_args(self, *, namespace: _N) -> tuple[_N, list[str]]: ...

    def parse_known_args(
        self, args: Iterable[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        """Parse, then refuse the flags that were given but the command does
        not take, and give the others their defaults."""
        flags = [a for a in self._actions if a.option_strings and a.default != argparse.SUPPRESS]
        namespace = argparse.Namespace() if namespace is None else namespace
        for action in flags:  # argparse leaves a present attribute alone
            vars(namespace).setdefault(action.dest, _UNSET)
        parsed, rest = super().parse_known_args(args, namespace)
        for action in flags:
            if getattr(parsed, action.dest) is _UNSET:
                setattr(parsed, action.dest, action.default)
            elif action.dest not in COMMAND_FLAGS[parsed.command]:
                self.error(f"{parsed.command} does not take {action.option_strings[0]}")
        return parsed, rest


_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _go_bool(text: str) -> bool:
    """A boolean flag's value as Go's flag package reads it (strconv.ParseBool)."""
    if text in _GO_TRUE + _GO_FALSE:
        return text in _GO_TRUE
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r} (use true or false)")


def go_bool_flags(argv: list[str]) -> list[str]:
    """Go's boolean flags take no separate value: '-children' alone is true,
    '-children=false' false. Spelled so argparse reads exactly that."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name in ("-children", "--children"):
            arg = f"--children={value if eq else 'true'}"
        out.append(arg)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="pss-exporter",
        description="Prometheus exporter for per-group PSS/USS/RSS memory.",
    )
    p.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=COMMANDS,
        help="serve: run the collection loop and HTTP server (default); "
        "once: collect once and print the exposition; "
        "check-config: validate the config and exit; "
        "top: show the groups as a table, refreshed every interval; "
        "explain: where the used memory went, component by component (--pool NAME: "
        "how a php-fpm pool's capacity is derived)",
    )
    # process-exporter's spellings (Go flags: one dash or two) where they mean
    # the same as ours, so its unit file works with only the binary renamed.
    p.add_argument(
        "--config",
        "-config.path",
        "--config.path",
        dest="config",
        metavar="FILE",
        help="YAML config file",
    )
    p.add_argument(
        "--children",
        dest="children",
        type=_go_bool,
        metavar="BOOL",
        help="a process no rule matches joins its parent's group "
        "(default: the config's children, true); -children alone means true",
    )
    p.add_argument(
        "--web.listen-address",
        "-web.listen-address",
        dest="listen",
        default=":9778",
        metavar="ADDR",
        help="address to serve /metrics on (default :9778)",
    )
    p.add_argument(
        "--web.config.file",
        "-web.config.file",
        dest="web_config",
        metavar="FILE",
        help="exporter-toolkit web config: TLS, basic auth, headers (re-read on change)",
    )
    p.add_argument(
        "--path.procfs", "-procfs", "--procfs", dest="procfs", default="/proc", metavar="DIR"
    )
    p.add_argument("--path.sysfs", dest="sysfs", default="/sys", metavar="DIR")
    p.add_argument(
        "--log.level",
        dest="log_level",
        default="info",
        choices=("debug", "info", "warn", "error"),
    )
    p.add_argument("--once", action="store_true", help="top only: print one table and exit")
    p.add_argument("--json", action="store_true", help="explain only: print JSON")
    p.add_argument(
        "--pool",
        metavar="NAME",
        help="explain only: how the capacity of php-fpm pool NAME (or group php-fpm:NAME) "
        "is derived, figure by figure",
    )
    p.add_argument("--version", action="version", version=f"pss-exporter {__version__}")
    option = {a.dest: a.option_strings[0] for a in p._actions if a.option_strings}
    p.epilog = "flags by command: " + "; ".join(
        f"{command}: {' '.join(option[dest] for dest in dests)}"
        for command, dests in COMMAND_FLAGS.items()
    )
    return p


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level={"warn": logging.WARNING}.get(level, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _warn_cardinality(config: Config) -> None:
    for i, rule in enumerate(config.process_names):
        risky = template_fields(rule) & {"PID", "StartTime"}
        if risky:
            log.warning(
                "%s: process_names[%d].name uses %s: one group per process; "
                "max_groups (%d) bounds the series",
                config.source,
                i,
                ", ".join("." + f for f in sorted(risky)),
                config.max_groups,
            )


def _check_procfs(procfs: str) -> None:
    if not os.path.isfile(os.path.join(procfs, "meminfo")):
        raise UsageError(f"--path.procfs: {procfs!r} is not a procfs (no meminfo)")


def _check_sysfs(sysfs: str) -> None:
    if not os.path.isdir(sysfs):
        raise UsageError(f"--path.sysfs: {sysfs!r} is not a directory")


def _check_listen(listen: str) -> None:
    try:
        parse_listen_address(listen)
    except ValueError as exc:
        raise UsageError(f"--web.listen-address: {exc}") from None


def _collector(
    args: argparse.Namespace, config: Config, kmsg: KmsgWatcher | None = None
) -> Collector:
    return Collector(config, args.procfs, sysfs=args.sysfs, kmsg=kmsg)


def _unbounded(config: Config) -> Config:
    """One complete collection: no time budget to defer reads to a next cycle."""
    return replace(config, collection=replace(config.collection, budget=math.inf))


def _serve(args: argparse.Namespace, config: Config) -> int:
    web = WebConfigWatcher(args.web_config)  # raises WebConfigError: nothing started yet
    kmsg = KmsgWatcher() if config.kmsg.enabled else None
    loop = CollectionLoop(_collector(args, config, kmsg), config.collection.interval)
    try:
        server = make_server(args.listen, loop, web)
    except (ValueError, OSError) as exc:
        loop.stop()  # never started: closes the collector
        if isinstance(exc, ValueError):
            raise UsageError(f"--web.listen-address: {exc}") from None
        raise UsageError(
            f"--web.listen-address: cannot listen on {args.listen}: {exc.strerror}"
        ) from None
    # Warnings only once the flags are known good: a usage error stays one line.
    reason = privileges.partial_reason(privileges.held())
    if reason:
        log.warning("%s", reason)
    if kmsg is not None:
        kmsg.start()  # logs one line and reports source_up 0 when not permitted

    def _shutdown(signum: int, _frame: object) -> None:
        log.info("received signal %d, shutting down", signum)
        # shutdown() waits for serve_forever(), which runs in this thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    # The collection thread is CPU-bound Python: let a scrape's thread take
    # the GIL within 1 ms instead of the default 5 ms.
    sys.setswitchinterval(0.001)
    loop.start()
    log.info(
        "pss-exporter %s listening on %s (procfs %s, interval %gs)",
        __version__,
        args.listen,
        args.procfs,
        config.collection.interval,
    )
    server.serve_forever()
    loop.stop()  # and closes the collector: the kernel-log reader, the thread pools
    server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(go_bool_flags(sys.argv[1:] if argv is None else argv))
        _setup_logging(args.log_level)
        config = load_config(args.config)
        if args.children is not None:
            config = replace(config, children=args.children)
        _check_procfs(args.procfs)
        _check_sysfs(args.sysfs)
        if args.command == "check-config":
            _check_listen(args.listen)
            if args.web_config:
                load_web_config(args.web_config)
                print(f"{args.web_config}: OK")
            print(f"{config.source}: OK ({len(config.process_names)} process_names rules)")
            return 0
        _warn_cardinality(config)
        if args.command == "once":
            with _collector(args, _unbounded(config)) as collector:
                snap = collector.collect()
            sys.stdout.buffer.write(render(snap, (TEXT,)).text)
            return 0
        if args.command == "explain" and args.pool is not None:
            fpm = config.php_fpm
            with _collector(args, _unbounded(config)) as collector:
                snap = collector.collect()
            view = explain.render_pool_json if args.json else explain.render_pool
            try:
                sys.stdout.write(view(snap, args.pool, fpm.sizing, fpm.reserve))
            except ValueError as exc:
                raise UsageError(f"explain: {exc}") from None
            return 0
        if args.command == "explain":
            forced = replace(config, accounting=replace(config.accounting, enabled=True))
            with _collector(args, _unbounded(forced)) as collector:
                snap = collector.collect()
            try:
                sys.stdout.write((explain.render_json if args.json else explain.render)(snap))
            except ValueError as exc:
                raise UsageError(f"explain: {exc}") from None
            return 0
        if args.command == "top":
            with _collector(args, _unbounded(config)) as collector:
                return top.run(collector, config.collection.interval, args.once)
        return _serve(args, config)
    except (UsageError, ConfigError, WebConfigError) as exc:
        print(f"pss-exporter: error: {exc}", file=sys.stderr)
        return 2
