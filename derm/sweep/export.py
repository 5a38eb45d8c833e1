"""Write a sweep's leaderboard as Markdown, CSV, HTML and JSON, with its plots.

- ``leaderboard.md``: a pipe table to paste into a README, numbers to 3 decimals, the
  caption under it;
- ``leaderboard.html``: one self-contained page (inline CSS and script, nothing fetched);
  click a header to sort by it;
- ``leaderboard.csv`` / ``leaderboard.json``: every column at full precision, failed
  trials with their error (JSON adds the sweep, metric, mode and caption);
- ``plots/``: see `derm.sweep.plots`.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from derm.errors import ConfigError
from derm.search_space import SearchSpace
from derm.sweep.table import annotate, caption, display_columns, display_table
from derm.text_formats import json_value, pipe_table

FORMATS = ("md", "csv", "html", "json")
STEM = "leaderboard"


def parse_formats(text: str) -> tuple[str, ...]:
    """'md,csv' -> ('md', 'csv'); an unknown name is a ConfigError listing the allowed ones."""
    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"--format: unknown format {unknown[0] if unknown else repr(text)} "
                        f"(allowed: a comma-separated list of {', '.join(FORMATS)})")
    return formats


def export_board(board: pd.DataFrame, space: SearchSpace, out_dir: str | Path,
                 formats: Iterable[str] = FORMATS, top: int | None = None, plots: bool = True) -> list[Path]:
    """Write the ranked board (`derm.sweep.board.rank_trials`) in ``formats`` under ``out_dir``.

    ``top`` keeps the first N rows of the tables; the Pareto front and the plots use every trial.
    Returns the files written.

        export_board(board, plan.space, plan.sweep_dir, formats=("md",), plots=False)
        # -> [PosixPath('.../leaderboard.md')]
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    annotated = annotate(board, space)
    shown = annotated.head(top) if top is not None else annotated
    note = caption(space, annotated)
    writers = {"md": write_markdown, "csv": write_csv, "html": write_html, "json": write_json}
    paths = [writers[f](shown, space, note, out_dir / f"{STEM}.{f}") for f in formats]
    if plots:
        from derm.sweep.plots import plot_best_so_far, plot_metric_vs_parameters

        paths.append(plot_best_so_far(annotated, space.sweep.metric, space.sweep.mode,
                                      out_dir / "plots" / "best_so_far.png"))
        paths += plot_metric_vs_parameters(annotated, space, out_dir / "plots")
    return paths


def markdown_table(board: pd.DataFrame, space: SearchSpace, note: str) -> str:
    """The pipe table with ``note`` (its caption) under it, as pasted into a README."""
    table = display_table(board, space)
    right = [c.header for c in display_columns(board, space) if c.numeric]
    return pipe_table(table.columns, table.itertuples(index=False), right) + "\n" + note + "\n"


def write_markdown(board: pd.DataFrame, space: SearchSpace, note: str, path: Path) -> Path:
    path.write_text(markdown_table(board, space, note))
    return path


def write_csv(board: pd.DataFrame, space: SearchSpace, note: str, path: Path) -> Path:
    board.to_csv(path, index=False)
    return path


def write_json(board: pd.DataFrame, space: SearchSpace, note: str, path: Path) -> Path:
    """{sweep, task, metric, mode, caption, rows}; rows are the CSV's, NaN as null."""
    rows = [json_value(row) for row in board.to_dict("records")]
    document = {"sweep": space.name, "task": space.task, "metric": space.sweep.metric, "mode": space.sweep.mode,
                "caption": note, "rows": rows}
    path.write_text(json.dumps(document, indent=2, allow_nan=False))
    return path


def write_html(board: pd.DataFrame, space: SearchSpace, note: str, path: Path) -> Path:
    path.write_text(html_page(board, space, note))
    return path


def html_page(board: pd.DataFrame, space: SearchSpace, note: str) -> str:
    """One self-contained page: the table, sortable by clicking a header, and its caption.

    Each cell carries its full-precision value in ``data-sort`` so that sorting is numeric
    even where the text is rounded; failed trials show their error on hover."""
    columns = display_columns(board, space)
    table = display_table(board, space)
    head = "".join(f'<th class="{"num" if c.numeric else "text"}" title="{html.escape(c.key)}">'
                   f"{html.escape(c.header)}</th>" for c in columns)
    body = []
    for i, (_, row) in enumerate(board.iterrows()):
        error = str(row.get("error") or "")
        title = f' title="{html.escape(error)}"' if error and error != "nan" else ""
        cells = "".join(f'<td class="{"num" if c.numeric else "text"}" '
                        f'data-sort="{html.escape(_sort_key(row.get(c.key)))}">'
                        f"{html.escape(table.iloc[i][c.header])}</td>" for c in columns)
        body.append(f'<tr class="{html.escape(str(row.get("status", "")).replace(" ", "-"))}"{title}>{cells}</tr>')
    return HTML_TEMPLATE.format(title=html.escape(f"derm sweep {space.name}: leaderboard"), head=head,
                                body="\n".join(body), caption=html.escape(note),
                                style=STYLE, script=SORT_SCRIPT)


def _sort_key(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(int(value))
    return repr(value.item() if hasattr(value, "item") else value) if not isinstance(value, str) else value


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { padding: 0.3rem 0.6rem; border-bottom: 1px solid #ddd; white-space: nowrap; }
th { cursor: pointer; background: #f3f3f3; position: sticky; top: 0; user-select: none; }
th:hover { background: #e4e4e4; }
th.asc::after { content: " \\25B2"; } th.desc::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed { color: #a33; } tr.stopped-early, tr.running { color: #777; }
p.caption { max-width: 60rem; color: #555; font-size: 0.85rem; }
"""

# Numbers sort numerically, text alphabetically; empty cells (failed trials) always last.
SORT_SCRIPT = """
document.querySelectorAll("table.leaderboard th").forEach(function (th, column) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var ascending = !th.classList.contains("asc");
    table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
    th.classList.add(ascending ? "asc" : "desc");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[column].getAttribute("data-sort"), y = b.cells[column].getAttribute("data-sort");
      if (x === "" || y === "") { return (x === "") - (y === ""); }
      var nx = Number(x), ny = Number(y);
      var order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""

HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<h1>{title}</h1>
<table class="leaderboard">
<thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody>
</table>
<p class="caption">{caption}</p>
<script>{script}</script>
</body>
</html>
"""
