"""The daemon's HTTP(S) endpoint: ``/metrics``, an index page, health and readiness.

Built on the standard library (:mod:`selectors`, :mod:`ssl`,
:class:`http.server.BaseHTTPRequestHandler`) and prometheus_client's exposition functions, behaving the way
users of Prometheus exporters (node_exporter and its exporter-toolkit) expect.
The modules, each with its own job:

- :mod:`.address`: ``web.listen_address`` (parse, resolve, bind, bind errors) and :class:`WebError`;
- :mod:`.handler`: the base class of request handlers (head already read by the core);
- :mod:`.head`: classifying the bytes of a request head; the core's own answers;
- :mod:`.server`: the server core (one selector loop for accepts, non-blocking
  TLS handshakes and request heads under a deadline; a bounded pool of workers
  for complete requests; keep-alive, connection cap, graceful stop, EMFILE back-off);
- :mod:`.tls`: the TLS context of a configuration and certificate rotation;
- :mod:`.auth`: basic auth against bcrypt hashes: a dummy hash at the configured cost,
  one bcrypt check at a time, a cache of successful checks, a per-address failure limit;
- :mod:`.routes`: ``/metrics``, ``/``, ``/-/healthy``, ``/-/ready``;
- :mod:`.settings`: :class:`WebSettings` (from ``web:`` or a web config file), :class:`WebOptions`;
- :mod:`.webconfig`: exporter-toolkit's web configuration file (``--web.config.file``);
- :mod:`.activation`: the sockets systemd passes (``--web.systemd-socket``);
- :mod:`.endpoint`: :class:`MetricsServer`, which the daemon starts, reloads and stops.

The configuration given is a validated :class:`~portwatch.config.WebConfig`;
web does not repeat the configuration's checks. The package may import the
standard library, prometheus_client, bcrypt, :mod:`portwatch.config` types,
:mod:`portwatch.model`, :mod:`portwatch.output` and PyYAML; never collect, scan or daemon.
"""

from __future__ import annotations

from portwatch.web.address import BACKLOG, WebError, parse_listen_address
from portwatch.web.auth import AUTH_CACHE_SECONDS, FAILURE_LIMIT, FAILURE_WINDOW
from portwatch.web.endpoint import MetricsServer
from portwatch.web.settings import TLSSettings, WebOptions, WebSettings
from portwatch.web.webconfig import load_web_config_file
from portwatch.web.server import CONNECTION_TIMEOUT, MAX_CONNECTIONS

__all__ = [
    "AUTH_CACHE_SECONDS",
    "BACKLOG",
    "CONNECTION_TIMEOUT",
    "FAILURE_LIMIT",
    "FAILURE_WINDOW",
    "MAX_CONNECTIONS",
    "MetricsServer",
    "TLSSettings",
    "WebOptions",
    "WebSettings",
    "load_web_config_file",
    "WebError",
    "parse_listen_address",
]
