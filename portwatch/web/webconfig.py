"""exporter-toolkit's web configuration file (``--web.config.file``): parse it into :class:`WebSettings`, follow its changes.

Job: read the YAML file that Prometheus exporters take (``tls_server_config``,
``http_server_config``, ``basic_auth_users``) and turn it into
:class:`~portwatch.web.settings.WebSettings`; :class:`WebConfigFile` re-reads
it when its signature (inode, size, mtime, ctime) changes, checked on each
new connection as exporter-toolkit reads it per request. Relative file names
are relative to the file's directory (as exporter-toolkit does). A key
portwatch cannot honour is an error naming it, never silently ignored:
inline ``cert``/``key``/``client_ca``, ``client_allowed_sans``,
``curve_preferences``, ``rate_limit``, and the client auth types Python's
ssl module cannot do (``RequestClientCert``, ``RequireAnyClientCert``).
``http2`` is accepted and has no effect (portwatch speaks HTTP/1.1; clients
fall back to it). May import the standard library, PyYAML and the modules
:mod:`portwatch.web.address` and :mod:`portwatch.web.settings`.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from pathlib import Path
from typing import Any

import yaml

from portwatch.web.address import WebError
from portwatch.web.settings import TLSSettings, WebSettings

__all__ = ["WebConfigFile", "load_web_config_file"]

log = logging.getLogger("portwatch.web")

_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version",
             "cipher_suites", "prefer_server_cipher_suites"}
_TLS_UNSUPPORTED = {"cert", "key", "client_ca", "client_allowed_sans", "curve_preferences"}
_HTTP_KEYS = {"headers", "http2"}
_TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}
_TOP_UNSUPPORTED = {"rate_limit"}
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
             "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
#: Go's cipher suite names (crypto/tls CipherSuites and InsecureCipherSuites) -> OpenSSL's.
_CIPHERS = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
#: Headers exporter-toolkit lets the file set, and the values it allows (None: any).
_HEADERS: dict[str, set[str] | None] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": {"deny", "sameorigin"},
    "X-Content-Type-Options": {"nosniff"},
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}


def load_web_config_file(path: Path) -> WebSettings:
    """The settings of web configuration file ``path``.

    Raises :class:`WebError` (``--web.config.file <path>: <key>: <problem>``)
    when it cannot be read, is not YAML, or has a key that is unknown, of the
    wrong type, or one portwatch cannot honour.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise WebError(f"--web.config.file {path}: cannot read: {e}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise WebError(f"--web.config.file {path}: not YAML: {e}") from None
    return _Parser(path).document(document if document is not None else {})


class _Parser:
    """Turns the parsed YAML of one file into settings; errors name the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, problem: str) -> WebError:
        """The error for ``key``."""
        return WebError(f"--web.config.file {self.path}: {key}: {problem}")

    def mapping(self, value: Any, key: str, known: set[str], unsupported: set[str]) -> dict[str, Any]:
        """``value`` as a mapping of known keys (None: empty)."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(key or "(top level)", "expected a mapping")
        for name in value:
            full = f"{key}.{name}" if key else str(name)
            if name in unsupported:
                raise self.error(full, "not supported by portwatch")
            if name not in known:
                raise self.error(full, "unknown key")
        return value

    def text(self, value: Any, key: str) -> str:
        """``value`` as a string."""
        if not isinstance(value, str):
            raise self.error(key, "expected a string")
        return value

    def file(self, value: Any, key: str) -> Path:
        """``value`` as a path, relative to the file's directory."""
        return self.path.parent / os.path.expanduser(self.text(value, key))

    def document(self, document: Any) -> WebSettings:
        """The settings of the whole document."""
        top = self.mapping(document, "", _TOP_KEYS, _TOP_UNSUPPORTED)
        raw_users = top.get("basic_auth_users") or {}
        if not isinstance(raw_users, dict):
            raise self.error("basic_auth_users", "expected a mapping of user name to bcrypt hash")
        users: dict[str, str] = {}
        for user, hashed in raw_users.items():
            users[str(user)] = self.text(hashed, f"basic_auth_users.{user}")
            if not users[str(user)].startswith(("$2a$", "$2b$", "$2y$")):
                raise self.error(f"basic_auth_users.{user}", "not a bcrypt hash")
        http = self.mapping(top.get("http_server_config"), "http_server_config", _HTTP_KEYS, set())
        if "http2" in http and not isinstance(http["http2"], bool):
            raise self.error("http_server_config.http2", "expected true or false")
        return WebSettings(tls=self.tls(top.get("tls_server_config")), basic_auth_users=users,
                           headers=self.headers(http.get("headers")))

    def headers(self, value: Any) -> tuple[tuple[str, str], ...]:
        """``http_server_config.headers``."""
        key = "http_server_config.headers"
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise self.error(key, "expected a mapping")
        out = []
        for name, header in value.items():
            if name not in _HEADERS:
                raise self.error(f"{key}.{name}", "this header cannot be configured")
            text = self.text(header, f"{key}.{name}")
            allowed = _HEADERS[name]
            if allowed is not None and text.lower() not in allowed:
                raise self.error(f"{key}.{name}", f"must be one of {', '.join(sorted(allowed))}")
            if text:
                out.append((str(name), text))
        return tuple(out)

    def tls(self, value: Any) -> TLSSettings | None:
        """``tls_server_config`` (None when absent or empty)."""
        key = "tls_server_config"
        tls = self.mapping(value, key, _TLS_KEYS, _TLS_UNSUPPORTED)
        if not tls:
            return None
        for needed in ("cert_file", "key_file"):
            if not tls.get(needed):
                raise self.error(f"{key}.{needed}", "required")
        auth_name = tls.get("client_auth_type", "NoClientCert")
        if auth_name not in _CLIENT_AUTH:
            if auth_name in ("RequestClientCert", "RequireAnyClientCert"):
                raise self.error(f"{key}.client_auth_type", f"{auth_name} is not supported by portwatch")
            raise self.error(f"{key}.client_auth_type", f"unknown value {auth_name!r}")
        ca = self.file(tls["client_ca_file"], f"{key}.client_ca_file") if tls.get("client_ca_file") else None
        client_auth = _CLIENT_AUTH[auth_name]
        if client_auth != ssl.CERT_NONE and ca is None:
            raise self.error(f"{key}.client_ca_file", f"required by client_auth_type {auth_name}")
        ciphers = None
        if tls.get("cipher_suites"):
            if not isinstance(tls["cipher_suites"], list):
                raise self.error(f"{key}.cipher_suites", "expected a list")
            names = []
            for suite in tls["cipher_suites"]:
                if suite not in _CIPHERS:
                    raise self.error(f"{key}.cipher_suites", f"unknown or unsupported cipher suite {suite!r}")
                names.append(_CIPHERS[suite])
            ciphers = ":".join(names)
        prefer = tls.get("prefer_server_cipher_suites", True)
        if not isinstance(prefer, bool):
            raise self.error(f"{key}.prefer_server_cipher_suites", "expected true or false")
        return TLSSettings(
            cert_file=self.file(tls["cert_file"], f"{key}.cert_file"),
            key_file=self.file(tls["key_file"], f"{key}.key_file"),
            client_ca_file=ca, client_auth=client_auth,
            min_version=self.version(tls.get("min_version", "TLS12"), f"{key}.min_version"),
            max_version=self.version(tls.get("max_version", "TLS13"), f"{key}.max_version"),
            ciphers=ciphers, prefer_server_ciphers=prefer,
            names=(f"{key}.cert_file", f"{key}.key_file", f"{key}.client_ca_file"),
        )

    def version(self, value: Any, key: str) -> ssl.TLSVersion:
        """A TLS version name (``TLS12``...)."""
        if value not in _VERSIONS:
            raise self.error(key, f"unknown TLS version {value!r} (TLS10, TLS11, TLS12 or TLS13)")
        return _VERSIONS[value]


class WebConfigFile:
    """A web configuration file, re-read when it changes (:meth:`current`)."""

    def __init__(self, path: Path) -> None:
        """Reads ``path`` now. Raises :class:`WebError` (see :func:`load_web_config_file`)."""
        self.path = path
        self._signature = self._stat()
        self._settings = load_web_config_file(path)
        self._failed: tuple[int, ...] | None = None
        self._lock = threading.Lock()

    def _stat(self) -> tuple[int, ...] | None:
        """(inode, size, mtime, ctime) of the file; None when it cannot be stat'ed."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def current(self) -> WebSettings:
        """The settings of the file as it is now; when a change does not load, logs once and keeps the previous. Never raises."""
        signature = self._stat()
        if signature is None or signature == self._signature:
            return self._settings
        with self._lock:
            if signature == self._signature or signature == self._failed:
                return self._settings
            try:
                settings = load_web_config_file(self.path)
            except WebError as e:
                self._failed = signature
                log.error("web config file changed but cannot be used, keeping the previous settings: %s", e)
                return self._settings
            self._settings, self._signature = settings, signature
            log.info("web config file %s changed: reloaded", self.path)
            return settings
