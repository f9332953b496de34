"""Image-to-image weights the user has: upscalers (ESRGAN, Real-ESRGAN, SwinIR, Swin2SR, HAT, DAT,
...) and face restorers (GFPGAN, RestoreFormer; CodeFormer through spandrel-extra-arches),
recognised from their state dict and built by spandrel.

    found = find_image_models(["models/ESRGAN"])        # {"4x-UltraSharp": Path(...), ...}
    model = load_image_model(found["4x-UltraSharp"])    # ImageModel: .scale, .arch, .purpose
    out = model.descriptor(image)                        # (1, 3, H, W) in [0, 1] -> (1, 3, sH, sW)

Weights are read by t2i's safe loader (safetensors, or pickles with `weights_only`); spandrel
only sees the state dict, so its own unpickler never runs. A file spandrel does not recognise is
refused with a ModelLoadError naming it.

spandrel and spandrel-extra-arches are optional (`pip install "t2i[extras]"`); they are imported
here, on first use. spandrel imports torchvision for two helpers of architectures t2i does not
run as upscalers (RestoreFormer's `normalize`, LaMa's `rotate`); where torchvision is not
installed (the CPU torch builds have no matching torchvision on PyPI) those two are supplied by
`_torchvision_stand_in` for the duration of spandrel's import only, then removed again.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from t2i.errors import ModelLoadError

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt", ".bin")
PIP_HINT = ('pip install "t2i[extras]" (with a CPU-only torch build, whose torchvision PyPI lacks: pip install einops '
            '&& pip install --no-deps spandrel spandrel-extra-arches)')
_IMPORT_LOCK = threading.Lock()
_REGISTRY = None  # spandrel's main registry plus the extra architectures, built on first use


@dataclass
class ImageModel:
    """A loaded upscaler or face restorer and what infotexts say about it."""

    descriptor: object  # spandrel.ImageModelDescriptor (eval mode)
    name: str  # the file's stem: what --upscaler NAME selects
    path: Path
    hash: str

    @property
    def arch(self) -> str:
        return self.descriptor.architecture.name

    @property
    def scale(self) -> int:
        return self.descriptor.scale

    @property
    def purpose(self) -> str:
        """"SR" (upscaler), "FaceSR" (face restorer), "Restoration" (1x: denoise, deblur, ...)."""
        return self.descriptor.purpose

    @property
    def tiling_supported(self) -> bool:
        """False for models that tile internally; spandrel's "discouraged" (attention over the
        whole input, e.g. SwinIR) is tiled all the same, as the web UI does, for bounded memory."""
        return self.descriptor.tiling.name != "INTERNAL"


def find_image_models(dirs) -> dict[str, Path]:
    """Weight files in `dirs` (not recursive), by file stem; the first folder wins a clash."""
    found: dict[str, Path] = {}
    for folder in dirs:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in WEIGHT_SUFFIXES:
                found.setdefault(path.stem, path)
    return found


def load_image_model(path: str | Path, device: str = "cpu") -> ImageModel:
    """The spandrel model of a weights file; ModelLoadError for a file that is missing, unsafe,
    or not an architecture spandrel knows."""
    from t2i.checkpoints.loaded import file_hash
    from t2i.checkpoints.safe_load import load_weights_object, misfit_is_load_error

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist; give an upscaler or face restorer weights file")
    spandrel = import_spandrel()
    state = load_weights_object(path)
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} is not an upscaler: it holds a {type(state).__name__}, not a state dict")
    state = spandrel.canonicalize_state_dict(state)  # unwraps params_ema / params / state_dict / module.
    if not state or not all(hasattr(v, "shape") for v in state.values()):
        raise ModelLoadError(f"{path} is not an upscaler or face restorer: it holds no plain state dict of tensors")
    try:
        descriptor = registry().load(state)
    except spandrel.UnsupportedModelError:
        raise ModelLoadError(f"{path} is not an upscaler or face restorer that spandrel recognises (ESRGAN, "
                             f"Real-ESRGAN, SwinIR, Swin2SR, HAT, DAT, GFPGAN, CodeFormer, ...); its weights "
                             f"match none of spandrel's architectures") from None
    with misfit_is_load_error(path, "the architecture spandrel detected"):
        if not isinstance(descriptor, spandrel.ImageModelDescriptor):
            raise ModelLoadError(f"{path} is a {descriptor.architecture.name} model ({descriptor.purpose}), which "
                                 f"takes a mask; t2i runs image-only upscalers and face restorers")
        if descriptor.input_channels != 3 or descriptor.output_channels != 3:
            raise ModelLoadError(f"{path} is a {descriptor.architecture.name} model for {descriptor.input_channels}"
                                 f"-channel images; t2i runs RGB models")
        descriptor = descriptor.to(device).eval()
    return ImageModel(descriptor, path.stem, path, file_hash(path))


def registry():
    """spandrel's registry with the extra architectures (CodeFormer, ...) when installed; a copy,
    so spandrel's global registry is left as it is."""
    global _REGISTRY
    spandrel = import_spandrel()
    with _IMPORT_LOCK:
        if _REGISTRY is None:
            reg = spandrel.MAIN_REGISTRY.copy()
            try:
                from spandrel_extra_arches import EXTRA_REGISTRY
            except ImportError:
                EXTRA_REGISTRY = ()  # optional: CodeFormer and the other extra architectures are then unknown
            reg.add(*EXTRA_REGISTRY, ignore_duplicates=True)
            _REGISTRY = reg
    return _REGISTRY


def import_spandrel():
    """The spandrel module, or a ModelLoadError that says what to install."""
    with _IMPORT_LOCK:
        if "spandrel" in sys.modules:
            return sys.modules["spandrel"]
        if importlib.util.find_spec("spandrel") is None:
            raise ModelLoadError(f"upscaler and face restorer models need spandrel: {PIP_HINT}")
        if importlib.util.find_spec("torchvision") is None:
            return _import_with_stand_in()
        try:
            import spandrel
        except (ImportError, RuntimeError) as err:  # e.g. a torchvision built for another torch
            raise ModelLoadError(f"spandrel failed to import ({type(err).__name__}: {err}); it imports torchvision, "
                                 f"which must be the build that matches your torch: install the matching "
                                 f"torchvision, or uninstall torchvision (t2i then supplies what spandrel needs "
                                 f"of it)") from None
        return spandrel


# ----------------------------------------------------------------------------- torchvision stand-in


class _Interpolation(Enum):  # the names LaMa's module imports; t2i never calls LaMa
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


def _normalize(tensor, mean, std, inplace: bool = False):
    """torchvision's normalize: (x - mean) / std per channel of a (..., C, H, W) tensor."""
    import torch

    mean = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    return tensor.sub_(mean).div_(std) if inplace else (tensor - mean) / std


def _rotate(*args, **kwargs):
    raise ModelLoadError("this model (LaMa) needs torchvision's rotate; install torchvision to use it")


class _TorchvisionStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves `torchvision.transforms.functional` with normalize/rotate/InterpolationMode while
    spandrel imports; installed and removed by `_import_with_stand_in`."""

    NAMES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")

    def find_spec(self, name, path=None, target=None):
        if name not in self.NAMES:
            return None
        package = name != self.NAMES[-1]
        return importlib.machinery.ModuleSpec(name, self, is_package=package)

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        if module.__name__ == self.NAMES[-1]:
            module.normalize, module.rotate, module.InterpolationMode = _normalize, _rotate, _Interpolation


def _import_with_stand_in():
    finder = _TorchvisionStandIn()
    sys.meta_path.insert(0, finder)
    try:
        import spandrel
    except (ImportError, AttributeError) as err:  # a spandrel that needs more of torchvision than is supplied
        raise ModelLoadError(f"spandrel failed to import without torchvision ({type(err).__name__}: {err}); "
                             f"install the torchvision build that matches your torch, or spandrel 0.4.x, whose "
                             f"needs t2i supplies") from None
    finally:
        sys.meta_path.remove(finder)
        for name in _TorchvisionStandIn.NAMES:  # nobody else sees a torchvision that is not there
            sys.modules.pop(name, None)
    return spandrel
