"""Basic auth of the HTTP endpoint: checking ``Authorization`` headers against bcrypt hashes, with a cache.

Job: answer "who is this request?" for one configuration's
``web.basic_auth_users``. The hashes come from a validated
:class:`~portwatch.config.WebConfig` (the configuration rejects anything that is
not a bcrypt hash); a hash bcrypt still cannot check is logged and refuses the
login. Successful checks are cached for :data:`AUTH_CACHE_SECONDS`, keyed by the
user and a SHA-256 of the password, so scrapes do not pay bcrypt's cost each time.
May import the standard library and bcrypt; nothing of portwatch.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import threading
import time
from typing import Mapping

import bcrypt

__all__ = ["AUTH_CACHE_SECONDS", "REALM_HEADER", "Auth"]

log = logging.getLogger("portwatch.web")

#: How long a successful basic-auth check is remembered.
AUTH_CACHE_SECONDS = 60.0
#: The ``WWW-Authenticate`` header of a 401.
REALM_HEADER = 'Basic realm="portwatch"'
_AUTH_CACHE_MAX_ENTRIES = 1024
#: Compared against when the user is unknown, so that an unknown user costs as
#: much time as a wrong password (no user enumeration by timing).
_DUMMY_BCRYPT_HASH = b"$2b$10$9CCkCehCQpK5jTy6/9jlqeqVrK1/TE58WcsZG.KWaek.aGPeRLzVS"


class Auth:
    """Basic-auth users of one configuration, with its own cache of successful checks."""

    def __init__(self, users: Mapping[str, str]) -> None:
        """Takes user -> bcrypt hash (validated by the configuration). Never raises."""
        self._users = {user: hashed.encode("utf-8") for user, hashed in users.items()}
        self._cache: dict[tuple[str, bytes], float] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """True when users are configured (every request must authenticate)."""
        return bool(self._users)

    def check(self, authorization: str | None) -> str | None:
        """Checks an ``Authorization`` header value.

        Takes the header value (None when absent). Returns the authenticated user
        name, or None when the credentials are missing, malformed or wrong. Never raises.
        """
        if authorization is None:
            return None
        scheme, _, encoded = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
            user_bytes, sep, password = decoded.partition(b":")
            user = user_bytes.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep:
            return None
        # bcrypt looks at the first 72 bytes only (htpasswd and older bcrypt
        # libraries truncate silently; bcrypt>=5 raises instead).
        password = password[:72]
        key = (user, hashlib.sha256(password).digest())
        now = time.monotonic()
        with self._lock:
            expires = self._cache.get(key)
        if expires is not None and now < expires:
            return user
        hashed = self._users.get(user)
        try:
            ok = bcrypt.checkpw(password, hashed if hashed is not None else _DUMMY_BCRYPT_HASH)
        except ValueError as e:  # a hash the configuration accepted but bcrypt does not
            log.error("basic auth: cannot check the password of user %r: %s", user, e)
            return None
        if not ok or hashed is None:
            return None
        with self._lock:
            if len(self._cache) >= _AUTH_CACHE_MAX_ENTRIES:
                self._cache = {k: t for k, t in self._cache.items() if t > now}
                if len(self._cache) >= _AUTH_CACHE_MAX_ENTRIES:
                    self._cache.clear()
            self._cache[key] = now + AUTH_CACHE_SECONDS
        return user
