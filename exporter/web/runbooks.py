"""The runbooks at ``/runbooks``: docs/runbooks.md (shipped in the package as alerts/runbooks.md) as a plain HTML
page, so every alert's ``runbook_url`` can point at the exporter itself, an address the admin controls, rather than
at a site that may not be published.

Only the Markdown the runbooks use is understood: headings (with GitHub's anchors, ``#bitbucketmirrordown``), fenced
code, paragraphs, bullet lists, inline code, bold and links."""

from __future__ import annotations

import html
import re
from functools import cache
from importlib import resources

STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:1.5em auto;padding:0 1em;color:#222;line-height:1.45}"
    "pre{background:#f4f4f4;padding:.6em;overflow-x:auto}code{background:#f4f4f4}"
)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-")


def _inline(text: str) -> str:
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    escaped = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', escaped)


def to_html(markdown: str) -> str:
    out: list[str] = []
    paragraph: list[str] = []
    in_code = in_list = False

    def flush() -> None:
        nonlocal in_list
        if paragraph:
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()
        if in_list:
            out.append("</ul>")
            in_list = False

    for line in markdown.splitlines():
        if line.startswith("```"):
            flush()
            out.append("</code></pre>" if in_code else "<pre><code>")
            in_code = not in_code
        elif in_code:
            out.append(html.escape(line))
        elif heading := re.match(r"^(#{1,3}) (.+)$", line):
            flush()
            level, text = len(heading.group(1)), heading.group(2).strip()
            out.append(f'<h{level} id="{anchor(text)}">{_inline(text)}</h{level}>')
        elif line.startswith("- "):
            if paragraph:
                flush()
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{_inline(line[2:])}</li>")
        elif not line.strip():
            flush()
        elif in_list and line.startswith("  "):
            out[-1] = out[-1].removesuffix("</li>") + " " + _inline(line.strip()) + "</li>"
        else:
            paragraph.append(line.strip())
    flush()
    return "\n".join(out)


@cache
def page() -> str:
    markdown = resources.files("alerts").joinpath("runbooks.md").read_text(encoding="utf-8")
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>Runbooks: Bitbucket mirror alerts</title>'
        f"<style>{STYLE}</style></head>\n<body>\n{to_html(markdown)}\n</body></html>\n"
    )
