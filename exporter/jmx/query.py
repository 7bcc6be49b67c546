"""Runs jmxquery's JVM once per node poll, with a hard timeout that kills it.

jmxquery's own ``JMXConnection.query`` blocks in ``subprocess.run`` and mishandles timeouts (a timed-out call can
raise AttributeError, or return an empty list as if nothing matched). So this module uses jmxquery's query model
(``JMXQuery.to_query_string``) and its bundled jar with the same command line, but starts the JVM with asyncio in its
own process group, so the event loop never blocks and a hung node's JVM is killed when the timeout passes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jmxquery

from exporter.processes import Timeout, run
from exporter.sources import FetchError

# Enough to tell what went wrong; the JVM's stderr can be a long stack trace.
_DETAIL_CHARS = 300


@dataclass(frozen=True, slots=True)
class JmxRow:
    """One attribute value of one MBean, as jmxquery reports it."""

    object_name: str
    attribute: str
    value: Any


def jmxquery_command(
    java: str, java_options: list[str], url: str, username: str | None, password: str | None, object_names: list[str]
) -> list[str]:
    """All queries of one node in one invocation, as jmxquery's jar takes them (the password is one of its arguments:
    ``run_jmxquery`` hands everything from ``-jar`` on to java in an argument file, never on its command line)."""
    queries = "".join(jmxquery.JMXQuery(name).to_query_string() + ";" for name in object_names)
    command = [java, *java_options, "-jar", jmxquery.JAR_PATH, "-url", url, "-json"]
    if username is not None:
        command += ["-u", username, "-p", password or ""]
    return [*command, "-q", queries]


def _redact(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text[:_DETAIL_CHARS]


def classify_failure(returncode: int, stdout: str, stderr: str) -> tuple[str, str]:
    """A reason label and a one-line detail for a failed jmxquery run."""
    with contextlib.suppress(ValueError):
        # jmxquery reports connection and query problems as a JSON object on stdout.
        report = json.loads(stdout)
        if isinstance(report, dict) and "error" in report:
            error, message = str(report["error"]), str(report.get("message", ""))
            return {"connection-error": "connection", "bad-query": "bad_query"}.get(error, "jmx_error"), message
    text = stderr or stdout
    if "SecurityException" in text or "Authentication failed" in text or "Invalid credentials" in text:
        return "auth", "authentication failed"
    if "ConnectException" in text or "ServiceUnavailableException" in text or "UnknownHost" in text:
        return "connection", text
    if "Error: Unable to access jarfile" in text or "Could not create the Java Virtual Machine" in text:
        return "java_failed", text
    return "jmx_error", f"exit {returncode}: {text}"


def parse_rows(stdout: str) -> list[JmxRow]:
    """jmxquery's JSON list; tolerant of the lines jmxquery fails to escape (it leaves backslashes and newlines raw):
    those attributes are skipped, the rest are kept."""
    try:
        items = json.loads(stdout)
    except ValueError:
        items = []
        for line in stdout.splitlines():
            line = line.strip().removeprefix("[").rstrip(" ,]")
            if line.startswith("{") and line.endswith("}"):
                with contextlib.suppress(ValueError):
                    items.append(json.loads(line))
        if not items and stdout.strip() not in ("", "[]"):
            raise FetchError("invalid_output", "jmxquery printed no JSON") from None
    if not isinstance(items, list):
        raise FetchError("invalid_output", f"jmxquery printed a {type(items).__name__}, not a list")
    rows = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("mBeanName"), str) and isinstance(item.get("attribute"), str):
            name = item["attribute"]
            if isinstance(item.get("attributeKey"), str):
                # A CompositeData attribute, flattened by jmxquery into one row per key.
                name = f"{name}.{item['attributeKey']}"
            rows.append(JmxRow(item["mBeanName"], name, item.get("value")))
    return rows


def argument_file(arguments: list[str]) -> str:
    """java's ``@file`` syntax (JDK 9+): one argument a line, quoted, with backslashes and quotes escaped and the
    characters java would read as escapes (newline, tab, ...) written as escapes."""
    lines = []
    for argument in arguments:
        escaped = argument.replace("\\", "\\\\").replace('"', '\\"')
        for raw, written in (("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"), ("\f", "\\f")):
            escaped = escaped.replace(raw, written)
        lines.append(f'"{escaped}"')
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def private_arguments(command: list[str]) -> Iterator[list[str]]:
    """``command`` with everything from ``-jar`` on in an argument file readable only by this user, removed when the
    JVM is done: ``ps`` and ``/proc/*/cmdline`` show ``java [options] @/tmp/bme-jmx-…/arguments`` only."""
    split = command.index("-jar")
    directory = Path(tempfile.mkdtemp(prefix=f"bme-jmx-{os.getpid()}-"))  # mode 0700
    try:
        path = directory / "arguments"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(argument_file(command[split:]))
        yield [*command[:split], f"@{path}"]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def run_jmxquery(command: list[str], time_limit: float, secret: str | None = None) -> list[JmxRow]:
    """Run one jmxquery JVM and return its rows; raise FetchError(reason) on any failure, after killing the JVM."""
    try:
        with private_arguments(command) as private:
            finished = await run(private, time_limit)
    except OSError as exc:
        # Name only the program: the rest of the command line holds the password.
        raise FetchError("java_missing", f"cannot start {command[0]}: {exc.strerror or type(exc).__name__}") from None
    except Timeout:
        raise FetchError("timeout", f"no answer within {time_limit:g} s; JVM killed") from None
    stdout = finished.stdout.decode("utf-8", "replace")
    if finished.returncode != 0:
        reason, detail = classify_failure(finished.returncode, stdout, finished.stderr.decode("utf-8", "replace"))
        raise FetchError(reason, _redact(detail, secret))
    return parse_rows(stdout)
