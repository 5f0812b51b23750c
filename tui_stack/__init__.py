"""tui-stack: align, scale and combine astronomical CCD frames from a terminal."""

__version__ = "0.1.0"
