"""plotext plots as a widget, redrawn at its own size; plain when NO_COLOR is set."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from tui_stack.tui.preview import no_colour


def build(xs, ys, width: int, height: int, title: str, xlabel: str = "", ylabel: str = "", lines: bool = False) -> Text:
    import plotext as plt

    plt.clear_figure()
    plt.plotsize(max(20, width), max(5, height))
    plt.theme("clear")  # terminal colours, fewest bytes
    if len(xs):
        if lines:
            plt.plot(list(xs), list(ys), marker="dot")
        plt.scatter(list(xs), list(ys), marker="o")
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
