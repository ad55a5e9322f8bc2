"""The small syntaxes of the configuration file: durations, listen addresses, ports, IPs, URLs, names.

Each function takes one value and returns it parsed, or raises ``ValueError``
whose message is the problem (without the key path, which the schema adds).
Values are quoted as YAML spells them (:func:`show`); a secret is never
quoted back (URLs are shown through :func:`redact_url`, header values and
passwords not at all).

May import: the standard library and :mod:`portwatch.model` only (pure, no
I/O, cheap to import: :mod:`portwatch.config.types` and the sink modules use it).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from urllib.parse import urlsplit

from portwatch.lazy import LazyPattern
from portwatch.model.values import finite_number
from portwatch.model import PortRange, normalize_ip

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable, Sequence

#: The metrics endpoint's default port: below 32768 (outside the default
#: ephemeral range, so an outgoing connection can never take it), above 1024
#: (no privilege needed) and not a well-known service port.
DEFAULT_PORT = 9731
DEFAULT_LISTEN_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"

#: How to make a bcrypt hash, quoted in the error for a plain-text password.
BCRYPT_HINT = (
    "python3 -c 'import bcrypt; print(bcrypt.hashpw(b\"secret\", bcrypt.gensalt()).decode())'"
)
#: A bcrypt hash: ``$2a$``/``$2b$``/``$2y$``, cost 04..31, 53 characters of salt and hash.
BCRYPT_RE = LazyPattern(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
#: Rule and sink names.
IDENT_RE = LazyPattern(r"[A-Za-z0-9_-]+")
_HEADER_RE = LazyPattern(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_LABEL_RE = LazyPattern(r"[a-zA-Z_][a-zA-Z0-9_]*")
_HOSTNAME_RE = LazyPattern(
    r"(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
#: The largest integer any key takes (a key without its own upper bound): 2**63 - 1.
MAX_INTEGER = 2**63 - 1
_PORT_RANGE_RE = LazyPattern(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", re.ASCII)


#: Integers with more digits than this are shown by their size, not spelled out.
_SHOWN_DIGITS = 40


def show(value: object) -> str:
    """A value as an error message quotes it: YAML spelling for scalars, the type for containers.

    Never raises, whatever YAML built: a huge integer is shown by its size,
    a ``!!set`` as a set, ``!!binary`` as binary data, a timestamp in ISO form.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (set, frozenset)):
        return "a set"
    if isinstance(value, (bytes, bytearray)):
        return "binary data"
    if isinstance(value, int) and value.bit_length() > _SHOWN_DIGITS * 3.33:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    import datetime as _dt  # (a value is a date only where YAML, which imports datetime, made it)

    if isinstance(value, (_dt.date, _dt.time)):
        return repr(value.isoformat())
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def suggest(word: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``."""
    if not isinstance(word, str):
        return ""
    import difflib  # here: only a misspelt word needs it

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_DURATION_UNITS: tuple[tuple[str, float], ...] = (
    ("y", 365 * 86400.0),
    ("w", 7 * 86400.0),
    ("d", 86400.0),
    ("h", 3600.0),
    ("m", 60.0),
    ("s", 1.0),
    ("ms", 0.001),
)
_DURATION_RE = LazyPattern("".join(rf"(?:([0-9]{{1,15}}){unit})?" for unit, _ in _DURATION_UNITS))


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus-style duration: ``"15s"``, ``"1m30s"``, ``"500ms"``, ``"1h"``.

    Takes units ``y w d h m s ms``, each an integer, largest first, each at
    most once. Returns the total in seconds (a float). Raises ``ValueError``
    for anything else, including the empty string and a bare number.
    """
    match = _DURATION_RE.fullmatch(text) if isinstance(text, str) else None
    if not text or match is None:
        raise ValueError(f"not a duration such as '15s', '1m30s' or '500ms': {text!r}")
    return sum(
        int(count) * factor
        for count, (_, factor) in zip(match.groups(), _DURATION_UNITS)
        if count is not None
    )


def format_duration(seconds: float) -> str:
    """The shortest duration string for ``seconds`` (``15s``, ``4h``, ``100ms``, ``1m30s``); ``0`` for 0."""
    if seconds == 0:
        return "0"
    millis = round(seconds * 1000)
    out = ""
    for unit, factor in _DURATION_UNITS:
        count, millis = divmod(millis, round(factor * 1000))
        if count:
            out += f"{count}{unit}"
    return out


def duration(value: object, minimum: float) -> float:
    """Seconds from a number or a :func:`parse_duration` string, at least ``minimum``."""
    if isinstance(value, str):
        try:
            seconds: float | None = parse_duration(value)
        except ValueError:
            seconds = None
    else:
        seconds = finite_number(value)
    if seconds is None:
        raise ValueError(
            "must be a number of seconds or a duration such as '15s', '1m30s' or '500ms',"
            f" got {show(value)}"
        )
    if seconds < minimum:
        raise ValueError(f"must be at least {minimum:g}s, got {show(value)}")
    return seconds


def parse_listen_address(text: str, *, any_port: bool = False) -> tuple[str, int]:
    """Split ``"host:port"``, ``"[v6]:port"`` or ``":port"`` into ``(host, port)``.

    The host must be an IPv4 address, a hostname, (in brackets) an IPv6
    address, or empty: every address of both families, as in Go exporters'
    ``:9100``. The port is 1..65535, or 0..65535 with ``any_port`` (0: any
    free port, for tests). Returns the host without brackets (``""`` for
    every address) and the port as an int. Raises ``ValueError`` saying what
    is wrong. The one parser of listen addresses: ``web`` and
    ``--listen-address`` use it too.
    """
    if text.startswith("["):
        m = re.fullmatch(r"\[([^\]]*)\]:([0-9]*)", text)
        if m is None:
            raise ValueError(f"must be 'host:port' or '[ipv6]:port', got {text!r}")
        host, port_text = m.group(1), m.group(2)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"must be 'host:port' or '[ipv6]:port', got {text!r}")
        if ":" in host:
            raise ValueError(
                f"an IPv6 address must be in brackets, as in '[::1]:{DEFAULT_PORT}', got {text!r}"
            )
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{host!r} is not an IPv4 address") from None
        elif host and _HOSTNAME_RE.fullmatch(host) is None:
            raise ValueError(f"{host!r} is not an IP address or a hostname")
    low = 0 if any_port else 1
    if not (port_text.isascii() and port_text.isdigit()) or not low <= int(port_text) <= 65535:
        raise ValueError(f"the port must be {low}..65535, got {port_text!r} in {text!r}")
    return host, int(port_text)


def listen_address(value: object) -> str:
    """A :func:`parse_listen_address` string, kept as written."""
    if not isinstance(value, str):
        hint = ""
        if isinstance(value, list):
            hint = f" (quote a value that starts with '[', as in \"[::1]:{DEFAULT_PORT}\")"
        raise ValueError(f"must be a string 'host:port', got {show(value)}{hint}")
    parse_listen_address(value)
    return value


def integer(value: object, low: int, high: int | None = None) -> int:
    """An int in ``low..high`` (``high`` None = no upper bound); bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, got {show(value)}")
    if high is None and value > MAX_INTEGER:
        raise ValueError(f"must be {low}..{MAX_INTEGER}, got {show(value)}")
    if high is None and value < low:
        raise ValueError(f"must be >= {low}, got {show(value)}")
    if high is not None and not low <= value <= high:
        raise ValueError(f"must be {low}..{high}, got {show(value)}")
    return value


def ratio(value: object) -> float:
    """A number ``0 < x <= 1`` (ints accepted), as a float."""
    number = finite_number(value)
    if number is None and not (isinstance(value, float) and not isinstance(value, bool)):
        raise ValueError(f"must be a number, got {show(value)}")
    if number is None or not 0 < number <= 1:
        raise ValueError(f"must be > 0 and <= 1, got {show(value)}")
    return number


def string(value: object) -> str:
    """A non-empty string."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {show(value)}")
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def boolean(value: object) -> bool:
    """``true`` or ``false`` (not 0/1, not strings)."""
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {show(value)}")
    return value


def choice(value: object, choices: Sequence[str], what: str = "") -> str:
    """One of ``choices`` (a string), with a did-you-mean suggestion."""
    if isinstance(value, str) and value in choices:
        return value
    listed = ", ".join(choices)
    hint = suggest(value, choices)
    if what:
        raise ValueError(f"unknown {what} {show(value)}{hint}; must be one of {listed}")
    raise ValueError(f"must be one of {listed}, got {show(value)}{hint}")


def name(value: object, what: str) -> str:
    """A rule or sink name: letters, digits, ``_`` and ``-``."""
    if not isinstance(value, str) or IDENT_RE.fullmatch(value) is None:
        raise ValueError(f"{what} names are letters, digits, '_' and '-', got {show(value)}")
    return value


def ip(value: object) -> str:
    """An IPv4 or IPv6 address, canonical (:func:`portwatch.model.normalize_ip`)."""
    if not isinstance(value, str):
        raise ValueError(f"must be an IP address, got {show(value)}")
    try:
        return normalize_ip(value)
    except ValueError:
        raise ValueError(f"must be an IP address, got {show(value)}") from None


def port_range(value: object) -> PortRange:
    """A port (int, or ASCII digits in a string) or an inclusive range ``"low-high"``."""
    problem = f"must be a port 1..65535 or a range such as '40000-40100', got {show(value)}"
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and (m := _PORT_RANGE_RE.fullmatch(value)):
        if len(m.group(1)) > 5 or len(m.group(2) or "") > 5:
            raise ValueError(problem)
        low = int(m.group(1))
        high = int(m.group(2)) if m.group(2) is not None else low
    else:
        raise ValueError(problem)
    if not (1 <= low <= 65535 and 1 <= high <= 65535):
        raise ValueError(problem)
    if low > high:
        raise ValueError(f"the range's low end is above its high end, got {show(value)}")
    return PortRange(low, high)


def format_port_range(ports: PortRange) -> object:
    """The YAML spelling of ``ports``: the port alone, or ``"low-high"``."""
    return ports.low if ports.low == ports.high else f"{ports.low}-{ports.high}"


def absolute_path(value: object) -> Path:
    """An absolute path (a string starting with ``/``)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be an absolute path, got {show(value)}")
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path (starting with /), got {show(value)}")
    if "\0" in value:
        raise ValueError("must not contain a NUL character")
    return Path(value)


def bcrypt_hash(value: object) -> str:
    """A bcrypt hash (``$2a$``/``$2b$``/``$2y$``, 60 characters). Never quotes the value."""
    if not isinstance(value, str) or BCRYPT_RE.fullmatch(value) is None:
        raise ValueError(
            "must be a bcrypt hash ($2a$, $2b$ or $2y$, 60 characters), not a plain-text"
            f" password; make one with: {BCRYPT_HINT}"
        )
    return value


def user_name(value: object) -> str:
    """A basic-auth user name: a non-empty string without ':'."""
    if not isinstance(value, str) or not value or ":" in value:
        raise ValueError(f"user names must be non-empty strings without ':', got {show(value)}")
    return value


def redact_url(url: str) -> str:
    """``url`` without credentials, for messages: ``https://***@host/path`` for ``https://user:pw@host/path``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}{sep}{authority}{slash}{tail}"


def url(value: object) -> str:
    """An ``http://`` or ``https://`` URL with a host (credentials in it are never quoted back)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be an http:// or https:// URL, got {show(value)}")
    shown = repr(redact_url(value))
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc}): {shown}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"must be an http:// or https:// URL, got {shown}")
    if not parts.hostname:
        raise ValueError(f"has no host: {shown}")
    if port == 0:
        raise ValueError(f"the port must be 1..65535: {shown}")
    if parts.fragment or any(c.isspace() for c in value):
        raise ValueError(f"must not contain spaces or a #fragment: {shown}")
    return value


#: Headers portwatch sets itself on every request.
OWN_HEADERS = frozenset({"content-type", "content-length", "host", "user-agent"})


def header_name(value: object) -> str:
    """An HTTP header name that portwatch does not set itself."""
    if not isinstance(value, str) or _HEADER_RE.fullmatch(value) is None:
        raise ValueError(f"header names are HTTP tokens (letters, digits, '-', ...), got {show(value)}")
    if value.lower() in OWN_HEADERS:
        raise ValueError(f"header {value!r} is set by portwatch and cannot be configured")
    return value


def header_value(value: object) -> str:
    """A header value: a string without line breaks. Never quoted in errors (it may be a secret)."""
    if not isinstance(value, str):
        raise ValueError("must be a string (the value is not shown: it may be a secret)")
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError("must not contain line breaks or NUL (the value is not shown)")
    return value


def label_name(value: object, reserved: frozenset[str]) -> str:
    """An Alertmanager label name, not one of ``reserved`` (the labels portwatch sets itself)."""
    if not isinstance(value, str) or _LABEL_RE.fullmatch(value) is None or value.startswith("__"):
        raise ValueError(f"label names match [a-zA-Z_][a-zA-Z0-9_]* and do not start with '__',"
                         f" got {show(value)}")
    if value in reserved:
        raise ValueError(f"label {value!r} is set by portwatch (reserved:"
                         f" {', '.join(sorted(reserved))})")
    return value


def command(value: object) -> tuple[str, ...]:
    """A command line (list of strings) whose first item is an absolute program path.

    Whether the program exists and is executable is a preflight check
    (:mod:`portwatch.config.preflight`), not a parse error.
    """
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a non-empty list of strings (program and arguments; no shell),"
                         f" got {show(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or (i == 0 and not item):
            raise ValueError(f"item {i} must be a string, got {show(item)}")
        if "\0" in item:
            raise ValueError(f"item {i} contains a NUL character")
    program = value[0]
    if not program.startswith("/"):
        raise ValueError(f"the program must be an absolute path (no shell, no PATH lookup),"
                         f" got {program!r}")
    return tuple(value)


def one_of(choices: Sequence[str]) -> str:
    """The choices as prose for docs: ```a`, `b` or `c```. Takes a non-empty sequence."""
    quoted = [f"`{c}`" for c in choices]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
