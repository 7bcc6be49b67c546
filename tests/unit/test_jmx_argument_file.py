"""jmxquery's arguments reach java in an argument file (so no secret is on its command line): written in java's @file
syntax so every character survives, readable only by this user, and gone when the JVM is done."""

from __future__ import annotations

import stat
from pathlib import Path

from exporter.jmx.query import argument_file, jmxquery_command, private_arguments

TRICKY = "p\"a s\\s\ttab\nnewline 'single' #hash @at"


def test_every_character_is_escaped_as_java_reads_it() -> None:
    text = argument_file(["-p", TRICKY, ""])
    assert text.splitlines() == ['"-p"', '"p\\"a s\\\\s\\ttab\\nnewline \'single\' #hash @at"', '""']


def test_the_command_line_carries_only_the_file_which_is_private_and_removed() -> None:
    command = jmxquery_command("java", ["-Xmx64m"], "service:jmx:x", "monitor", TRICKY, ["a:*"])
    with private_arguments(command) as private:
        assert private[:2] == ["java", "-Xmx64m"] and len(private) == 3 and private[2].startswith("@")
        assert TRICKY not in " ".join(private)
        path = Path(private[2][1:])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert path.read_text().splitlines()[0] == '"-jar"'
    assert not path.exists() and not path.parent.exists()
