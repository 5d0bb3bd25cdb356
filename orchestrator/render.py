"""Markdown and HTML from one list of blocks, so both files of a report say the same thing.

A block is (kind, payload): h1/h2/h3 and p take text, list a list of strings, table a
(header, rows) pair of strings, figure a `Picture`; a `Bold` cell is rendered in bold. A figure
is a relative image link in markdown and an embedded data URI in HTML (the page stays one file).
"""

from __future__ import annotations

import html
from dataclasses import dataclass


class Bold(str):
    """A table cell rendered in bold."""


@dataclass(frozen=True)
class Picture:
    """An image: `src` relative to the report (markdown link), `data_uri` embedded in HTML."""

    src: str
    alt: str
    caption: str
    data_uri: str


Table = tuple[list[str], list[list[str]]]  # header, rows
Block = tuple[str, "str | list[str] | Table | Picture"]  # kind: h1 h2 h3 p list table figure


def to_markdown(blocks: list[Block]) -> str:
    """GitHub-flavoured markdown; `*` and `|` in text are escaped so marks stay literal."""

    def text(x: str) -> str:
        escaped = x.replace("|", "\\|").replace("*", "\\*")
        return f"**{escaped}**" if isinstance(x, Bold) else escaped

    out = []
    for kind, payload in blocks:
        if kind == "table":
            head, rows = payload
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            out.append("\n".join(lines + ["| " + " | ".join(map(text, r)) + " |" for r in rows]))
        elif kind == "list":
            out.append("\n".join(f"- {text(item)}" for item in payload) or "- none")
        elif kind == "figure":
            alt = payload.alt.replace("]", ")").replace("[", "(")
            out.append(f"![{alt}]({payload.src})\n\n{text(payload.caption)}")
        else:
            prefix = "#" * int(kind[1]) + " " if kind.startswith("h") else ""
            out.append(prefix + text(payload))
    return "\n\n".join(out) + "\n"


CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em;font-variant-numeric:tabular-nums}"
    "th,td{border:1px solid #ccc;padding:.2em .5em}th{background:#eee}"
    "tr:nth-child(even){background:#f8f8f8}"
    "figure{margin:1em 0 2em}figure img{max-width:100%;height:auto;border:1px solid #ddd}"
    "figcaption{color:#444;font-size:.9em;margin-top:.3em}"
)


def to_html(blocks: list[Block], title: str) -> str:
    """One self-contained page (inline CSS, no scripts, no external files) with the same content."""

    def cell(x: str, tag: str = "td") -> str:
        inner = f"<strong>{html.escape(x)}</strong>" if isinstance(x, Bold) else html.escape(x)
        return f"<{tag}>{inner}</{tag}>"

    body = []
    for kind, payload in blocks:
        if kind == "table":
            head, rows = payload
            trs = "".join("<tr>" + "".join(map(cell, r)) + "</tr>" for r in rows)
            thead = "".join(cell(h, "th") for h in head)
            body.append(f"<table><thead><tr>{thead}</tr></thead><tbody>{trs}</tbody></table>")
        elif kind == "figure":
            body.append(
                f"<figure><img src='{payload.data_uri}' alt='{html.escape(payload.alt)}'>"
                f"<figcaption>{html.escape(payload.caption)}</figcaption></figure>"
            )
        elif kind == "list":
            items = "".join(f"<li>{html.escape(i)}</li>" for i in payload) or "<li>none</li>"
            body.append(f"<ul>{items}</ul>")
        else:
            body.append(f"<{kind}>{html.escape(payload)}</{kind}>")
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style>"
    return (
        f"<!DOCTYPE html>\n<html><head>{head}</head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
