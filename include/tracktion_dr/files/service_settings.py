"""One setting a service reads at start: a ``NAME=value`` line of an environment file or a
dotted key of a JSON file (the plan's ``ServiceSetting``), read and written in place.

``dr_third_party_failover`` switches a service's provider endpoint (or mode) here. A write
changes only that setting: every other line of an environment file stays byte for byte,
the file keeps its mode and owner (a new environment file is created 0600: it may hold
secrets), and the new content replaces the old one atomically (written beside, fsynced,
renamed). The previous bytes are kept by the configuration safety snapshot the DAG takes
just before (the plan refuses a setting file that snapshot would not cover).

Values are never logged here: an environment file may hold secrets next to the setting.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tracktion_dr.core.errors import StepFailed
from tracktion_dr.core.plan import ServiceSetting


def _env_key(line: str) -> str:
    key, sep, _ = line.partition("=")
    key = key.strip().removeprefix("export ").strip()
    return key if sep and not key.startswith("#") else ""


def read_setting(setting: ServiceSetting) -> str | None:
    """The setting's value, or None when the file or the key is absent (the service then
    uses its own default). The last line wins in an environment file, as the service
    reads it."""
    path = Path(setting.file)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StepFailed(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if setting.format == "env":
        value = None
        for line in text.splitlines():
            if _env_key(line) == setting.key:
                value = line.partition("=")[2]
        return value
    document = _json_document(path, text)
    for part in setting.key.split("."):
        if not isinstance(document, dict) or part not in document:
            return None
        document = document[part]
    return document if isinstance(document, str) else json.dumps(document)


def _json_document(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StepFailed(f"{path}: not valid JSON ({exc})") from None


def _with_env_value(text: str, key: str, value: str) -> str:
    lines = text.splitlines(keepends=True)
    found = False
    for i, line in enumerate(lines):
        if _env_key(line) == key:
            ending = "\n" if line.endswith("\n") else ""
            lines[i] = f"{key}={value}{ending}"
            found = True
    if not found:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append(f"{key}={value}\n")
    return "".join(lines)


def _with_json_value(path: Path, text: str, key: str, value: str) -> str:
    document = _json_document(path, text) if text.strip() else {}
    node = document
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node, dict):
            raise StepFailed(f"{path}: {key} cannot be set (a parent is not an object)")
        node = node.setdefault(part, {})
    if not isinstance(node, dict):
        raise StepFailed(f"{path}: {key} cannot be set (a parent is not an object)")
    node[parts[-1]] = value
    return json.dumps(document, indent=2) + "\n"


def write_setting(setting: ServiceSetting, value: str) -> bool:
    """Set the setting to ``value``; False (nothing written) when it already holds it."""
    if "\n" in value or "\r" in value:
        raise StepFailed(f"{setting.key}: a setting value must be a single line")
    if read_setting(setting) == value:
        return False
    path = Path(setting.file)
    try:
        text = path.read_text()
        info = path.stat()
    except FileNotFoundError:
        text, info = "", None
    if setting.format == "env":
        new = _with_env_value(text, setting.key, value)
    else:
        new = _with_json_value(path, text, setting.key, value)
    _replace_atomically(path, new.encode(), info)
    return True


def _replace_atomically(path: Path, data: bytes, info: os.stat_result | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600 if info is None else info.st_mode & 0o7777)
        if info is not None and (os.geteuid() == 0):
            os.fchown(fd, info.st_uid, info.st_gid)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
