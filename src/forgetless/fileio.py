"""Reading user files with precise errors, and writing files so that a crash never leaves half of one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from .errors import ForgetlessError


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a JSONL file; blank lines are skipped, a malformed line is reported with its number."""
    return [row for _, row in read_jsonl_numbered(path)]


def read_jsonl_numbered(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs, so that later field checks can name the offending line."""
    path = Path(path)
    if not path.is_file():
        raise ForgetlessError(f"file not found: {path}")
    rows: list[tuple[int, dict[str, Any]]] = []
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ForgetlessError(
                    f"{path}:{line_number}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line)"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ForgetlessError(f"{path}:{line_number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ForgetlessError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
            rows.append((line_number, row))
    if not rows:
        raise ForgetlessError(f"{path}: no rows (the file is empty)")
    return rows


def check_output_path(path: str | os.PathLike, option: str, folder: bool) -> None:
    """Refuse an output path that cannot be written, before any model loads; the message names the CLI option.

    Nothing is created here: the nearest folder that exists must be a writable folder (the writes create the
    rest below it), and the path itself, if it exists, must be of the right kind.
    """
    path = Path(path)
    if path.exists() and folder and not path.is_dir():
        raise ForgetlessError(f"{option} {path} is a file, not a folder")
    if path.is_dir() and not folder:
        raise ForgetlessError(f"{option} {path} is a folder, not a file")
    nearest = path if folder else path.parent
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        raise ForgetlessError(f"{option} {path} cannot be written: {nearest} is a file, not a folder")
    if not os.access(nearest, os.W_OK | os.X_OK):  # also false on a read-only file system
        raise ForgetlessError(f"{option} {path} cannot be written: {nearest} is not writable")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
