"""What happens to each finished image of a Session run, in the CompVis scripts' and the web UI's
order: face restoration (`restore_faces`), the safety checker (`--safety-checker DIR`: flagged
images blacked out, `NSFW: true` in their infotext), the invisible watermark (`watermark`).

The tools come from LoadSettings and live on the LoadedModel (`upscalers`, `safety_checker`), set
by `configure_image_tools` under the model's lock at the start of every run, so a server whose
settings change gets the new folders without reloading the diffusion model.
"""
from __future__ import annotations

from pathlib import Path

from t2i.pipelines.model_upscalers import UpscalerLibrary, library_of
from t2i.pipelines.scripting import add_infotext_params


def configure_image_tools(loaded, settings) -> None:
    """Point `loaded`'s upscaler library and safety checker at the folders of `settings`."""
    device = str(getattr(getattr(loaded, "runtime", None), "device", "cpu"))
    library = UpscalerLibrary(tuple(settings.upscaler_dirs), settings.face_restorer, settings.upscaler_tile,
                              settings.upscaler_tile_overlap, device)
    current = getattr(loaded, "upscalers", None)
    if current is None or current.key() != library.key():
        loaded.upscalers = library
    checker = getattr(loaded, "safety_checker", None)
    if not settings.safety_checker:
        loaded.safety_checker = None
    elif checker is None or Path(checker.path) != Path(settings.safety_checker):
        from t2i.pipelines.safety import load_safety_checker

        loaded.safety_checker = load_safety_checker(settings.safety_checker, device)


def check_before_run(loaded, params, width: int, height: int) -> None:
    """Fail before any work on what post-processing would refuse later (size, missing restorer)."""
    if getattr(params, "watermark", ""):
        from PIL import Image

        from t2i.pipelines.watermark import _imwatermark, check_size

        check_size(Image.new("RGB", (width, height)))
        _imwatermark()  # installed?
    if getattr(params, "restore_faces", False):
        library_of(loaded).face_model()


def finish_images(loaded, params, images: list, infotexts: list[str]) -> tuple[list, list[str]]:
    """Face restoration, safety check and watermark over one batch's images (and their infotexts)."""
    images, infotexts = list(images), list(infotexts)
    if getattr(params, "restore_faces", False) and images:
        library = library_of(loaded)
        name = library.face_model().name
        images = [library.restore_faces(im) for im in images]
        infotexts = [add_infotext_params(info, {"Face restoration": name}) for info in infotexts]
    checker = getattr(loaded, "safety_checker", None)
    if checker is not None and images:
        images, flags = checker.check(images)
        infotexts = [add_infotext_params(info, {"NSFW": "true"}) if flagged else info
                     for info, flagged in zip(infotexts, flags)]
    if getattr(params, "watermark", ""):
        from t2i.pipelines.watermark import put_watermark

        images = [put_watermark(im, params.watermark) for im in images]
    return images, infotexts
