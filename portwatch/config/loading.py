"""Loading: the YAML file to a :class:`~portwatch.config.types.Config`, every error with its key path.

- :func:`load_config` reads a file (or returns the built-in defaults), parses
  it and, unless told not to, runs the :mod:`.preflight` file checks;
- :func:`parse_config` validates already-parsed YAML data (pure: no
  filesystem access);
- :func:`load_yaml` parses YAML text safely, refusing duplicate keys;
- :func:`config_to_dict` turns a Config back into data :func:`parse_config`
  accepts (``--dump-config``); :func:`schema_keys` lists every key accepted.

The file's shape is :data:`CONFIG`, assembled from the core sections
(:mod:`.shapes`) and every sink type's own section, learnt from the sink
registry (:func:`portwatch.alerts.sinks.sink_shapes`).

May import: yaml, the standard library, :mod:`portwatch.config`'s other
modules and :mod:`portwatch.alerts.sinks` (the registry; no I/O at import).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from portwatch.alerts.sinks import sink_shapes
from portwatch.config.grammar import show
from portwatch.config.preflight import preflight as run_preflight
from portwatch.config.schema import Section
from portwatch.config.shapes import config_shape
from portwatch.config.types import Config, ConfigError
from portwatch.model.text import os_error_text

__all__ = ["CONFIG", "MAX_FILE_SIZE", "config_to_dict", "load_config", "load_yaml", "parse_config",
           "schema_keys"]

#: The whole file's shape: every key, its check, its docs, its preflight.
CONFIG: Section = config_shape(sink_shapes())

#: The most digits a YAML integer may have (Python refuses to convert more than 4300).
_MAX_DIGITS = 4000

#: A configuration file larger than this is refused (bytes): a mistake such as a link to /dev/zero.
MAX_FILE_SIZE = 16 * 1024 * 1024


def schema_keys() -> list[str]:
    """Every key path the configuration accepts, in schema order.

    Nested keys are dotted (``thresholds.close_wait``), list items are
    ``[]`` (``services[].port``), ``severities`` lists one key per kind
    (``severities.self_connect``), sink keys are under
    ``alerts.sinks.NAME``. Other free-form mapping keys (user names) are not
    listed. Takes nothing; never raises.
    """
    return list(CONFIG.keys(""))


def parse_config(data: object, source: str = "<string>") -> Config:
    """Validate already-parsed YAML ``data`` and build the :class:`Config`. Pure: reads no file.

    ``None`` (an empty document) gives the built-in defaults. ``source``
    names where the data came from, for the error. Returns the Config.
    Raises :class:`ConfigError` listing every problem found (not just the
    first), each as ``"path: problem"``.
    """
    errors: list[str] = []
    try:
        config = CONFIG.parse(data, "", errors)
    except RecursionError:
        raise ConfigError(["the document is nested too deeply"], source) from None
    if errors or not isinstance(config, Config):
        raise ConfigError(errors or ["invalid configuration"], source)
    return config


def config_to_dict(config: Config) -> dict[str, object]:
    """Plain data (str keys; str, int, float, list, dict values) describing ``config`` fully.

    Every key is present except optional ones that are unset (None).
    ``parse_config(config_to_dict(c)) == c`` holds for any ``c`` that
    :func:`parse_config` or :func:`load_config` built. Never raises for such a config.
    """
    data: dict[str, object] = CONFIG.dump(config)
    return data


class _UniqueKeys(yaml.constructor.SafeConstructor):
    """A safe constructor that records duplicate mapping keys instead of keeping the last one,
    and refuses an integer too long to convert. Mixed into a loader before its parser."""

    duplicates: list[str]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Construct the mapping as SafeLoader does, noting each repeated key with its line."""
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable key: SafeLoader reports it below
                continue
            mark = key_node.start_mark
            if first is None:
                seen[key] = mark.line
            else:
                self.duplicates.append(
                    f"line {mark.line + 1}, column {mark.column + 1}: duplicate key {show(key)}"
                    f" (first at line {first + 1})"
                )
        return super().construct_mapping(node, deep=deep)


    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """An int as SafeLoader builds it, refusing one too long to convert (with its line)."""
        digits = sum(c.isdigit() for c in str(node.value))
        if digits > _MAX_DIGITS:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {digits} digits is too long (at most {_MAX_DIGITS})", node.start_mark)
        value: int = super().construct_yaml_int(node)
        return value


class _UniqueKeyLoader(_UniqueKeys, yaml.SafeLoader):
    """``yaml.SafeLoader`` (pure Python: its error messages are the ones users see) with :class:`_UniqueKeys`."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates = []


_INT_TAG = "tag:yaml.org,2002:int"
_UniqueKeyLoader.add_constructor(_INT_TAG, _UniqueKeyLoader.construct_yaml_int)  # type: ignore[type-var]

_CSafeLoader: Any = getattr(yaml, "CSafeLoader", None)
if _CSafeLoader is not None:
    class _FastUniqueKeyLoader(_UniqueKeys, _CSafeLoader):  # type: ignore[misc]
        """The same constructor on libyaml's parser (about 10x faster on a large file).

        Its error messages differ from the pure-Python parser's: a document it
        refuses is parsed again by :class:`_UniqueKeyLoader` for the message.
        """

        def __init__(self, stream: str) -> None:
            _CSafeLoader.__init__(self, stream)
            self.duplicates = []

    _FastUniqueKeyLoader.add_constructor(_INT_TAG, _FastUniqueKeyLoader.construct_yaml_int)  # type: ignore[type-var]


def _yaml_error(exc: yaml.YAMLError, text: str) -> str:
    """A YAML error as one line: ``line L, column C: invalid YAML: problem (context at line N)``."""
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[:exc.position]
        line, column = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return (f"line {line}, column {column}: invalid YAML: control character #x{char:04x}"
                " is not allowed (write it as an escape in a double-quoted string)")
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        text = f"line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {exc.problem}"
        if exc.context and exc.context_mark is not None:
            text += f" ({exc.context} at line {exc.context_mark.line + 1})"
        return text
    return f"invalid YAML: {' '.join(str(exc).split())}"


def load_yaml(text: str, source: str = "<string>") -> object:
    """Parse YAML ``text`` safely (no object construction), refusing duplicate keys.

    Returns the data (``None`` for an empty document). Raises
    :class:`ConfigError` naming ``source`` for a syntax error (with line and
    column; a control character is one), duplicate keys (all of them, with
    lines), a number YAML cannot build, or nesting too deep.
    """
    if _CSafeLoader is not None:
        try:
            return _load_with(_FastUniqueKeyLoader, text, source)
        except ConfigError:
            pass  # parsed again below, for the pure-Python parser's message
    return _load_with(_UniqueKeyLoader, text, source)


def _load_with(loader_class: Any, text: str, source: str) -> object:
    """``text`` parsed by a loader of ``loader_class``. Raises :class:`ConfigError` (see :func:`load_yaml`)."""
    loader: Any = None
    try:
        loader = loader_class(text)
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_error(exc, text)], source) from None
    except RecursionError:
        raise ConfigError(["invalid YAML: the document is nested too deeply"], source) from None
    finally:
        if loader is not None:
            loader.dispose()
    if loader.duplicates:
        raise ConfigError(loader.duplicates, source)
    return data


def _read(path: Path, source: str) -> bytes:
    """The bytes of the regular file ``path`` (at most :data:`MAX_FILE_SIZE`), opened without blocking.

    Raises :class:`ConfigError` (``cannot read: ...``) for a missing file,
    permission denied, a directory, anything but a regular file (a FIFO
    never hangs the read), a file too large, and other OS errors.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise ConfigError(["cannot read: no such file"], source) from None
    except IsADirectoryError:
        raise ConfigError(["cannot read: is a directory, not a YAML file"], source) from None
    except PermissionError:
        raise ConfigError(["cannot read: permission denied"], source) from None
    except OSError as exc:
        raise ConfigError([f"cannot read: {os_error_text(exc)}"], source) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(["cannot read: is a directory, not a YAML file"], source)
        if not stat.S_ISREG(mode):
            raise ConfigError(["cannot read: not a regular file"], source)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_SIZE and (chunk := os.read(fd, 1024 * 1024)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError([f"cannot read: {os_error_text(exc)}"], source) from None
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    if len(raw) > MAX_FILE_SIZE:
        raise ConfigError([f"cannot read: larger than {MAX_FILE_SIZE // (1024 * 1024)} MiB"], source)
    return raw


def load_config(path: Path | None, *, preflight: bool = True) -> Config:
    """Read and validate the YAML configuration file at ``path``; then, with ``preflight``, check its files.

    ``None`` gives the built-in defaults (``Config()``), as does an empty file
    (or one with only comments). With ``preflight`` (the default: the daemon
    and ``check-config``), the TLS, CA and token files must be readable
    regular files and ``exec`` programs executable (:mod:`.preflight`);
    ``portwatch scan`` passes False. Returns the Config. Raises
    :class:`ConfigError` with ``source`` = the path for: a missing file,
    permission denied, a directory or other non-regular file, a file too
    large, text that is not UTF-8, a YAML syntax error (with line and
    column), duplicate keys, a top level that is not a mapping, every
    validation problem, and (after those are fixed) every preflight problem.
    """
    if path is None:
        return Config()
    source = str(path)
    raw = _read(Path(path), source)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"not UTF-8 text: invalid byte at offset {exc.start}"], source
        ) from None
    config = parse_config(load_yaml(text, source), source)
    if preflight:
        problems = run_preflight(config, CONFIG)
        if problems:
            raise ConfigError(problems, source)
    return config
