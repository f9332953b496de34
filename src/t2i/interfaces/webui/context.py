"""What every tab of the web UI shares: the server's queue service and catalog, the job bridge, the
UI settings, the hover hints collected while building, and the cross-tab targets of the "Send to"
buttons (filled in as the tabs are built)."""
from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from t2i.interfaces.webui.bridge import JobBridge
from t2i.interfaces.webui.settings import SettingsStore


@dataclass
class UIContext:
    service: object  # interfaces.api.service.JobService
    config: object  # interfaces.api.config.ServeConfig
    settings: SettingsStore
    bridge: JobBridge
    cache_dir: Path  # where the UI writes result and preview files (Gradio's cache: served, cleaned)
    train_configs: Path | None = None  # folder of training YAMLs offered by the Train tab
    interrogator: object = None  # pipelines.interrogate.Interrogator, shared with the API route
    hints: dict[str, str] = field(default_factory=dict)  # element id -> help (hover hint)
    targets: dict[str, object] = field(default_factory=dict)  # "tabs", "img2img_image", ... for Send to

    @property
    def catalog(self):
        return self.service.catalog

    @property
    def limits(self):
        return self.config.limits

    @property
    def loopback(self) -> bool:
        """Server-side folders (batch img2img, training data) are offered on a loopback bind only:
        a remote user must not read or write the server's disk by path."""
        return self.config.is_loopback

    def checkpoint_titles(self) -> list[str]:
        return [item.title for item in self.catalog.checkpoints()]

    def vae_titles(self) -> list[str]:
        return ["Automatic", *[item.title for item in self.catalog.vaes()]]

    def chunk_length(self, checkpoint: str | None) -> int:
        """Tokens per prompt chunk of the chosen checkpoint: the bundled model reads 32 (30 + BOS,
        EOS), Stable Diffusion 77 (75)."""
        from t2i.interfaces.api.catalog import BUNDLED_TITLE

        if checkpoint in (None, "", BUNDLED_TITLE, "default"):
            return bundled_text_length() - 2
        return 75

    def write_png(self, data: bytes, name: str) -> str:
        """PNG bytes (infotext inside) into the UI's cache folder; the path a Gallery shows and
        downloads as it is, metadata kept."""
        from t2i.outputs import safe_filename_part

        folder = self.cache_dir / "t2i"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{hashlib.sha1(data).hexdigest()[:16]}-{safe_filename_part(name, 60) or 'image'}.png"
        if not path.exists():
            path.write_bytes(data)
        return str(path)


def bundled_text_length() -> int:
    from importlib import resources

    config = json.loads((resources.files("t2i") / "assets" / "default_model" / "t2i_config.json").read_text())
    return int(config["config"]["text"]["max_length"])


def bundled_resolution() -> int:
    from importlib import resources

    config = json.loads((resources.files("t2i") / "assets" / "default_model" / "t2i_config.json").read_text())
    return int(config["config"]["resolution"])


def b64_png(image) -> str:
    """A PIL image as base64 PNG for an API request."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def open_upload(path: str | None, field_name: str, limits):
    """An uploaded image file, checked as the API checks uploads (size in bytes, format, pixels
    read from the header before decoding); the API's ApiError when refused."""
    if not path:
        return None
    from t2i.interfaces.api import codec
    from t2i.interfaces.api.errors import ApiError
    from t2i.interfaces.webui.uploads import Refused

    if isinstance(path, Refused):  # refused from its header before Gradio decoded it (uploads.py)
        raise ApiError(422, f"{field_name}: {path}", field=field_name)
    file = Path(path)
    if file.stat().st_size > limits.max_upload_bytes:
        raise ApiError(422, f"{field_name}: the file is over the limit of {limits.max_upload_bytes / 2**20:.0f} MB",
                       field=field_name)
    return codec.decode_image(base64.b64encode(file.read_bytes()).decode("ascii"), field_name, limits)
