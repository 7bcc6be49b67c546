"""Secret files are files, so a FIFO or a device cannot stall the event loop: regular files of at most 64 KiB, opened
without blocking, read again only when they change; a FIFO, a device or a huge file is a clear error, never a hang or an
exhausted memory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from exporter import secret_files
from exporter.secret_files import MAX_SECRET_BYTES, read_secret_file


def test_a_secret_is_read_again_only_when_its_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secret_files, "RECHECK_SECONDS", 0.0)  # looked at every time: the read is what is counted
    path = tmp_path / "password"
    path.write_text("first\n")
    reads: list[Path] = []
    real = secret_files._read

    def counted(where: Path) -> str:
        reads.append(where)
        return real(where)

    monkeypatch.setattr(secret_files, "_read", counted)
    assert [read_secret_file(path).get_secret_value() for _ in range(5)] == ["first"] * 5
    assert len(reads) == 1
    replacement = tmp_path / "new"
    replacement.write_text("second\n")
    replacement.replace(path)  # a Kubernetes Secret rotates by swapping the file: a new inode
    assert read_secret_file(path).get_secret_value() == "second" and len(reads) == 2


@pytest.mark.parametrize("kind", ["fifo", "device", "huge", "directory"])
def test_what_is_not_a_small_regular_file_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "secret"
    if kind == "fifo":
        os.mkfifo(path)  # no writer: a blocking open would wait for ever
    elif kind == "device":
        path = Path("/dev/zero")  # endless: a plain read would exhaust memory
    elif kind == "huge":
        with path.open("wb") as sparse:
            sparse.truncate(1 << 30)  # 1 GiB
    else:
        path.mkdir()
    started = time.monotonic()
    with pytest.raises(ValueError) as refused:
        read_secret_file(path)
    assert time.monotonic() - started < 1.0
    message = str(refused.value)
    assert str(path) in message
    assert ("not a regular file" in message) if kind != "huge" else (f"{MAX_SECRET_BYTES // 1024} KiB" in message)


def test_a_file_is_looked_at_at_most_once_a_second_and_prepare_does_it_on_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import threading

    path = tmp_path / "token"
    path.write_text("one\n")
    looked: list[str] = []
    real = secret_files._checked

    def watched(where: Path) -> SecretStr:
        looked.append(threading.current_thread().name)
        return real(where)

    monkeypatch.setattr(secret_files, "_checked", watched)
    asyncio.run(secret_files.prepare(path))
    assert [read_secret_file(path).get_secret_value() for _ in range(100)] == ["one"] * 100
    assert len(looked) == 1 and looked[0] != threading.main_thread().name  # once, and not on the loop's thread
