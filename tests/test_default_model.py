"""The bundled default model: present, loads offline (t2i and diffusers), generates."""
import json

import numpy as np

from t2i.checkpoints.registry import DEFAULT_MODEL_NAME, bundled_model_dir, load_model
from t2i.metadata import parse_infotext
from t2i.pipelines.txt2img import Txt2ImgParams, txt2img
from t2i.runtime import Runtime


def test_bundled_model_is_small_and_complete():
    folder = bundled_model_dir()
    for part in ("model_index.json", "t2i_config.json", "unet/config.json", "vae/config.json",
                 "text_encoder/config.json", "tokenizer/vocab.json", "scheduler/scheduler_config.json"):
        assert (folder / part).is_file(), part
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 25 * 2**20
    meta = json.loads((folder / "t2i_config.json").read_text())
    assert meta["config"]["resolution"] == 64 and meta["config"]["scaling_factor"] != 1.0


def test_bundled_model_generates_with_infotext():
    loaded = load_model(None, Runtime.auto("full", "cpu"))
    result = txt2img(loaded, Txt2ImgParams(prompt="a red circle", seed=1, steps=4, batch_size=2))
    assert [im.size for im in result.images] == [(64, 64), (64, 64)]
    info = parse_infotext(result.infotexts[0])
    assert info["Model"] == DEFAULT_MODEL_NAME and info["Model hash"] == loaded.hash
    pixels = np.asarray(result.images[0])
    assert pixels.std() > 5  # an image, not a flat or blank canvas


def test_diffusers_loads_the_bundled_folder_offline():
    import torch
    from diffusers import StableDiffusionPipeline

    # the weights are stored in fp16 to keep the package small; run them in float32 on a CPU
    pipe = StableDiffusionPipeline.from_pretrained(str(bundled_model_dir()), local_files_only=True,
                                                   torch_dtype=torch.float32)
    out = pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="np").images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
