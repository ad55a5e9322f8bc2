"""What the HTTP endpoint serves with: :class:`WebSettings`, from portwatch.yaml's ``web:`` or a web config file.

Job: one settings type for TLS, basic-auth users and extra response headers,
whichever file they came from. :func:`settings_from_config` maps a validated
:class:`~portwatch.config.WebConfig` onto it (naming its settings
``web.tls_cert_file`` ...); :mod:`.webconfig` maps an exporter-toolkit web
configuration file onto it (naming ``tls_server_config.cert_file`` ...).
:class:`WebOptions` are the command line's choices (``--web.listen-address``,
``--web.config.file``, ``--web.systemd-socket``). May import the standard
library, :mod:`portwatch.config` types and :mod:`portwatch.web.address`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from portwatch.config import WebConfig
from portwatch.web.address import WebError

__all__ = ["TLSSettings", "WebOptions", "WebSettings", "settings_from_config"]


@dataclass(frozen=True)
class TLSSettings:
    """The server side of TLS: files, client certificates, versions and ciphers.

    ``names`` are what messages call the cert, key and client CA settings.
    ``client_auth`` is :data:`ssl.CERT_NONE`, ``CERT_OPTIONAL`` (verify a
    certificate when one is given) or ``CERT_REQUIRED``. ``ciphers`` is an
    OpenSSL cipher list for TLS 1.2 and older (None: OpenSSL's defaults).
    """

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth: ssl.VerifyMode = ssl.CERT_NONE
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED
    ciphers: str | None = None
    prefer_server_ciphers: bool = True
    names: tuple[str, str, str] = ("web.tls_cert_file", "web.tls_key_file", "web.tls_client_ca_file")


@dataclass(frozen=True)
class WebSettings:
    """TLS (None: plain HTTP), basic-auth users (user -> bcrypt hash) and headers added to every response."""

    tls: TLSSettings | None = None
    basic_auth_users: Mapping[str, str] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class WebOptions:
    """The command line's endpoint options.

    ``listen_addresses``: every address to bind (empty: ``web.listen_address``);
    ``config_file``: an exporter-toolkit web configuration file (re-read when it
    changes; replaces TLS and users of portwatch.yaml); ``systemd_socket``: serve
    on the sockets systemd passes (``LISTEN_FDS``) instead of binding.
    """

    listen_addresses: tuple[str, ...] = ()
    config_file: Path | None = None
    systemd_socket: bool = False


def settings_from_config(config: WebConfig) -> WebSettings:
    """The settings of portwatch.yaml's ``web:``. Raises :class:`WebError` when the TLS files do not come in pairs."""
    cert, key, ca = config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file
    users = dict(config.basic_auth_users)
    if cert is None and key is None:
        if ca is not None:
            raise WebError(f"web.tls_client_ca_file {ca}: needs web.tls_cert_file and web.tls_key_file")
        return WebSettings(basic_auth_users=users)
    if cert is None:
        raise WebError(f"web.tls_key_file {key}: needs web.tls_cert_file too")
    if key is None:
        raise WebError(f"web.tls_cert_file {cert}: needs web.tls_key_file too")
    tls = TLSSettings(cert_file=cert, key_file=key, client_ca_file=ca,
                      client_auth=ssl.CERT_REQUIRED if ca is not None else ssl.CERT_NONE)
    return WebSettings(tls=tls, basic_auth_users=users)
