"""The look shared by every figure: colours, sizes and axes styling, set on objects, never globally.

Figures are built as `matplotlib.figure.Figure` objects (no pyplot), so they can be drawn in a
daemon thread or a test without a display; that is also why nothing here touches rcParams,
which are process-wide state.
"""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# Okabe–Ito: distinguishable with the common colour-vision deficiencies and in greyscale print.
RUN_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
GRID = "#d9dde3"
INK = "#1f2933"
MUTED = "#6b7280"
WIDTH_IN = 6.4
HEIGHT_IN = 4.0


def run_colour(index: int) -> str:
    """The colour of the `index`-th run of a figure or report, so a run keeps its colour throughout."""
    return RUN_COLOURS[index % len(RUN_COLOURS)]


def new_figure(
    panels: int = 1,
    sharex: bool = True,
    width_in: float = WIDTH_IN,
    panel_in: float = 2.2,
    single_in: float = HEIGHT_IN,
) -> tuple[Figure, list[Axes]]:
    """A figure of `panels` stacked axes (one per run where runs do not overlay well)."""
    height = single_in if panels == 1 else 0.8 + panel_in * panels
    figure = Figure(figsize=(width_in, height), layout="constrained")
    axes = figure.subplots(panels, 1, sharex=sharex, squeeze=False)[:, 0].tolist()
    for ax in axes:
        style_axes(ax)
    return figure, axes


def new_grid(panels: int) -> tuple[Figure, list[Axes]]:
    """Side-by-side axes (Nyquist plots keep an equal aspect, so they go in a row, two per line)."""
    columns = min(panels, 2)
    rows = -(-panels // columns)
    figure = Figure(figsize=(WIDTH_IN * (1 if columns == 1 else 1.5), 4.4 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    axes = grid.ravel().tolist()
    for ax in axes[panels:]:
        ax.set_visible(False)
    for ax in axes[:panels]:
        style_axes(ax)
    return figure, axes[:panels]


def integer_ticks(ax: Axes) -> None:
    """Cycle numbers are whole: no tick at cycle 2.5 when a run has four cycles."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def style_axes(ax: Axes) -> None:
    ax.grid(True, color=GRID, linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color(MUTED)
    ax.tick_params(colors=INK, labelsize=9)
    ax.xaxis.label.set_color(INK)
    ax.yaxis.label.set_color(INK)
