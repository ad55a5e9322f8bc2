"""``portwatch run``: start the daemon from the command line and return its exit code.

Job: install the signal handlers, set up logging, load the configuration
(invalid: every error on stderr, exit 2), check ``--listen-address``, build
the :class:`~portwatch.daemon.loop.Daemon` with the real notifier and
watchdog, and run it. May import the standard library, :mod:`portwatch.config`,
:mod:`portwatch.web` and the modules of :mod:`portwatch.daemon`.
"""

from __future__ import annotations

import os
import queue
import sys
from pathlib import Path
from typing import Callable

from prometheus_client import CollectorRegistry

from portwatch.config import ConfigError, WebConfig, load_config
from portwatch.daemon.logs import setup_logging
from portwatch.daemon.loop import EXIT_CONFIG, EXIT_FAILED, Daemon, Server
from portwatch.daemon.messages import Message, install_signal_handlers
from portwatch.daemon.notify import make_notifier, watchdog_interval
from portwatch.model.text import os_error_text
from portwatch.web import MetricsServer, WebError, WebOptions, parse_listen_address

__all__ = ["main"]


def main(config_path: Path | None, listen_address: str | None, web_options: WebOptions = WebOptions(),
         *, log_level_given: bool = False) -> int:
    """``portwatch run``: run the daemon until SIGTERM/SIGINT.

    Takes the configuration file (None: built-in defaults), the
    ``--listen-address`` override (None: ``web.listen_address``) and the
    endpoint's command-line options (every listen address, web configuration
    file, socket activation) and whether ``--log.level`` was given (then
    the daemon's own events are not raised to INFO). Returns the
    exit code (see the module documentation); errors are reported on stderr
    (or in the journal), never as a traceback.
    """
    events: queue.SimpleQueue[Message] = queue.SimpleQueue()
    install_signal_handlers(events)
    env = os.environ
    setup_logging(env, raise_own=not log_level_given)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for error in exc.errors:
            print(f"portwatch: {exc.source}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    for address in web_options.listen_addresses or ([listen_address] if listen_address is not None else []):
        try:
            parse_listen_address(address)
        except WebError as exc:
            print(f"portwatch: --listen-address: {exc}", file=sys.stderr)
            return EXIT_CONFIG

    def server_factory(web: WebConfig, registry: CollectorRegistry, ready: Callable[[], bool],
                       health: Callable[[], bool], index_extra: Callable[[], str]) -> Server:
        return MetricsServer(web, registry, ready, health=health, index_extra=index_extra, options=web_options)

    try:
        daemon = Daemon(
            config,
            config_path=config_path,
            listen_override=listen_address,
            events=events,
            notify=make_notifier(env),
            watchdog=watchdog_interval(env, os.getpid()),
            server_factory=server_factory,
        )
    except (WebError, ValueError) as exc:
        print(f"portwatch: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"portwatch: cannot start: {os_error_text(exc)}", file=sys.stderr)
        return EXIT_FAILED
    return daemon.run()
