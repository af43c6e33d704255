"""Small metadata renderings (markdown tables, inline PNG plots) shared by assets and the CLI."""

from __future__ import annotations

import base64
import io

import pandas as pd

# Heavy imports (matplotlib, numpy) stay inside the functions that need them: importing this module loads none of them.


def markdown_table(frame: pd.DataFrame, max_rows: int = 10, floatfmt: str = ".4g") -> str:
    if frame.empty:
        return "_no rows_"
    return frame.head(max_rows).to_markdown(index=False, floatfmt=floatfmt)


def line_plot_markdown(frame: pd.DataFrame, x: str, y: str, by: str, title: str, max_series: int = 8) -> str:
    """A small inline PNG line chart (markdown image) of ``y`` over ``x`` for each ``by`` group."""
    if frame.empty:
        return "_nothing to plot_"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.2), dpi=80)
    for key, group in list(frame.groupby(by))[:max_series]:
        ax.plot(group[x], group[y], linewidth=1, label=str(key))
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return f"![{title}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


def heatmap_markdown(matrix: pd.DataFrame, title: str) -> str:
    """A small inline PNG heat map (markdown image) of a square matrix such as feature correlations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.6), dpi=70)
    image = ax.imshow(matrix.to_numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(matrix.columns)), matrix.columns, rotation=90, fontsize=5)
    ax.set_yticks(range(len(matrix.index)), matrix.index, fontsize=5)
    ax.set_title(title, fontsize=8)
    fig.colorbar(image, ax=ax, shrink=0.7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return f"![{title}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


def bar_plot_markdown(frame: pd.DataFrame, x: str, y: str, by: str, title: str, max_series: int = 6) -> str:
    """A small inline PNG grouped bar chart (markdown image): ``y`` per ``x`` category, one bar colour per ``by``."""
    if frame.empty:
        return "_nothing to plot_"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    categories = list(dict.fromkeys(frame[x]))
    series = list(dict.fromkeys(frame[by]))[:max_series]
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(5, 2.4), dpi=80)
    for i, key in enumerate(series):
        values = frame[frame[by] == key].set_index(x)[y].reindex(categories).to_numpy(dtype=float)
        ax.bar(np.arange(len(categories)) + (i - (len(series) - 1) / 2) * width, np.nan_to_num(values), width, label=str(key))
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return f"![{title}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"
