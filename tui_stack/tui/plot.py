"""plotext plots as a widget, redrawn at its own size; plain when NO_COLOR is set."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from tui_stack.tui.preview import no_colour


def nice_ticks(lo: float, hi: float, n: int) -> list[float]:
    """About n ticks at a round step (1, 2 or 5 x 10^k) covering [lo, hi]: evenly spaced."""
    import math

    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _label(v: float, step: float) -> str:
    import math

    digits = max(0, -int(math.floor(math.log10(step)))) if step > 0 else 0
    return f"{v:.{digits}f}"


def build(xs, ys, width: int, height: int, title: str, xlabel: str = "", ylabel: str = "", lines: bool = False) -> Text:
    import plotext as plt

    plt.clear_figure()
    plt.plotsize(max(20, width), max(5, height))
    plt.theme("clear")  # terminal colours, fewest bytes
    if len(xs):
        if lines:
            plt.plot(list(xs), list(ys), marker="dot")
        plt.scatter(list(xs), list(ys), marker="o")
        # ticks at round, evenly spaced values (plotext's own follow the data)
        for axis, vals, n in ((plt.xticks, xs, max(2, width // 10)), (plt.yticks, ys, max(2, height // 2))):
            ticks = nice_ticks(min(vals), max(vals), n)
            if len(ticks) >= 2:
                axis(ticks, [_label(t, ticks[1] - ticks[0]) for t in ticks])
    plt.title(title)
    if xlabel:
        plt.xlabel(xlabel)
    if ylabel:
        plt.ylabel(ylabel)
    out = Text.from_ansi(plt.build())
    return Text(out.plain) if no_colour() else out


class PlotView(Widget):
    """Holds the data; builds the plot for whatever size the layout gives it."""

    def __init__(self, title: str, xlabel: str = "", ylabel: str = "", lines: bool = False, **kw):
        super().__init__(**kw)
        self.title, self.xlabel, self.ylabel, self.lines = title, xlabel, ylabel, lines
        self.xs: list = []
        self.ys: list = []

    def set_data(self, xs, ys) -> None:
        self.xs, self.ys = list(xs), list(ys)
        self.refresh()

    def render(self) -> Text:
        if self.size.width < 10 or self.size.height < 3:
            return Text("")
        return build(self.xs, self.ys, self.size.width, self.size.height, self.title, self.xlabel, self.ylabel, self.lines)
