"""The web UI's own settings: a typed dataclass declared with the schema's `param` (so the Settings
tab is built from it like every other control), kept in a JSON file, applied without a restart:
every job reads them when it starts, and the page reads the defaults when it loads.

    store = SettingsStore(Path("outputs/webui-settings.json"), UISettings(sd_model_checkpoint="t2i-shapes-ldm"))
    store.update({"live_preview_every": 2})          # validated, saved atomically
    store.get().live_preview_every                   # -> 2
"""
from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass
from pathlib import Path

from t2i.errors import ParamError
from t2i.pipelines.generation_params import GenerationParams
from t2i.pipelines.params import field_specs, param
from t2i.pipelines.schema import validate_strict

# The generation defaults the page starts with are the schema's until the user changes them here.
_SCHEMA = {f.name: f.default for f in dataclasses.fields(GenerationParams)}


@dataclass(frozen=True)
class UISettings:
    sd_model_checkpoint: str = param("", "the checkpoint the UI's jobs use (a model of the server's model folders)",
                                     label="Stable Diffusion checkpoint", group="model")
    sd_vae: str = param("Automatic", "a VAE of the server's VAE folders, or Automatic (the model's own)",
                        label="SD VAE", group="model")
    live_preview_every: int = param(5, "show a live preview of the image every N sampling steps (0 = none); each "
                                       "preview is a cheap linear map of the latents, not a VAE decode",
                                    label="Live preview period, steps", group="output", minimum=0, maximum=100,
                                    step=1)
    save_images: bool = param(True, "save every generated image (with its infotext) in the server's output folder",
                              label="Always save all generated images", group="output")
    save_grids: bool = param(True, "save the grids of batches and scripts in the output folder",
                             label="Always save all generated image grids", group="output")
    # The web UI's "Paths for saving" (output_dirs.py): folders inside the server's output folder
    outdir_txt2img_samples: str = param("txt2img", "folder of the txt2img images, inside the server's output folder "
                                                   "(the server saves nowhere else)",
                                        label="Output directory for txt2img images", group="paths")
    outdir_img2img_samples: str = param("img2img", "folder of the img2img images, inside the server's output folder",
                                        label="Output directory for img2img images", group="paths")
    outdir_txt2img_grids: str = param("txt2img", "folder of the txt2img grids (batches, X/Y/Z plots, prompt "
                                                 "matrices), inside the server's output folder",
                                      label="Output directory for txt2img grids", group="paths")
    outdir_img2img_grids: str = param("img2img", "folder of the img2img grids, inside the server's output folder",
                                      label="Output directory for img2img grids", group="paths")
    outdir_extras_samples: str = param("extras", "folder of the Extras tab's results, inside the server's output "
                                                 "folder", label="Output directory for images from extras tab",
                                       group="paths")
    default_sampler: str = param(_SCHEMA["sampler"], "sampler the page starts with", label="Default sampling method",
                                 group="sampling")
    default_scheduler: str = param(_SCHEMA["scheduler"], "schedule type the page starts with", label="Default schedule type",
                                   group="sampling")
    default_steps: int = param(_SCHEMA["steps"], "sampling steps the page starts with", label="Default sampling steps",
                               group="sampling", minimum=1, maximum=1000, step=1)
    default_cfg_scale: float = param(_SCHEMA["cfg_scale"], "CFG scale the page starts with", label="Default CFG Scale",
                                     group="sampling", minimum=0.0, maximum=100.0, step=0.5)
    default_width: int = param(512, "width the page starts with (the model's training size is best)",
                               label="Default width", group="size", minimum=64, maximum=8192, step=8)
    default_height: int = param(512, "height the page starts with", label="Default height", group="size",
                                minimum=64, maximum=8192, step=8)


class SettingsStore:
    """UISettings in a JSON file; thread-safe; unknown keys in the file are kept aside and reported."""

    def __init__(self, path: Path, defaults: UISettings, output_root: Path | None = None):
        self.path = Path(path)
        self.defaults = defaults
        self.output_root = output_root  # the server's output folder: the output folders must be inside it
        self._lock = threading.Lock()
        self.problem: str | None = None  # why the file was not used, for the Settings tab
        self._value = self._read()

    def _read(self) -> UISettings:
        if not self.path.is_file():
            return self.defaults
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            known = {f.name for f, _ in field_specs(UISettings)}
            return self._validated(dataclasses.replace(self.defaults, **{k: v for k, v in data.items() if k in known}))
        except (OSError, ValueError, ParamError, TypeError) as err:
            self.problem = f"{self.path.name} was not used: {err}"
            return self.defaults

    def _validated(self, settings: UISettings) -> UISettings:
        from t2i.interfaces.webui import output_dirs

        validate_strict(settings)
        if self.output_root is not None:
            output_dirs.check(settings, self.output_root)
        return settings

    def get(self) -> UISettings:
        with self._lock:
            return self._value

    def update(self, values: dict) -> UISettings:
        """Validate, save atomically, apply; ParamError naming the field when a value is wrong."""
        from t2i.atomic import write_json

        with self._lock:
            new = self._validated(dataclasses.replace(self._value, **values))
            write_json(self.path, dataclasses.asdict(new))
            self._value = new
            self.problem = None
            return new
