"""Files the proxy keeps beside the dataset (state, reviews, metrics, the dataset itself): readable by its own
user only, as the dataset's JSONL files always were. They hold conversations, addresses and key names."""

from __future__ import annotations

import os
from pathlib import Path

MODE = 0o600


def private(path: Path) -> Path:
    """``path``, created empty if it is missing, with mode 0600 either way (a file made by an earlier version with
    the default mode is narrowed too). SQLite gives its -wal and -shm files the database file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, MODE))
    os.chmod(path, MODE)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` at once (readers never see half a file), mode 0600."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, MODE)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    tmp.replace(path)
