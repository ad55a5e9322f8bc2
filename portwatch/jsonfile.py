"""JSON documents in the state directory: bounded reads, atomic writes, lists of entries.

Job: what the daemon's state (:mod:`portwatch.daemon.state`) and the alerting
state (:mod:`portwatch.alerts.store`) share about their files: reading a
bounded document, writing one atomically, parsing a list of entries where a
malformed entry is skipped and described (:func:`parse_entries`), and the
summary of those descriptions for a log line (:func:`problems_text`). May
import the standard library only.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

T = TypeVar("T")


#: Deepest nesting a state document may have. portwatch writes at most 6 levels; a
#: deeper file is corrupt (and a very deep one would exhaust the parser's recursion).
MAX_DEPTH = 64


def read_document(path: Path, max_size: int) -> object:
    """The JSON document in ``path``.

    The file is opened without blocking and must be a regular file (a FIFO or
    a device is refused, never waited on). Raises ``FileNotFoundError`` when
    there is no file, ``OSError`` when it cannot be read or is not a regular
    file, and ``ValueError`` (saying why) when it is larger than ``max_size``
    bytes, not UTF-8, not JSON, or nested deeper than :data:`MAX_DEPTH`.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        raw = fh.read(max_size + 1)
    if len(raw) > max_size:
        raise ValueError(f"larger than {max_size} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    if _depth_exceeds(doc, MAX_DEPTH):
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return doc


def _depth_exceeds(doc: object, limit: int) -> bool:
    """Whether lists and objects in ``doc`` nest deeper than ``limit`` (iterative: no recursion)."""
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def parse_entries(
    entries: Sequence[object],
    section: str,
    parse: Callable[[object], T],
    problems: list[str],
    errors: type[Exception] | tuple[type[Exception], ...] = ValueError,
) -> list[T]:
    """``parse`` applied to each of ``entries`` (the list ``section`` of a document), in order.

    An entry for which ``parse`` raises one of ``errors`` is skipped, and
    ``"<section>[<index>]: <error>"`` is appended to ``problems``. Returns the
    parsed entries; other exceptions propagate.
    """
    out: list[T] = []
    for i, entry in enumerate(entries):
        try:
            out.append(parse(entry))
        except errors as exc:
            problems.append(f"{section}[{i}]: {exc}")
    return out


def problems_text(problems: Sequence[str], shown: int = 5) -> str:
    """The first ``shown`` of ``problems`` joined by ``; ``, then ``; and N more``. Never raises."""
    text = "; ".join(problems[:shown])
    if len(problems) > shown:
        text += f"; and {len(problems) - shown} more"
    return text


def write_atomic(path: Path, document: Mapping[str, Any]) -> None:
    """Write ``document`` as JSON to ``path``: temporary file, fsync, rename, fsync of the directory.

    Creates the directory (mode 0700) if missing; the file is mode 0600. A
    reader sees the old document or the new one, never a mix. Raises
    ``OSError`` (the temporary file is removed).
    """
    data = (json.dumps(document, indent=1, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
