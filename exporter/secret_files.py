"""Passwords given inline or in files (Kubernetes Secret mounts). A file is looked at again at most once a second
(``RECHECK_SECONDS``) and read again only when it changed (its inode, size or modification time), so a rotated secret
applies within a second. Code on the event loop calls ``prepare`` first: the look and the read then happen on a
thread, and the synchronous ``read_secret_file`` finds the answer cached.

A secret file must be a regular file of at most ``MAX_SECRET_BYTES``: it is opened non-blocking after ``stat`` says
it is one, so a FIFO, a device (``/dev/zero``) or a huge file is refused with a clear error instead of freezing or
exhausting the exporter.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import threading
import time
from pathlib import Path

from pydantic import SecretStr, field_validator

from exporter.strict import StrictModel

MAX_SECRET_BYTES = 64 * 1024

RECHECK_SECONDS = 1.0

# Path -> (what stat said when it was read, the secret, when stat was last asked (monotonic)).
_cache: dict[str, tuple[tuple[int, int, int, int], SecretStr, float]] = {}
_cache_lock = threading.Lock()


def _recent(path: Path) -> SecretStr | None:
    with _cache_lock:
        cached = _cache.get(str(path))
    if cached is not None and time.monotonic() - cached[2] < RECHECK_SECONDS:
        return cached[1]
    return None


async def prepare(*paths: Path | None) -> None:
    """Look at (and if changed, read) each secret file on a thread, unless it was looked at within the last second:
    the synchronous ``read_secret_file`` that follows finds it cached. A file that cannot be read is left for it to
    report."""
    for path in paths:
        if path is not None and _recent(path) is None:
            with contextlib.suppress(ValueError):
                await asyncio.to_thread(_checked, path)


def read_secret_file(path: Path) -> SecretStr:
    """The file's content, stripped; ValueError naming the file and why (never its content)."""
    return _recent(path) or _checked(path)


def _checked(path: Path) -> SecretStr:
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path} is not a regular file")
    if info.st_size > MAX_SECRET_BYTES:
        raise ValueError(f"{path} is larger than {MAX_SECRET_BYTES // 1024} KiB")
    signature = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    with _cache_lock:
        cached = _cache.get(str(path))
    secret = cached[1] if cached is not None and cached[0] == signature else SecretStr(_read(path))
    with _cache_lock:
        _cache[str(path)] = (signature, secret, time.monotonic())
    return secret


def _read(path: Path) -> str:
    try:
        # Non-blocking: should the file have become a FIFO since stat, opening it does not wait for a writer.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise ValueError(f"{path} is not a regular file")
        raw = os.read(descriptor, MAX_SECRET_BYTES + 1)
    except BlockingIOError:
        raise ValueError(f"{path} is not a regular file") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    finally:
        os.close(descriptor)
    if len(raw) > MAX_SECRET_BYTES:
        raise ValueError(f"{path} is larger than {MAX_SECRET_BYTES // 1024} KiB")
    try:
        secret = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if not secret:
        # An empty file is a Secret mounted before it was filled in: sending an empty password only earns a 401.
        raise ValueError(f"{path} is empty")
    return secret


def readable_secret_file(path: Path | None) -> Path | None:
    """A field validator: the file must be readable when the config is loaded, not first at a poll."""
    if path is not None:
        read_secret_file(path)
    return path


class UserPassword(StrictModel):
    """A username with a password or a password_file; subclasses decide which combinations are valid."""

    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None

    _password_file_readable = field_validator("password_file")(readable_secret_file)

    def password_given(self) -> bool:
        """For validators: whether a password was given, raising ValueError if it was given both ways."""
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        return self.password is not None or self.password_file is not None

    def resolved_password(self) -> SecretStr | None:
        if self.password_file is not None:
            return read_secret_file(self.password_file)
        return self.password
