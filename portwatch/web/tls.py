"""TLS of the HTTP endpoint: the server context of a configuration, and certificate rotation.

Job: build the :class:`ssl.SSLContext` that :class:`~portwatch.web.settings.TLSSettings`
ask for (files, client certificates, versions, ciphers; from ``web.tls_*`` a
client certificate signed by the CA is required when a CA is given), and reload
it when the files change (checked with ``stat`` on every new connection, as
exporter-toolkit does; a changed file that does not load is logged once and the
previous certificate stays). The configuration was validated (and its files
checked by the preflight step) before; what fails when the files are actually
loaded is reported as :class:`~portwatch.web.address.WebError` naming the
setting and the file; a file that is no longer a regular file (a FIFO would
block OpenSSL's open) is refused from its ``stat``. May import the standard library,
:mod:`portwatch.model`, :mod:`portwatch.web.address` and :mod:`portwatch.web.settings`.
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
import threading
from pathlib import Path

from portwatch.model.text import os_error_text
from portwatch.web.address import WebError
from portwatch.web.settings import TLSSettings

__all__ = ["TLS", "build_ssl_context"]

log = logging.getLogger("portwatch.web")

#: What identifies the content of the TLS files: (inode, size, mtime, ctime) each.
Signature = tuple[tuple[int, int, int, int], ...]


class _EncryptedKey(Exception):
    """Raised from the password callback: the key file is passphrase-protected."""


def _no_password() -> bytes:
    """Password callback for :meth:`ssl.SSLContext.load_cert_chain`: never prompt on a terminal."""
    raise _EncryptedKey()


def _ssl_reason(e: ssl.SSLError) -> str:
    """A short reason from an :class:`ssl.SSLError` (OpenSSL's reason code when it has one)."""
    reason = getattr(e, "reason", None)
    if isinstance(reason, str) and reason:
        return reason.replace("_", " ").lower()
    return str(e)


def _unreadable(setting: str, path: Path, e: OSError) -> WebError:
    """``"<setting> <path>: <reason>"`` for a file that could not be opened when loading it."""
    if isinstance(e, FileNotFoundError):
        reason = "no such file"
    elif isinstance(e, PermissionError):
        reason = "permission denied"
    elif isinstance(e, IsADirectoryError):
        reason = "is a directory, not a file"
    else:
        reason = os_error_text(e)
    return WebError(f"{setting} {path}: {reason}")


def build_ssl_context(settings: TLSSettings) -> ssl.SSLContext:
    """The server TLS context ``settings`` ask for.

    Raises :class:`WebError` naming the setting and file that is missing,
    unreadable or does not hold what it should, or the version or cipher
    setting OpenSSL refuses.
    """
    cert, key, ca = settings.cert_file, settings.key_file, settings.client_ca_file
    cert_name, key_name, ca_name = settings.names
    # The certificate alone first, so that a bad certificate and a bad key get
    # different messages (OpenSSL says "PEM lib" for both).
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(cert))
    except ssl.SSLError as e:
        raise WebError(f"{cert_name} {cert}: bad certificate: {_ssl_reason(e)} (expected PEM)") from None
    except OSError as e:
        raise _unreadable(cert_name, cert, e) from None

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.minimum_version = settings.min_version
        context.maximum_version = settings.max_version
        if settings.ciphers is not None:
            context.set_ciphers(settings.ciphers)
    except (ssl.SSLError, ValueError) as e:
        raise WebError(f"{cert_name.rpartition('.')[0] or 'web'}: TLS versions or ciphers refused by OpenSSL: {e}") from None
    if settings.prefer_server_ciphers:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key), password=_no_password)
    except _EncryptedKey:
        raise WebError(f"{key_name} {key}: bad key: it is encrypted (passphrase-protected); portwatch needs an unencrypted key") from None
    except ssl.SSLError as e:
        if getattr(e, "reason", None) == "KEY_VALUES_MISMATCH":
            raise WebError(f"{key_name} {key}: bad key: it does not match {cert_name} {cert}") from None
        raise WebError(f"{key_name} {key}: bad key: {_ssl_reason(e)} (expected a PEM private key)") from None
    except OSError as e:
        raise _unreadable(key_name, key, e) from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(ca))
        except ssl.SSLError as e:
            raise WebError(f"{ca_name} {ca}: bad certificate: {_ssl_reason(e)} (expected PEM)") from None
        except OSError as e:
            raise _unreadable(ca_name, ca, e) from None
    context.verify_mode = settings.client_auth
    return context


def _tls_files(settings: TLSSettings) -> tuple[tuple[str, Path], ...]:
    """The (setting, path) of each TLS file ``settings`` name."""
    named = zip(settings.names, (settings.cert_file, settings.key_file, settings.client_ca_file))
    return tuple((setting, path) for setting, path in named if path is not None)


def _file_signature(files: tuple[tuple[str, Path], ...]) -> Signature | None:
    """What identifies the current content of ``files``; None if one cannot be stat'ed.

    Raises :class:`WebError` when one is not a regular file: OpenSSL would
    block opening a FIFO, in a connection's thread.
    """
    stats = []
    for setting, path in files:
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            if stat.S_ISDIR(st.st_mode):
                raise WebError(f"{setting} {path}: is a directory, not a file")
            raise WebError(f"{setting} {path}: not a regular file")
        stats.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(stats)


class TLS:
    """The TLS context of one configuration; reloads itself when its files change."""

    def __init__(self, settings: TLSSettings, context: ssl.SSLContext, signature: Signature | None) -> None:
        """Takes the settings, the context built from them and the files' signature at build time."""
        self._config = settings
        self._files = _tls_files(settings)
        self._context = context
        self._signature = signature
        self._failed: Signature | str | None = None
        self._lock = threading.Lock()

    @classmethod
    def build(cls, settings: TLSSettings | None) -> TLS | None:
        """The TLS state for ``settings``, None when TLS is off. Raises :class:`WebError` (see :func:`build_ssl_context`)."""
        if settings is None:
            return None
        signature = _file_signature(_tls_files(settings))
        return cls(settings, build_ssl_context(settings), signature)

    def context(self) -> ssl.SSLContext:
        """The context for a new connection, reloaded first if a file changed.

        A changed file that fails to load is logged (once per change) and the
        previous context is returned. Never raises.
        """
        try:
            signature = _file_signature(self._files)
        except WebError as e:
            with self._lock:
                self._refuse(None, e)
            return self._context
        if signature is None or signature == self._signature:
            return self._context
        with self._lock:
            if signature == self._signature or signature == self._failed:
                return self._context
            try:
                context = build_ssl_context(self._config)
            except WebError as e:
                self._refuse(signature, e)
                return self._context
            self._context = context
            self._signature = signature
            log.info("TLS files changed: reloaded %s", ", ".join(str(p) for _, p in self._files))
            return self._context

    def _refuse(self, signature: Signature | None, e: WebError) -> None:
        """Logs (once per change) that changed files cannot be loaded; ``signature`` None: one is not a regular file.

        Called with ``self._lock`` held.
        """
        key = signature if signature is not None else str(e)
        if key == self._failed:
            return
        self._failed = key
        log.error("TLS files changed but cannot be loaded, still using the previous certificate: %s", e)
