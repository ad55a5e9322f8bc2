"""What each command imports: ``scan``, ``reserve`` and ``check-config`` never load the daemon, the web
server, the alerting engine, ``prometheus_client`` or psutil when they do not use them.

Each command runs as a process that lists ``sys.modules`` when it exits, in
an empty network namespace, where a
scan has nothing to attribute, so psutil has no reason to load.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.netns import REPO, NetNS

PYTHON = REPO / ".venv" / "bin" / "python"
WAIT = 60.0

#: Module name prefixes no command but ``run`` needs.
DAEMON_ONLY = ("portwatch.daemon.loop", "portwatch.daemon.main", "portwatch.daemon.wiring",
               "portwatch.daemon.state", "portwatch.web", "portwatch.output.metrics",
               "portwatch.alerts.delivery", "portwatch.alerts.store", "portwatch.alerts.engine",
               "prometheus_client", "http.server", "ssl")
#: What a scan without a configuration file never needs on top of that.
SCAN_NEVER = DAEMON_ONLY + ("portwatch.alerts", "portwatch.config.loading", "yaml", "psutil")
#: What a plain ``scan`` (own namespace, no file, nothing logged, output not a terminal) leaves out
#: for its start-up time: logging (set up only once something imports it), the dataclasses module
#: (portwatch.model.records makes the data classes), argparse's terminal width (shutil), the wrapping
#: of the terminal report, datetime (model.text formats the scan's time), threading (only entering a
#: namespace needs it), the other commands' modules, the event records, the psutil source's module
#: (made only when auto falls back to it), typing (type names are imported under TYPE_CHECKING only)
#: and socket (the netlink code uses _socket, without socket's enums).
PLAIN_SCAN_NEVER = SCAN_NEVER + ("logging", "dataclasses", "inspect", "shutil", "textwrap", "datetime",
                                 "threading", "queue", "portwatch.model.events", "portwatch.daemon",
                                 "portwatch.watch", "portwatch.collect.sources.psutil", "typing", "socket")


#: Runs ``python -m portwatch ARGS`` and, at exit, writes the names in ``sys.modules`` to stderr.
_PROBE = ("import atexit, runpy, sys\n"
          "atexit.register(lambda: sys.stderr.write('\\nMODULES ' + ' '.join(sorted(sys.modules)) + '\\n'))\n"
          "sys.argv = ['portwatch', *sys.argv[1:]]\n"
          "runpy.run_module('portwatch', run_name='__main__', alter_sys=True)\n")


def modules_after(ns: NetNS, code: str, *args: str) -> set[str]:
    """The modules in ``sys.modules`` when ``python -c CODE ARGS`` run in ``ns`` exits (any status)."""
    res = ns.run([str(PYTHON), "-c", code, *args], timeout=WAIT)
    lines = [line for line in res.stderr.splitlines() if line.startswith("MODULES ")]
    assert lines, res.stderr[-2000:]
    return set(lines[-1].split()[1:])


def imported_modules(ns: NetNS, *args: str) -> set[str]:
    """The modules ``portwatch ARGS`` imported when run in ``ns`` (its exit status is not checked here)."""
    names = modules_after(ns, _PROBE, *args)
    assert "portwatch.cli" in names
    return names


def forbidden(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    """The ``names`` that are one of ``prefixes`` or inside one of them."""
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("args", [("scan",), ("scan", "--format", "json"), ("reserve",)])
def test_scan_and_reserve_import_no_daemon_alerting_yaml_or_psutil(netns: NetNS, args: tuple[str, ...]) -> None:
    names = imported_modules(netns, *args)
    assert "portwatch.scan" in names
    assert forbidden(names, SCAN_NEVER) == []


@pytest.mark.parametrize("args", [("scan",), ("scan", "--format", "json"), ("reserve",)])
def test_a_plain_scan_leaves_out_what_only_slows_its_start(netns: NetNS, args: tuple[str, ...]) -> None:
    names = imported_modules(netns, *args)
    assert "portwatch.scan" in names and "portwatch.model.records" in names
    assert forbidden(names, PLAIN_SCAN_NEVER) == []


def test_a_scan_of_another_namespace_loads_no_fallback_source_and_no_socket_module(netns: NetNS) -> None:
    # the /proc/thread-self/net fallback (and `socket`, which it imports) only where sock_diag is missing
    res = subprocess.run([str(PYTHON), "-c", _PROBE, "scan", "--format", "json", f"--netns={netns.name}"],
                         capture_output=True, text=True, timeout=WAIT)
    lines = [line for line in res.stderr.splitlines() if line.startswith("MODULES ")]
    assert lines and res.returncode == 0, res.stderr[-2000:]
    names = set(lines[-1].split()[1:])
    assert "portwatch.collect.sources.netlink" in names and "portwatch.collect.namespaces" in names
    assert forbidden(names, ("portwatch.collect.sources.procnet", "socket", "psutil")) == []


def test_logging_set_up_on_first_import_formats_as_if_set_up_first() -> None:
    # what the CLI does with --log.format: configured the moment logging is imported, before use
    code = ("import sys\n"
            "from portwatch.cli import _configure_logging\n"
            "_configure_logging(None, sys.argv[1] if sys.argv[1] != 'legacy' else None)\n"
            "assert 'logging' not in sys.modules\n"
            "import logging\n"
            "logging.getLogger('portwatch.scan').warning('netlink socket source unavailable')\n"
            "logging.getLogger('portwatch.scan').info('not shown at warn')\n")
    lines = {}
    for fmt in ("legacy", "logfmt", "json"):
        res = subprocess.run([str(PYTHON), "-c", code, fmt], capture_output=True, text=True, timeout=WAIT,
                             cwd=REPO, check=True)
        lines[fmt] = res.stderr.splitlines()
    assert lines["legacy"] == ["portwatch: WARNING: netlink socket source unavailable"]
    assert len(lines["logfmt"]) == 1 and "level=warn" in lines["logfmt"][0]
    assert len(lines["json"]) == 1 and '"level": "warn"' in lines["json"][0]


def test_scan_with_a_configuration_file_imports_no_daemon(netns: NetNS, tmp_path: Path) -> None:
    config = tmp_path / "portwatch.yaml"
    config.write_text("services:\n  - name: api\n    port: 8080\n")
    names = imported_modules(netns, "scan", "--config", str(config))
    assert "yaml" in names  # the file was read
    assert forbidden(names, DAEMON_ONLY + ("psutil",)) == []


def test_check_config_imports_no_daemon_and_no_scan(netns: NetNS, tmp_path: Path) -> None:
    config = tmp_path / "portwatch.yaml"
    config.write_text("interval: 30s\n")
    names = imported_modules(netns, "check-config", str(config))
    assert "yaml" in names  # the file was read
    assert forbidden(names, DAEMON_ONLY + ("psutil", "portwatch.scan")) == []


def test_the_forbidden_modules_are_what_run_imports(netns: NetNS) -> None:
    # The other side of the tests above: the names they look for are real module names
    # (a rename would otherwise make them pass without checking anything).
    code = ("import atexit, sys\n"
            "atexit.register(lambda: sys.stderr.write('MODULES ' + ' '.join(sorted(sys.modules)) + '\\n'))\n"
            "import portwatch.daemon.main, portwatch.daemon.wiring, portwatch.alerts.engine\n"
            "import portwatch.config.loading, portwatch.scan, psutil\n"
            "import logging, dataclasses, shutil, textwrap, datetime, threading, queue, typing, socket\n"
            "import portwatch.model.events, portwatch.watch, portwatch.collect.sources.psutil\n")
    names = modules_after(netns, code)
    for prefix in PLAIN_SCAN_NEVER:
        assert any(n == prefix or n.startswith(prefix + ".") for n in names), prefix


def test_daemon_package_names_still_import_on_first_use() -> None:
    res = subprocess.run([str(PYTHON), "-c",
                          "import sys, portwatch.daemon.logs as l; "
                          "assert 'portwatch.daemon.loop' not in sys.modules; "
                          "from portwatch.daemon import Daemon, main, setup_logging, status_line; "
                          "from portwatch.daemon.loop import Daemon as D; "
                          "assert Daemon is D and callable(main) and setup_logging is l.setup_logging; "
                          "print('ok')"],
                         capture_output=True, text=True, timeout=WAIT, cwd=REPO)
    assert res.stdout.strip() == "ok", res.stderr


def test_config_shapes_and_collect_package_load_no_collector() -> None:
    # config.shapes takes SOURCE_NAMES from collect.sources: that must not pull in the collector
    code = ("import sys, portwatch.config.shapes, portwatch.collect as c\n"
            "assert c.SOURCE_NAMES\n"
            "print(' '.join(sorted(sys.modules)))\n")
    res = subprocess.run([str(PYTHON), "-c", code], capture_output=True, text=True, timeout=WAIT, check=True)
    names = set(res.stdout.split())
    assert "portwatch.collect.sources" in names
    assert forbidden(names, ("portwatch.collect.collector", "portwatch.collect.owners",
                             "portwatch.collect.namespaces", "psutil")) == []
