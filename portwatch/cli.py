"""Command line: argument parsing and exit codes only.

Exit codes (documented in the README):

- 0: success, and no finding reaches ``--fail-on``;
- 1: ``scan`` found (``watch``: saw) something at or above ``--fail-on``;
- 2: usage error or invalid configuration;
- 3: the scan itself failed (e.g. the kernel's port settings are unreadable).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from portwatch import version_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterator, Sequence

    from portwatch.alerts.rules import DryRunEntry
    from portwatch.config import Config
    from portwatch.model import Finding, ScanResult
    from portwatch.model.results import NamespacesResult

    Arguments = Callable[[argparse.ArgumentParser], None]  # adds a command's arguments to its parser

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_FAILED = 3

DEFAULT_CONFIG_PATH = Path("/etc/portwatch/portwatch.yaml")


def _config_arg(p: argparse.ArgumentParser, *, reads_default: bool = False) -> None:
    default = (f"{DEFAULT_CONFIG_PATH} when it exists, else the built-in defaults" if reads_default
               else f"built-in defaults; the daemon's unit uses {DEFAULT_CONFIG_PATH}")
    p.add_argument("--config", "-c", type=Path, metavar="FILE", help=f"configuration file (default: {default})")


def _namespace_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all-namespaces", "-A", action="store_true",
                   help="scan every network namespace on the host, each with its own port range and "
                        "sockets (needs CAP_SYS_ADMIN; without it only the own namespace, with a note)")
    p.add_argument("--netns", action="append", default=[], metavar="NAME|PATH|PID",
                   help="scan this network namespace: an `ip netns` name, a container id, a pod uid, "
                        "a unit, a namespace file, a pid inside it or its inode (repeatable)")


def _log_args(p: argparse.ArgumentParser, *, top: bool) -> None:
    """``--log.level``/``--log-level`` and ``--log.format``, on the top parser and on each subcommand.

    Only the top parser has defaults (a subcommand's SUPPRESS keeps them when
    the flag is not given after the subcommand), so either place works.
    """
    default = None if top else argparse.SUPPRESS
    p.add_argument("--log.level", "--log-level", dest="log_level", metavar="LEVEL", default=default,
                   choices=["debug", "info", "warn", "warning", "error"],
                   help="only log messages of this level or worse: debug, info, warn, error "
                        "(default: warn, and the daemon's own events at info; --log-level is an alias)")
    p.add_argument("--log.format", dest="log_format", choices=["logfmt", "json"], default=default,
                   help="stderr log lines as logfmt or JSON, each with a timestamp "
                        "(default: `portwatch: LEVEL: message`; the journal under systemd keeps its fields)")


class _VersionAction(argparse.Action):
    """``--version``: prints :func:`portwatch.version_text` and exits 0.

    Unlike argparse's ``version`` action, the text is made only when the flag
    is given: making it imports :mod:`platform`, which no other command needs.
    """

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        sys.stdout.write(version_text() + "\n")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that does not ask the terminal's width (importing :mod:`shutil`) while
    arguments are added: ``add_argument`` formats only to check a metavar, which no width changes."""

    _adding = False

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        self._adding = True
        try:
            return super().add_argument(*args, **kwargs)
        finally:
            self._adding = False

    def _get_formatter(self) -> argparse.HelpFormatter:
        if self._adding:
            return self.formatter_class(prog=self.prog, width=80)  # type: ignore[call-arg]
        return super()._get_formatter()


class _Commands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """The sub-commands: each one's parser (and its arguments) is made the first time it is looked up
    (``portwatch --help`` lists every command; ``portwatch COMMAND`` makes COMMAND's parser only)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = _LazyParsers(self._parser_class, self._prog_prefix)
        self._name_parser_map = self.choices = self._lazy

    def add_command(self, name: str, help: str, arguments: Arguments, **kwargs: Any) -> None:
        """Register ``name`` (its line in the help list now); ``arguments`` adds its arguments to
        its parser, made with ``kwargs``, when the command is used."""
        self._choices_actions.append(self._ChoicesPseudoAction(name, (), help))
        self._lazy.pending[name] = (arguments, kwargs)
        dict.__setitem__(self._lazy, name, None)


class _LazyParsers(dict[str, "Any"]):
    """Command name -> its parser, made on first lookup (names, order and membership from the start)."""

    def __init__(self, parser_class: Callable[..., argparse.ArgumentParser], prog: str) -> None:
        super().__init__()
        self.parser_class, self.prog = parser_class, prog
        self.pending: dict[str, tuple[Arguments, dict[str, Any]]] = {}

    def __getitem__(self, name: str) -> Any:
        if name in self.pending:
            arguments, kwargs = self.pending.pop(name)
            super().__setitem__(name, self.parser_class(prog=f"{self.prog} {name}", **kwargs))
            arguments(super().__getitem__(name))
        return super().__getitem__(name)

    def __iter__(self) -> Iterator[str]:  # defined, so dict(parsers) copies by lookup: every parser made
        return iter(list(super().__iter__()))

    def items(self) -> Any:
        return [(name, self[name]) for name in self]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``portwatch`` command (each command's own parser made when used)."""
    parser = _Parser(
        prog="portwatch",
        description="Catch the failures caused by the Linux ephemeral port range: listeners inside it, "
                    "ports taken by outgoing connections, self-connects, exhaustion, CLOSE_WAIT build-up.",
    )
    parser.add_argument("--version", action=_VersionAction,
                        help="print the version, git revision, Python version and classifier (C or pure-Python); exit")
    _log_args(parser, top=True)
    # prog: what argparse would work out from the usage (no positional comes before the command)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", action=_Commands,
                                prog=parser.prog)
    assert isinstance(sub, _Commands)
    sub.add_command("scan", "scan once and report", _scan_args,
                    description="Scan the sockets of this network namespace once and report findings.")
    sub.add_command("check-config", "validate a configuration file", _check_args,
                    description="Validate FILE; list every error with its key path.")
    sub.add_command(
        "reserve", "print a sysctl.d snippet reserving in-range service ports", _reserve_args,
        description="Print a sysctl.d snippet that adds the ports of listeners and declared services "
                    "inside the ephemeral range to net.ipv4.ip_local_reserved_ports (merged with what "
                    "is reserved already). Install it as /etc/sysctl.d/90-portwatch.conf and run "
                    "`sysctl --system`. With -A or --netns: one snippet per network namespace, each "
                    "saying how to apply it there.")
    sub.add_command("run", "run the daemon (scan on a timer, serve /metrics, alert)", _run_args,
                    description="Run the portwatch daemon.")
    sub.add_command("watch", "follow findings live: scans at the interval plus socket-destroy events", _watch_command_args,
                    description="Scan at the interval and listen to the kernel's socket-destroy events; "
                                "print each finding when it appears and when it resolves (transient "
                                "self-connects and loop pairs included). A summary goes to stderr.")
    return parser


def _scan_args(scan: argparse.ArgumentParser) -> None:
    """The arguments of ``scan``."""
    _config_arg(scan, reads_default=True)
    scan.add_argument("--format", "-f", choices=["table", "json"], default="table",
                      help="report format (default: table)")
    scan.add_argument("--fail-on", choices=["info", "warning", "critical", "never"], default="critical",
                      help="exit 1 when a finding of this severity or worse exists (default: critical)")
    scan.add_argument("--verbose", "-v", action="store_true",
                      help="in the table, one entry per finding (by default findings alike but for "
                           "their port are one entry with the port set; JSON always lists each)")
    scan.add_argument("--alerts-dry-run", action="store_true",
                      help="also show which alert rules would fire for these findings and to which sinks "
                           "(nothing is sent)")
    _namespace_args(scan)
    _log_args(scan, top=False)


def _check_args(check: argparse.ArgumentParser) -> None:
    """The arguments of ``check-config``."""
    check.add_argument("file", type=Path, metavar="FILE")
    _log_args(check, top=False)


def _reserve_args(reserve: argparse.ArgumentParser) -> None:
    """The arguments of ``reserve``."""
    _config_arg(reserve, reads_default=True)
    _namespace_args(reserve)
    _log_args(reserve, top=False)


def _run_args(run: argparse.ArgumentParser) -> None:
    """The arguments of ``run``."""
    _config_arg(run)
    run.add_argument("--listen-address", metavar="HOST:PORT",
                     help="override web.listen_address from the configuration")
    run.add_argument("--web.listen-address", dest="web_listen_address", metavar="[HOST]:PORT", action="append",
                     help="address to serve on, as exporters take it (repeatable; ':9731' is every address); "
                          "overrides web.listen_address")
    run.add_argument("--web.config.file", dest="web_config_file", metavar="FILE", type=Path,
                     help="exporter-toolkit web configuration file (TLS, basic auth, headers), re-read when it changes")
    run.add_argument("--web.systemd-socket", dest="web_systemd_socket", action="store_true",
                     help="serve on the sockets systemd passes (socket activation) instead of binding")
    _log_args(run, top=False)


def _watch_command_args(watch: argparse.ArgumentParser) -> None:
    """The arguments of ``watch``."""
    _config_arg(watch, reads_default=True)
    _namespace_args(watch)
    _watch_args(watch)
    _log_args(watch, top=False)


def _duration(text: str) -> float:
    """Seconds of ``--duration``/``--interval``: a number of seconds or a duration such as ``30s``."""
    from portwatch.config.grammar import parse_duration

    try:
        seconds = float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return seconds


def _watch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", "-f", choices=["text", "json"], default="text",
                   help="one text line, or one JSON object, per finding found or resolved (default: text)")
    p.add_argument("--duration", type=_duration, metavar="D",
                   help="stop D seconds (or a duration such as 30s, 5m) after the start line, "
                        "which follows the first scan (default: until SIGINT)")
    p.add_argument("--interval", type=_duration, metavar="D", help="time between scans (default: the configuration's)")
    p.add_argument("--fail-on", choices=["info", "warning", "critical", "never"], default="warning",
                   help="exit 1 when a finding of this severity or worse was seen (default: warning)")
    p.add_argument("--failures", action="store_true",
                   help="also capture failed connect() (EADDRNOTAVAIL) and bind() (EADDRINUSE) calls through "
                        "audit for this run (root, host namespace; the rules are removed at the end)")


def cmd_watch(args: argparse.Namespace) -> int:
    """``portwatch watch``: 0, 1 when a finding reached ``--fail-on``, 2 for a --netns naming none."""
    from portwatch.watch import parse_options, run_watch

    options = parse_options(args.all_namespaces, args.netns, args.format, args.duration, args.fail_on, args.interval,
                            args.failures)
    return run_watch(_load(args.config), options)


def _load(path: Path | None, *, preflight: bool = False) -> Config:
    """The configuration at ``path`` (None: the defaults). Raises ConfigError.

    Without ``preflight`` the files it names (TLS, CA, tokens, exec programs)
    are not checked: ``scan`` and ``reserve`` never use them, so a server's
    configuration can be scanned with on a workstation.
    """
    if path is None:
        # What load_config(None) returns, without importing the YAML loader and the sink registry.
        from portwatch.config.types import Config

        return Config()
    from portwatch.config import load_config

    return load_config(path, preflight=preflight)


def _scan(args: argparse.Namespace, config: Config) -> ScanResult | NamespacesResult | int:
    """The scan ``scan`` and ``reserve`` report: the own namespace, or those ``-A``/``--netns`` ask for.

    Returns an exit code instead, after saying why on stderr: 2 for a
    ``--netns`` that names no namespace, 3 when none of the namespaces asked
    for could be read. Raises what :func:`~portwatch.scan.run_scan` raises.
    The cyclic garbage collector is paused meanwhile: a scan builds a few
    objects per socket (hundreds of thousands on a busy host), none in a
    cycle, and each collection would walk all of them again.
    """
    import gc

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _scan_paused(args, config)
    finally:
        if was_enabled:
            gc.enable()


def _scan_paused(args: argparse.Namespace, config: Config) -> ScanResult | NamespacesResult | int:
    """:func:`_scan`, with the garbage collector paused by the caller."""
    from portwatch.collect import Collector, discover_namespaces
    from portwatch.scan import UnknownNamespace, make_source, run_namespaces_scan, run_scan, select_namespaces

    collector = Collector(make_source(config.source))
    discovery = discover_namespaces()
    if not args.all_namespaces and not args.netns:
        own = next((ns for ns in discovery.namespaces if ns.own), None)
        return run_scan(config, collector, namespace=own)
    try:
        selected = select_namespaces(discovery, args.netns)
    except UnknownNamespace as exc:
        print(f"portwatch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = run_namespaces_scan(config, collector, discovery, selected)
    if not result.results:
        why = "; ".join(result.notes) or "every one ended before it was read"
        print(f"portwatch: cannot scan: no network namespace could be read: {why}", file=sys.stderr)
        return EXIT_FAILED
    return result


def cmd_scan(args: argparse.Namespace) -> int:
    """``portwatch scan``: returns the exit code (2 for a ``--netns`` naming no namespace, 3 if none could be read)."""
    from portwatch.model import Severity
    from portwatch.output.json import to_json_document
    from portwatch.output.report import render_text

    config = _load(args.config)
    result = _scan(args, config)
    if isinstance(result, int):
        return result
    host = os.uname().nodename  # what socket.gethostname() returns, without importing socket
    dry = _alerts_dry_run(config, result.findings) if args.alerts_dry_run else None
    if args.format == "json":
        import json

        document = to_json_document(result, host)
        if dry is not None:
            document["alerts_dry_run"] = [entry.to_dict() for entry in dry]
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(result, host, verbose=args.verbose, width=_terminal_width()))
        if dry is not None:
            sys.stdout.write(_render_dry_run(dry))
    if args.fail_on == "never":
        return EXIT_OK
    threshold = Severity(args.fail_on)
    return EXIT_FINDINGS if any(f.severity >= threshold for f in result.findings) else EXIT_OK


def _terminal_width() -> int | None:
    """The columns of the terminal stdout is (``COLUMNS`` first), or None when stdout is no terminal."""
    if not sys.stdout.isatty():
        return None
    import shutil

    return shutil.get_terminal_size().columns


def _alerts_dry_run(config: Config, findings: Sequence[Finding]) -> list[DryRunEntry]:
    """What ``config.alerts`` would do with ``findings`` on a first scan (no alert state); sends nothing."""
    import time

    from portwatch.alerts.rules import dry_run

    return dry_run(config.alerts, findings, {}, time.time())


def _render_dry_run(entries: Sequence[DryRunEntry]) -> str:
    """The ``--alerts-dry-run`` section of the text report."""
    lines = ["", "Alerts (dry run: nothing sent):"]
    if not entries:
        lines.append("  no findings, nothing to alert")
    for e in entries:
        head = f"  {e.finding_severity.value:<8} {e.finding_key}"
        if e.rule is None:
            lines.append(f"{head}: no rule matches, not alerted")
        elif not e.sinks:
            lines.append(f"{head}: rule {e.rule!r} silences it")
        else:
            when = {"fires now": "fires now", "firing": "is firing"}.get(
                e.state, f"fires in {e.fires_in or 0:g}s if it persists")
            severity = e.severity.value if e.severity is not None else e.finding_severity.value
            lines.append(f"{head}: rule {e.rule!r} {when} as {severity} -> {', '.join(e.sinks)}")
    return "\n".join(lines) + "\n"


def cmd_check_config(args: argparse.Namespace) -> int:
    """``portwatch check-config FILE``: 0 when valid and its files usable (errors raise ConfigError)."""
    config = _load(args.file, preflight=True)
    print(f"{args.file}: valid ({len(config.services)} services, {len(config.ignore)} ignore rules, "
          f"interval {config.interval:g}s)")
    return EXIT_OK


def cmd_reserve(args: argparse.Namespace) -> int:
    """``portwatch reserve``: prints the snippet; 0 (2 for a ``--netns`` naming no namespace, 3 if none could be read).

    The ports are those of the findings a scan keeps after the ignore rules:
    ``listener_in_ephemeral_range`` and ``service_port_at_risk``. So a port the
    configuration ignores (e.g. a UDP client's random source port) is never
    proposed for reservation. With ``-A``/``--netns``, one snippet per
    namespace, each with how to apply it there.
    """
    from portwatch.model.results import NamespacesResult
    from portwatch.output.reserve import reserve_snippet, reserve_snippets

    result = _scan(args, _load(args.config))
    if isinstance(result, int):
        return result
    host = os.uname().nodename  # what socket.gethostname() returns, without importing socket
    if isinstance(result, NamespacesResult):
        print(reserve_snippets(result, host))
    else:
        print(reserve_snippet(result, host))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """``portwatch run``: the daemon; returns its exit code."""
    from portwatch.daemon.main import main as run_daemon
    from portwatch.web import WebOptions

    addresses = ([args.listen_address] if args.listen_address else []) + list(args.web_listen_address or [])
    options = WebOptions(listen_addresses=tuple(addresses), config_file=args.web_config_file,
                         systemd_socket=args.web_systemd_socket)
    return run_daemon(args.config, addresses[0] if addresses else None, options,
                      log_level_given=args.log_level is not None)


def _default_config(args: argparse.Namespace, default_config: Path) -> None:
    """``scan``/``reserve`` without ``--config``: use ``default_config`` when it exists, saying so on stderr."""
    if args.command in ("scan", "reserve", "watch") and args.config is None and default_config.exists():
        print(f"portwatch: using {default_config}", file=sys.stderr)
        args.config = default_config


def _scan_errors() -> tuple[type[Exception], ...]:
    """The errors of a failed scan (exit 3). Imported when one is being handled, so that a
    command that never scans (``check-config``) does not import the collector."""
    from portwatch.collect import CollectError
    from portwatch.collect.netlink import NetlinkError
    from portwatch.model import SourceUnavailable

    return CollectError, SourceUnavailable, NetlinkError


def _configure_logging(level: str | None, log_format: str | None) -> None:
    """Log to stderr as ``--log.level``/``--log.format`` ask, from the moment :mod:`logging` is
    imported (now if it is): a command that logs nothing (a scan) never loads it."""
    from portwatch.lazy import after_import

    def configure() -> None:
        from portwatch.daemon.logs import LOG_LEVELS, configure_stderr

        configure_stderr(LOG_LEVELS[level or "warn"], log_format)

    after_import("logging", configure)


def main(argv: Sequence[str] | None = None, default_config: Path = DEFAULT_CONFIG_PATH) -> int:
    """Entry point of the ``portwatch`` console script; returns the exit code.

    ``default_config`` is the file ``scan`` and ``reserve`` read when no
    ``--config`` is given and it exists (a parameter so tests use another).
    """
    from portwatch.config.types import ConfigError
    from portwatch.model.text import os_error_text

    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.log_level, args.log_format)
    _default_config(args, default_config)
    handlers = {"scan": cmd_scan, "check-config": cmd_check_config, "reserve": cmd_reserve, "run": cmd_run,
                "watch": cmd_watch}
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except _scan_errors() as exc:  # evaluated only when an exception gets here
        print(f"portwatch: cannot scan: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"portwatch: {os_error_text(exc, with_filename=True)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
