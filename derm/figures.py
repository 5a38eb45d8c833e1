"""Figures as derm writes them: matplotlib's object API, PNG files, safe file names.

A ``Figure`` made directly (not through ``pyplot``) is rendered by the Agg canvas it
carries: no GUI backend is needed, and no global pyplot state (the current figure, the
backend) is touched, so figures are safe to draw in worker processes and notebooks.
"""

from __future__ import annotations

import re
from pathlib import Path

from matplotlib.figure import Figure


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure whose subplots keep their labels inside it ("constrained" layout)."""
    return Figure(figsize=figsize, layout="constrained")


def save_figure(figure: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``figure`` as a PNG at ``path`` (folders made as needed); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path


def safe_file_stem(name: str, fallback: str = "figure") -> str:
    """``name`` (an image id, a YAML key) as a file name that stays inside its folder.

    >>> safe_file_stem("../model.encoder"), safe_file_stem("ISIC_0000000"), safe_file_stem("..")
    ('_model.encoder', 'ISIC_0000000', 'figure')
    """
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or fallback
