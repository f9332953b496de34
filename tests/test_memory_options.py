"""Memory options: what "auto" chooses per device, and that slicing, tiling and offload change
memory use but not (or barely) the result."""
import numpy as np
import pytest
import torch

from t2i.memory import GIB, MemoryOptions, Offloader, apply_memory, components, memory_applied, plan_memory
from t2i.pipelines.txt2img import Txt2ImgParams, txt2img


def test_auto_choices_per_device():
    cpu = plan_memory(MemoryOptions(), "cpu", 512, 512)
    assert (cpu.attention_slicing, cpu.vae_tiling, cpu.offload) == (False, False, "none")
    assert plan_memory(MemoryOptions(), "cpu", 2048, 1024).vae_tiling
    assert plan_memory(MemoryOptions(), "cuda", 1536, 1536, gpu_bytes=6 * GIB).vae_tiling
    big = plan_memory(MemoryOptions(), "cuda", 1536, 1536, gpu_bytes=80 * GIB)
    assert not big.vae_tiling and not big.attention_slicing
    small = plan_memory(MemoryOptions(offload="sequential"), "cuda", 512, 512, gpu_bytes=4 * GIB)
    assert small.attention_slicing and small.offload == "sequential" and not small.notes
    forced = plan_memory(MemoryOptions("on", "on"), "cpu", 64, 64)
    assert forced.describe() == "attention slicing on, VAE tiling on, offload none"
    ignored = plan_memory(MemoryOptions(offload="model"), "cpu", 64, 64)
    assert ignored.offload == "none" and "ignored" in ignored.notes[0]
    with pytest.raises(ValueError, match="vae-tiling must be one of auto, off, on"):
        MemoryOptions(vae_tiling="yes")


def test_attention_slicing_gives_the_same_output(tiny_loaded):
    unet = tiny_loaded.model.unet
    torch.manual_seed(0)
    x, t, context = torch.randn(2, 4, 16, 16), torch.tensor([500, 20]), torch.randn(2, 32, 32)
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=context).sample
        with memory_applied(tiny_loaded.model, plan_memory(MemoryOptions("on", "off"), "cpu", 32, 32), "cpu"):
            kinds = {type(p).__name__ for p in unet.attn_processors.values()}
            sliced = unet(x, t, encoder_hidden_states=context).sample
    assert kinds == {"SlicedAttnProcessor"}
    assert torch.allclose(plain, sliced, atol=1e-5) and plain.abs().max() > 0.1
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before  # undone


def test_vae_tiling_decodes_nearly_the_same_large_image():
    """The bundled model's trained VAE (64 px tiles) decoding a 256 px image of the shapes data:
    tiled and untiled agree closely; tiles really ran (not bit-identical)."""
    from t2i.checkpoints.registry import load_model
    from t2i.data.shapes import ShapesDataset
    from t2i.pipelines.imageops import images_to_tensor
    from t2i.runtime import Runtime

    model = load_model(None, Runtime.auto("full", "cpu")).model
    picture = ShapesDataset(length=1, seed=3, resolution=256)[0]["image"]
    with torch.no_grad():
        latents = model.encode_images(images_to_tensor([picture]), sample=False)  # (1, 4, 64, 64)
        plain = model.decode_latents(latents)
        with memory_applied(model, plan_memory(MemoryOptions(vae_tiling="auto"), "cpu", 2048, 2048), "cpu"):
            assert model.vae.use_tiling
            tiled = model.decode_latents(latents)
    assert not model.vae.use_tiling
    diff = (plain - tiled).abs()
    assert plain.shape == tiled.shape == (1, 3, 256, 256) and diff.max() > 0
    # Each 64 px tile is normalised and attended on its own, and tiles blend over a quarter of a
    # tile, so the result differs a little everywhere, most at seams: measured 34.9 dB PSNR, a
    # mean difference of 0.022 on the [-1, 1] scale (about 3 of 255 levels).
    psnr = 10 * torch.log10(4 / (diff**2).mean())
    assert psnr > 30 and diff.mean() < 0.04, (psnr, diff.mean())


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offload_hooks_keep_the_image_and_undo_cleanly(tiny_loaded, mode):
    """CPU to CPU (no GPU here): the hooks run, move whole components one at a time in model
    mode, change nothing in the result, and leave no hook behind."""
    params = Txt2ImgParams(prompt="a red circle", steps=2, seed=11)
    expected = np.asarray(txt2img(tiny_loaded, params).images[0])
    modules = [m for part in components(tiny_loaded.model).values() for m in part.modules()]
    hooks = lambda: sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in modules)  # noqa: E731
    before = hooks()
    moves = []
    offloader = Offloader(components(tiny_loaded.model), torch.device("cpu"), mode,
                          on_move=lambda name, device: moves.append(name))
    try:
        got = np.asarray(txt2img(tiny_loaded, params).images[0])
    finally:
        offloader.remove("cpu")
    assert np.array_equal(expected, got)
    if mode == "model":  # text encoder, then UNet, then VAE: each activated once, the last one swapped out
        assert moves[0] == "text_encoder" and moves[-1] == "vae" and "unet" in moves
    assert hooks() == before


def test_apply_memory_undo_restores_everything(tiny_loaded):
    model = tiny_loaded.model
    undo = apply_memory(model, plan_memory(MemoryOptions("on", "on"), "cpu", 64, 64), "cpu")
    assert model.vae.use_tiling
    undo()
    assert not model.vae.use_tiling
    assert {type(p).__name__ for p in model.unet.attn_processors.values()} != {"SlicedAttnProcessor"}


def test_cli_reports_the_memory_settings(tiny_model_dir, tmp_path, capsys):
    from t2i.interfaces.cli import main

    code = main(["generate", "a red circle", "--model", str(tiny_model_dir), "--steps", "1", "--seed", "1",
                 "--outdir", str(tmp_path), "--device", "cpu", "--vae-tiling", "on", "--offload", "model"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "attention slicing off, VAE tiling on, offload none" in err
    assert "offload model ignored" in err
