"""What happens to every image t2i returns or writes, in the CompVis scripts' and the web UI's
order: the safety checker (`--safety-checker DIR`: flagged images blacked out, `NSFW: true` in
their infotext), face restoration (`restore_faces`, on the images not flagged, so that they stay
black), the invisible watermark (`watermark`, last, on every image).

`finish_images` is the one place this happens: the Session's plain runs and image scripts call it
on each batch, and `scripting.run_pipeline` on every run of the other scripts (X/Y/Z plot cells,
prompt matrix, loopback frames, `--input-dir` batches), so that their grids are built from
finished images; a grid itself gets only the watermark (`finish_grid`).

The tools come from LoadSettings and live on the LoadedModel (`upscalers`, `safety_checker`), set
by `configure_image_tools` under the model's lock at the start of every run, so a server whose
settings change gets the new folders without reloading the diffusion model.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from t2i.metadata import add_infotext_params
from t2i.pipelines.model_upscalers import UpscalerLibrary, library_of


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
    """Safety check, face restoration and watermark over one batch's images (and their infotexts)."""
    images, infotexts = list(images), list(infotexts)
    flags = [False] * len(images)
    checker = getattr(loaded, "safety_checker", None)
    if checker is not None and images:
        images, flags = checker.check(images)
        infotexts = [add_infotext_params(info, {"NSFW": "true"}) if flagged else info
                     for info, flagged in zip(infotexts, flags)]
    if getattr(params, "restore_faces", False) and not all(flags):
        library = library_of(loaded)
        name = library.face_model().name
        images = [im if flagged else library.restore_faces(im) for im, flagged in zip(images, flags)]
        infotexts = [info if flagged else add_infotext_params(info, {"Face restoration": name})
                     for info, flagged in zip(infotexts, flags)]
    images = [finish_grid(params, im) for im in images]
    return images, infotexts


def finish_result(loaded, params, result):
    """A GenerationResult with its images and infotexts finished (`finish_images`)."""
    images, infotexts = finish_images(loaded, params, result.images, result.infotexts)
    return replace(result, images=images, infotexts=infotexts)


def finish_grid(params, image):
    """A grid (or any image built from finished ones): the watermark only, since its cells were
    checked and restored already."""
    if not getattr(params, "watermark", ""):
        return image
    from t2i.pipelines.watermark import put_watermark

    return put_watermark(image, params.watermark)
