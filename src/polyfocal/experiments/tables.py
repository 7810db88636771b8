"""One table model for every report (``compare``, ``sweep``, ``reproduce``): a header and rows of text,
written as Markdown, HTML or aligned columns for the terminal."""

from __future__ import annotations

import html
from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in self.rows])

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def text(self) -> str:
        """Left-aligned columns two spaces apart, a dashed rule under the header."""
        widths = [max(len(row[i]) for row in [self.header, *self.rows]) for i in range(len(self.header))]

        def line(row):
            return "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()

        return "\n".join([line(self.header), line(["-" * w for w in widths]), *map(line, self.rows)])
