"""What the wizard has chosen and measured: a Config and a pipeline RunState, nothing of its own.

Screens change `config` and call the pipeline's steps on `run`; saving writes the config
that `tui-stack run` turns into the same outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tui_stack.config import Config, config_to_toml


@dataclass
class WizardState:
    config: Config
    infos: list = field(default_factory=list)  # core.io.FrameInfo of every matched file
    included: set = field(default_factory=set)  # indices into infos
    run: object = None  # pipeline.RunState, built when frames are chosen
    ref_image: object = None  # numpy array  # sky-subtracted reference frame for previews
    ref_noise: float = float("nan")
    star_xy: tuple[float, float] | None = None  # chosen reference star (centroid)
    suggested_ref: int | None = None
    written_to: Path | None = None
    dirty: bool = False  # measured work that is not written yet
    resume: dict | None = None  # a saved session still to be restored (after the file scan)
    restored_combined: list = field(default_factory=list)  # summaries of combines before a resume
    ui_restore: dict = field(default_factory=dict)  # step -> {"rows": {table: row}, "fields": {input: text}}

    def usable_infos(self) -> list:
        return [info for i, info in enumerate(self.infos) if i in self.included and not info.error]

    def selected_files(self) -> list[Path]:
        return [info.path for info in self.usable_infos()]

    def config_for_run(self) -> Config:
        """The config `run` needs to reproduce what the wizard shows: chosen files, frame and stars.

        Frames the user unticked go to `exclude`; the pattern and header filter stay as typed.
        """
        cfg = self.config
        chosen = set(self.selected_files())
        cfg.input.exclude = [info.path.name for info in self.infos if info.path not in chosen]
        return cfg

    def config_toml(self) -> str:
        return "# saved by the tui-stack wizard; `tui-stack run` on this file gives the same outputs\n" + config_to_toml(
            self.config_for_run()
        )
