"""The optional compiled resampling passes (tui_stack/core/_resample.c); everything else is in
pyproject.toml. optional=True: without a C compiler the install goes on and core.shifting uses
its numpy passes (the same pixels, slower)."""

import sys

from setuptools import Extension, setup

# no fused multiply-add: the compiled sums round like the numpy passes' (same pixels)
flags = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off"]
setup(ext_modules=[Extension("tui_stack.core._resample", ["tui_stack/core/_resample.c"],
                             extra_compile_args=flags, optional=True)])
