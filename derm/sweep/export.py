"""Write a sweep's leaderboard as Markdown, CSV, HTML and JSON, with its plots.

- ``leaderboard.md``: a pipe table to paste into a README, numbers to 3 decimals, the
  caption under it, then what mattered (parameter importance, `derm.sweep.importance`);
- ``leaderboard.html``: one self-contained page (inline CSS and script, the importance
  figures as base64 images, nothing fetched); click a header to sort by it;
- ``leaderboard.csv`` / ``leaderboard.json``: every column at full precision, failed
  trials with their error (JSON adds the sweep, metric, mode, caption and importance);
- ``plots/``: see `derm.sweep.plots`.

Importance is computed only with the plots (``python -m derm.leaderboard``), never by the
sweep's own end-of-sweep export (``plots=False``).
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from derm.errors import ConfigError
from derm.search_space import SearchSpace
from derm.sweep.table import annotate, caption, display_columns, display_table
from derm.text_formats import json_value, pipe_table

if TYPE_CHECKING:
    from derm.sweep.importance import Importance

FORMATS = ("md", "csv", "html", "json")
STEM = "leaderboard"
IMPORTANCE_FIGURES = ("importance.png", "parallel_coordinates.png")


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

    ``top`` keeps the first N rows of the tables; the Pareto front, the plots and the
    parameter importance use every trial. ``plots=False`` writes no figures and computes no
    importance. Returns the files written (tables first).

        export_board(board, plan.space, plan.sweep_dir, formats=("md",), plots=False)
        # -> [PosixPath('.../leaderboard.md')]
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    annotated = annotate(board, space)
    shown = annotated.head(top) if top is not None else annotated
    note = caption(space, annotated)
    figures, importance, embedded = [], None, []
    if plots:
        figures, importance, embedded = write_plots(board, annotated, space, out_dir / "plots")
    writers = {"md": partial(write_markdown, importance=importance), "csv": write_csv,
               "html": partial(write_html, importance=importance, images=embedded),
               "json": partial(write_json, importance=importance)}
    return [writers[f](shown, space, note, out_dir / f"{STEM}.{f}") for f in formats] + figures


def write_plots(board: pd.DataFrame, annotated: pd.DataFrame, space: SearchSpace,
                folder: Path) -> tuple[list[Path], Importance, list[Path]]:
    """Every figure, and the importance: (figures written, importance, the importance figures).

    The importance figures exist only when the importance was computed; an earlier
    export's copies are removed otherwise, so ``plots/`` never shows stale numbers.
    """
    from derm.sweep.importance import parameter_importance
    from derm.sweep.plots import (
        plot_best_so_far, plot_importance, plot_metric_vs_parameters, plot_parallel_coordinates, plot_pareto_front,
    )

    sweep = space.sweep
    paths = [plot_best_so_far(annotated, sweep.primary_metric, sweep.primary_mode, folder / "best_so_far.png"),
             *plot_metric_vs_parameters(annotated, space, folder)]
    if sweep.multi_objective:
        paths.append(plot_pareto_front(annotated, sweep.metrics[:2], sweep.modes[:2], folder / "pareto_front.png"))
    importance = parameter_importance(board, space)
    if not importance.computed:
        for name in IMPORTANCE_FIGURES:
            (folder / name).unlink(missing_ok=True)
        return paths, importance, []
    embedded = [plot_importance(importance, folder / IMPORTANCE_FIGURES[0]),
                plot_parallel_coordinates(importance, folder / IMPORTANCE_FIGURES[1])]
    return paths + embedded, importance, embedded


def markdown_table(board: pd.DataFrame, space: SearchSpace, note: str) -> str:
    """The pipe table with ``note`` (its caption) under it, as pasted into a README."""
    table = display_table(board, space)
    right = [c.header for c in display_columns(board, space) if c.numeric]
    return pipe_table(table.columns, table.itertuples(index=False), right) + "\n" + note + "\n"


def importance_markdown(importance: Importance) -> str:
    """What mattered, for under the table: a pipe table of the shares and the note, or the one
    line saying why there is none."""
    if not importance.computed:
        return f"\n{importance.note}\n"
    rows = [[name, *(format(shares[name], ".3f") for shares in importance.shares.values())]
            for name in importance.parameters]
    return ("\n### What mattered\n\n" + pipe_table(["Parameter", *importance.shares], rows, importance.shares)
            + "\n" + importance.note + " " + importance_legend(importance) + "\n")


def importance_legend(importance: Importance) -> str:
    """What the two columns measure."""
    return (f"Each column sums to 1. PED-ANOVA: how differently a parameter's values are spread among the "
            f"best {importance.top_trials} trials than among all counted ones; fANOVA: the share of the "
            f"metric's variance a random forest (seed {importance.seed}) puts on the parameter alone.")


def write_markdown(board: pd.DataFrame, space: SearchSpace, note: str, path: Path,
                   importance: Importance | None = None) -> Path:
    text = markdown_table(board, space, note)
    if importance is not None:
        text += importance_markdown(importance)
    path.write_text(text)
    return path


def write_csv(board: pd.DataFrame, space: SearchSpace, note: str, path: Path) -> Path:
    board.to_csv(path, index=False)
    return path


def write_json(board: pd.DataFrame, space: SearchSpace, note: str, path: Path,
               importance: Importance | None = None) -> Path:
    """{sweep, task, metric, mode, caption, importance, rows}; rows are the CSV's, NaN as null;
    importance is `Importance.to_json`, null when the export ran without plots."""
    rows = [json_value(row) for row in board.to_dict("records")]
    document = {"sweep": space.name, "task": space.task, "metric": space.sweep.metric, "mode": space.sweep.mode,
                "caption": note, "importance": json_value(importance.to_json()) if importance is not None else None,
                "rows": rows}
    path.write_text(json.dumps(document, indent=2, allow_nan=False))
    return path


def write_html(board: pd.DataFrame, space: SearchSpace, note: str, path: Path,
               importance: Importance | None = None, images: Sequence[Path] = ()) -> Path:
    path.write_text(html_page(board, space, note, importance, images))
    return path


def html_page(board: pd.DataFrame, space: SearchSpace, note: str, importance: Importance | None = None,
              images: Sequence[Path] = ()) -> str:
    """One self-contained page: the table, sortable by clicking a header, its caption and,
    with ``importance``, what mattered (``images`` embedded as base64 PNGs).

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
                                importance=importance_html(importance, images) if importance is not None else "",
                                style=STYLE, script=SORT_SCRIPT)


def importance_html(importance: Importance, images: Sequence[Path]) -> str:
    """The shares as a small table, the note and the figures inline, or the line saying why there are none."""
    if not importance.computed:
        return f'<p class="caption">{html.escape(importance.note)}</p>'
    head = "".join(f'<th class="num">{html.escape(label)}</th>' for label in importance.shares)
    rows = "".join(f'<tr><td class="text">{html.escape(name)}</td>'
                   + "".join(f'<td class="num">{shares[name]:.3f}</td>' for shares in importance.shares.values())
                   + "</tr>" for name in importance.parameters)
    figures = "".join(f'<img alt="{html.escape(path.stem.replace("_", " "))}" '
                      f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode("ascii")}">'
                      for path in images)
    return (f'<h2>What mattered</h2>\n<table class="importance"><thead><tr><th class="text">Parameter</th>{head}'
            f"</tr></thead><tbody>{rows}</tbody></table>\n"
            f'<p class="caption">{html.escape(importance.note + " " + importance_legend(importance))}</p>\n'
            f'<div class="figures">{figures}</div>')


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
table.importance th { cursor: default; }
div.figures img { max-width: 100%; margin: 0.5rem 1rem 0.5rem 0; vertical-align: top; }
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
{importance}
<script>{script}</script>
</body>
</html>
"""
