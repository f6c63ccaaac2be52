"""Writing report files: Markdown and matplotlib figures, each written atomically."""

from __future__ import annotations

from pathlib import Path

from ddpmrt.engine.artifacts.io import atomic_write


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    pyplot().close(fig)


def write_markdown(path: Path, lines: list[str]) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
