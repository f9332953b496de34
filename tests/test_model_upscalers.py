"""Upscalers and face restorers from the user's weight files (spandrel): random-weight state dicts of
several architectures that spandrel recognises, saved the ways people have them (.pth with
params_ema, .safetensors), found by name in a folder, scale, tiling without seams, refusals,
the hires fix and `t2i upscale --upscaler NAME` through the CLI."""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

if importlib.util.find_spec("spandrel") is None:  # the `extras` extra installs it; CI: .ci/run, --no-deps
    pytest.skip("spandrel is not installed", allow_module_level=True)

from t2i.checkpoints.image_models import (  # noqa: E402
    find_image_models,
    import_spandrel,
    load_image_model,
)
from t2i.errors import ModelLoadError, ParamError  # noqa: E402
from t2i.pipelines.model_upscalers import UpscalerLibrary, run_model, run_tiled  # noqa: E402


def _nets():
    import_spandrel()
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.RestoreFormer import RestoreFormer
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    return {
        "esrgan-2x": ESRGAN(num_filters=8, num_blocks=1, scale=2),
        "compact-2x": Compact(num_feat=8, num_conv=2, upscale=2),
        "swinir-2x": SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
                            upsampler="pixelshuffledirect", mlp_ratio=2.0),
        "restoreformer": RestoreFormer(n_embed=16, embed_dim=32, ch=32, ch_mult=(1, 1, 1, 1, 1, 1), num_res_blocks=1,
                                       z_channels=32),
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """One folder with each architecture, stored as people have them."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("ESRGAN")
    for name, net in _nets().items():
        state = {k: v.contiguous() for k, v in net.state_dict().items()}
        if name == "esrgan-2x":
            torch.save({"params_ema": state}, folder / f"{name}.pth")  # Real-ESRGAN's layout
        elif name == "compact-2x":
            save_file(state, folder / f"{name}.safetensors")
        else:
            torch.save(state, folder / f"{name}.pth")
    (folder / "notes.txt").write_text("not a model")
    return folder


def _image(w=40, h=32, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("name, arch", [("esrgan-2x", "ESRGAN"), ("compact-2x", "RealESRGAN Compact"),
                                        ("swinir-2x", "SwinIR")])
def test_each_architecture_is_recognised_and_upscales(model_dir, name, arch):
    model = load_image_model(find_image_models([model_dir])[name])
    assert (model.arch, model.scale, model.purpose) == (arch, 2, "SR")
    out = run_model(model, _image(), tile=0)
    assert out.size == (80, 64) and out.mode == "RGB"
    assert np.asarray(out).std() > 0  # not a constant image


def test_folder_listing_takes_weight_files_by_stem(model_dir):
    assert sorted(find_image_models([model_dir])) == ["compact-2x", "esrgan-2x", "restoreformer", "swinir-2x"]


@pytest.mark.parametrize("name, mean_tolerance, max_tolerance", [
    ("esrgan-2x", 2e-3, 0.05), ("compact-2x", 2e-3, 0.05),
    ("swinir-2x", 1e-2, 0.15),  # shifted windows see tile borders: spandrel marks its tiling "discouraged"
])
def test_tiled_equals_untiled_within_tolerance(model_dir, name, mean_tolerance, max_tolerance):
    """Tiles of 24 px overlapping by 8, blended: no seams (the CNNs' receptive field reaches past
    the overlap, so tiles differ slightly from the whole image, far below a visible seam)."""
    model = load_image_model(find_image_models([model_dir])[name])
    x = torch.from_numpy(np.asarray(_image(56, 48), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    whole = model.descriptor(x)
    tiled = run_tiled(model.descriptor, x, 2, tile=24, overlap=8)
    assert tiled.shape == whole.shape == (1, 3, 96, 112)
    diff = (tiled - whole).abs()
    assert diff.mean() < mean_tolerance and diff.max() < max_tolerance, (diff.mean(), diff.max())
    no_blend = run_tiled(model.descriptor, x, 2, tile=24, overlap=0)  # plain tiles: seams
    assert (no_blend - whole).abs().mean() > diff.mean()


def test_library_upscales_to_any_scale_by_name(model_dir):
    library = UpscalerLibrary(dirs=(str(model_dir),), tile=16, overlap=4)
    assert library.upscale(_image(), "compact-2x", 4).size == (160, 128)  # the 2x model twice
    assert library.upscale(_image(), "esrgan-2x", 1.5).size == (60, 48)  # once, then Lanczos down
    with pytest.raises(ParamError, match=r"no upscaler 'nope'.*compact-2x, esrgan-2x"):
        library.upscale(_image(), "nope", 2)


def test_unknown_and_unsafe_files_are_refused(tmp_path):
    plain = tmp_path / "random.pth"
    torch.save({"foo.weight": torch.randn(3, 3), "bar.bias": torch.randn(3)}, plain)
    with pytest.raises(ModelLoadError, match="not an upscaler or face restorer that spandrel recognises"):
        load_image_model(plain)
    not_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_dict)
    with pytest.raises(ModelLoadError, match="not a state dict"):
        load_image_model(not_dict)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, evil)
    with pytest.raises(ModelLoadError):
        load_image_model(evil)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_image_model(tmp_path / "missing.pth")


def test_face_restorer_runs_on_the_whole_image(model_dir):
    library = UpscalerLibrary(dirs=(str(model_dir),), face_restorer="restoreformer")
    model = library.face_model()
    assert (model.arch, model.purpose) == ("RestoreFormer", "FaceSR")
    image = _image(48, 40)
    restored = library.restore_faces(image)
    assert restored.size == image.size and not np.array_equal(np.asarray(restored), np.asarray(image))
    assert np.array_equal(np.asarray(library.restore_faces(image, visibility=0.0)), np.asarray(image))
    with pytest.raises(ModelLoadError, match="not a face restorer"):
        UpscalerLibrary(dirs=(str(model_dir),), face_restorer="esrgan-2x").face_model()


def test_hires_fix_and_restore_faces_in_a_session(tiny_model_dir, model_dir):
    from t2i.metadata import parse_infotext
    from t2i.pipelines.generation_params import Txt2ImgParams
    from t2i.pipelines.load_settings import LoadSettings
    from t2i.pipelines.session import Session

    session = Session(LoadSettings(model=str(tiny_model_dir), precision="full", upscaler_dirs=(str(model_dir),),
                                   face_restorer="restoreformer"))
    params = Txt2ImgParams(prompt="a red circle", steps=2, seed=3, enable_hr=True, hr_upscaler="esrgan-2x",
                           hr_scale=2.0, denoising_strength=0.5, restore_faces=True)
    result = session.run(params)
    info = parse_infotext(result.infotexts[0])
    assert result.images[0].size == (64, 64)
    assert info["Hires upscaler"] == "esrgan-2x" and info["Face restoration"] == "restoreformer"
    with pytest.raises(ParamError, match=r"hr_upscaler must be one of .*esrgan-2x.*got 'nope'"):
        session.run(Txt2ImgParams(prompt="x", steps=1, enable_hr=True, hr_upscaler="nope"))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_cli_upscale_with_an_upscaler_file(model_dir, tmp_path):
    from t2i.metadata import parse_infotext, read_infotext

    src = tmp_path / "in.png"
    _image().save(src)
    out = _cli("upscale", src, "--upscaler", "esrgan-2x", "--upscaler-dir", model_dir, "--scale", 2,
               "--upscaler-tile", 16, "-o", tmp_path / "big.png")
    assert out.returncode == 0, out.stderr
    assert Image.open(tmp_path / "big.png").size == (80, 64)
    assert parse_infotext(read_infotext(tmp_path / "big.png"))["Upscaler"] == "esrgan-2x"
    bad = _cli("upscale", src, "--upscaler", "nope", "--upscaler-dir", model_dir, "-o", tmp_path / "x.png")
    assert bad.returncode == 2 and "no upscaler 'nope'" in bad.stderr and "esrgan-2x" in bad.stderr
    assert "Traceback" not in bad.stderr
