"""Basic auth of the HTTP endpoint: ``Authorization`` headers against bcrypt hashes, at a bounded cost.

Job: answer "who is this request?" for one configuration's
``web.basic_auth_users``, leaking nothing and never letting clients burn the CPU:

- an unknown user is checked against a dummy hash of the same cost as the
  configured ones (the highest, when they differ), so its timing matches a
  wrong password;
- bcrypt runs one check at a time (as exporter-toolkit does); when
  ``max_pending`` checks already wait, the request is refused at once (429)
  instead of holding a worker. Addresses that failed lately wait in a line of
  their own, so guessers never take the places of other clients;
- successful checks are cached until unused for :data:`AUTH_CACHE_SECONDS` (at most
  :data:`AUTH_CACHE_ENTRIES`, keyed by the user and a keyed SHA-256 of the
  password), so scrapes do not pay bcrypt's cost each time; failures are not
  cached (a guesser pays its own way, and the failure limit below bounds it);
- a client address (an IPv6 one by its /64) with :data:`FAILURE_LIMIT` failed
  attempts in :data:`FAILURE_WINDOW` seconds is refused (429 with
  ``Retry-After``) until the oldest of them is that old, even with the right
  password; other addresses are not affected. The count lives in a
  :class:`FailureLimit` that outlives configuration reloads.

The hashes come from a validated configuration; a hash bcrypt still cannot
check is logged and refuses the login. May import the standard library and
bcrypt; nothing of portwatch.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Mapping

import bcrypt

__all__ = [
    "AUTH_CACHE_ENTRIES", "AUTH_CACHE_SECONDS", "FAILURE_LIMIT", "FAILURE_WINDOW", "REALM_HEADER",
    "Auth", "AuthResult", "FailureLimit",
]

log = logging.getLogger("portwatch.web")

#: How long a successful basic-auth check is remembered after its last use.
AUTH_CACHE_SECONDS = 600.0
#: How many outcomes are remembered (the oldest is forgotten first).
AUTH_CACHE_ENTRIES = 1024
#: Failed attempts from one client address before it gets 429 ...
FAILURE_LIMIT = 10
#: ... within this many seconds.
FAILURE_WINDOW = 60.0
#: Client addresses whose failures are remembered (the oldest is forgotten first).
_FAILURE_ADDRESSES = 10000
#: bcrypt checks that may wait for the one running, in each line, before requests
#: are refused: with two lines at most 4 workers ever wait for bcrypt, the others
#: answer scrapes whose success is cached.
MAX_PENDING = 1
#: The ``WWW-Authenticate`` header of a 401.
REALM_HEADER = 'Basic realm="portwatch"'
_COST = re.compile(r"^\$2[abxy]?\$(\d\d)\$")
_DEFAULT_COST = 10
_dummies: dict[int, bytes] = {}
_dummies_lock = threading.Lock()
_BCRYPT = threading.Lock()  # one bcrypt check at a time, for the whole process


def _dummy_hash(cost: int) -> bytes:
    """A bcrypt hash of a random password at ``cost`` (made once per cost). Never raises."""
    with _dummies_lock:
        hashed = _dummies.get(cost)
        if hashed is None:
            hashed = _dummies[cost] = bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(rounds=cost))
        return hashed


def _client_key(client: str) -> str:
    """The key of a client address for the failure count: the address, an IPv6 one by its /64."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailureLimit:
    """Failed basic-auth attempts per client address (see the module documentation). Thread-safe."""

    def __init__(self, limit: int = FAILURE_LIMIT, window: float = FAILURE_WINDOW) -> None:
        """Takes how many failures within how many seconds make an address wait. Never raises."""
        self.limit = limit
        self.window = window
        self._failures: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, client: str, now: float) -> float:
        """Seconds ``client`` must wait before its next attempt counts; 0 when it may try now."""
        with self._lock:
            times = self._recent(client, now)
            if len(times) < self.limit:
                return 0.0
            return times[0] + self.window - now

    def failing(self, client: str, now: float) -> bool:
        """Whether ``client`` failed within the window."""
        with self._lock:
            return bool(self._recent(client, now))

    def _recent(self, client: str, now: float) -> collections.deque[float]:
        """The failure times of ``client`` within the window (called with the lock held)."""
        times = self._failures.get(_client_key(client))
        if times is None:
            return collections.deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def failed(self, client: str, now: float) -> None:
        """Counts a failed attempt of ``client``."""
        key = _client_key(client)
        with self._lock:
            times = self._failures.pop(key, None) or collections.deque(maxlen=self.limit)
            times.append(now)
            self._failures[key] = times
            while len(self._failures) > _FAILURE_ADDRESSES:
                self._failures.popitem(last=False)


@dataclass(frozen=True)
class AuthResult:
    """The answer for one request: the user, or why not (``retry_after`` > 0: answer 429)."""

    user: str | None
    retry_after: float = 0.0

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` in whole seconds (at least 1)."""
        return str(max(1, math.ceil(self.retry_after)))


class Auth:
    """Basic-auth users of one configuration, with its own cache of successful checks."""

    def __init__(self, users: Mapping[str, str], limit: FailureLimit | None = None,
                 max_pending: int = MAX_PENDING) -> None:
        """Takes user -> bcrypt hash (validated by the configuration), the failure count to use
        (a new one when None) and how many checks may wait for bcrypt. Makes the dummy hash at
        the configured cost (once per cost per process). Never raises.
        """
        self._users = {user: hashed.encode("utf-8") for user, hashed in users.items()}
        self._limit = limit if limit is not None else FailureLimit()
        costs = [int(m.group(1)) for m in (_COST.match(h) for h in users.values()) if m]
        self._dummy = _dummy_hash(max(costs, default=_DEFAULT_COST)) if users else b""
        self._key = os.urandom(32)
        self._cache: collections.OrderedDict[tuple[str, bytes], float] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._pending = threading.BoundedSemaphore(max_pending + 1)
        self._pending_failing = threading.BoundedSemaphore(max_pending + 1)

    @property
    def enabled(self) -> bool:
        """True when users are configured (every request must authenticate)."""
        return bool(self._users)

    def check(self, authorization: str | None, client: str = "") -> str | None:
        """The user :meth:`authenticate` finds, or None. Never raises."""
        return self.authenticate(authorization, client).user

    def authenticate(self, authorization: str | None, client: str = "") -> AuthResult:
        """Checks an ``Authorization`` header value sent from address ``client``.

        Returns the authenticated user; or no user (missing, malformed or wrong
        credentials, counted as a failure of ``client`` when credentials were
        sent); or no user and ``retry_after`` > 0 when ``client`` failed too
        often or too many checks wait for bcrypt. Never raises.
        """
        now = time.monotonic()
        wait = self._limit.retry_after(client, now)
        if wait > 0:
            return AuthResult(None, wait)
        if authorization is None:
            return AuthResult(None)
        credentials = _parse(authorization)
        if credentials is None:
            self._limit.failed(client, now)
            return AuthResult(None)
        user, password = credentials
        key = (user, hmac.new(self._key, password, hashlib.sha256).digest())
        outcome = self._cached(key, now)
        if outcome is None:
            # Clients that failed lately and the others wait in separate lines, so
            # guessers cannot take the places of a scraper whose success expired.
            pending = self._pending_failing if self._limit.failing(client, now) else self._pending
            if not pending.acquire(blocking=False):
                return AuthResult(None, 1.0)
            try:
                outcome = self._bcrypt(user, password)
            finally:
                pending.release()
            if outcome:
                self._remember(key, time.monotonic())
        if not outcome:
            self._limit.failed(client, time.monotonic())
            return AuthResult(None)
        return AuthResult(user)

    def _cached(self, key: tuple[str, bytes], now: float) -> bool | None:
        """The remembered outcome for ``key``, None when unknown or expired."""
        with self._lock:
            expires = self._cache.get(key)
            if expires is None:
                return None
            if now >= expires:
                del self._cache[key]
                return None
            self._cache[key] = now + AUTH_CACHE_SECONDS  # in use: kept
            self._cache.move_to_end(key)
            return True

    def _remember(self, key: tuple[str, bytes], now: float) -> None:
        """Remembers a success, forgetting the oldest beyond :data:`AUTH_CACHE_ENTRIES`."""
        with self._lock:
            self._cache.pop(key, None)
            self._cache[key] = now + AUTH_CACHE_SECONDS
            while len(self._cache) > AUTH_CACHE_ENTRIES:
                self._cache.popitem(last=False)

    def _bcrypt(self, user: str, password: bytes) -> bool:
        """One bcrypt check (serialised); an unknown user is checked against the dummy hash and fails."""
        hashed = self._users.get(user)
        with _BCRYPT:
            try:
                ok = bcrypt.checkpw(password, hashed if hashed is not None else self._dummy)
            except ValueError as e:  # a hash the configuration accepted but bcrypt does not
                log.error("basic auth: cannot check the password of user %r: %s", user, e)
                return False
        return ok and hashed is not None


def _parse(authorization: str) -> tuple[str, bytes] | None:
    """``(user, password)`` of a ``Basic`` header value (password cut to bcrypt's 72 bytes); None when malformed."""
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
    return user, password[:72]
