"""Progress events, live previews, interrupt and skip (t2i.pipelines.progress, .preview) on the
tiny random model; the preview's fidelity on the bundled model, whose VAE is trained."""
import io
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from t2i.diffusion.partial import steps_to_run
from t2i.pipelines.img2img import Img2ImgParams, img2img
from t2i.pipelines.inpaint import InpaintParams, inpaint
from t2i.pipelines.outpaint import OutpaintParams, outpaint
from t2i.pipelines.preview import LatentRGBMap, fit_latent_rgb_map, latent_preview, latent_rgb_map
from t2i.pipelines.progress import GenerationControl, Progress
from t2i.pipelines.txt2img import Txt2ImgParams, txt2img


def arr(image):
    return np.asarray(image).astype(np.int16)


def noise_image(size=(32, 32), seed=0):
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8))


class CountCalls:
    """Counts a module's forward calls through a hook (the module itself is untouched)."""

    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ---------------------------------------------------------------------------- progress events


def test_txt2img_reports_every_step_with_eta_and_keeps_the_old_callback(tiny_loaded):
    events, old = [], []
    result = txt2img(tiny_loaded, Txt2ImgParams(prompt="a", steps=3, seed=1, batch_size=2, n_iter=2),
                     callback=lambda i, total, latents: old.append((i, total)), progress=events.append)
    assert len(result.images) == 4
    assert old == [(0, 3), (1, 3), (2, 3)] * 2
    assert [(p.job, p.batch, p.step, p.total) for p in events] == [(j, j, s, 3) for j in (0, 1) for s in (1, 2, 3)]
    assert all(p.jobs == 2 and p.batches == 2 and p.phase == "txt2img" for p in events)
    fractions = [p.fraction for p in events]
    assert fractions == sorted(fractions) and fractions[0] == pytest.approx(1 / 6) and fractions[-1] == 1.0
    assert all(p.eta_s >= 0 and p.elapsed_s >= 0 for p in events) and events[-1].eta_s == 0
    assert events[0].latents.shape == (2, 4, 16, 16)


def test_hires_fix_is_a_second_job_of_each_batch(tiny_loaded):
    events = []
    txt2img(tiny_loaded, Txt2ImgParams(prompt="a", steps=2, seed=1, enable_hr=True, hr_second_pass_steps=4,
                                       denoising_strength=0.5), progress=events.append)
    assert [(p.job, p.phase, p.step, p.total) for p in events] == [
        (0, "txt2img", 1, 2), (0, "txt2img", 2, 2), (1, "hires", 1, 2), (1, "hires", 2, 2)]
    assert events[-1].latents.shape[-2:] == (32, 32) and events[-1].fraction == 1.0


@pytest.mark.parametrize("pipeline", ["img2img", "inpaint", "outpaint"])
def test_image_pipelines_report_progress(tiny_loaded, pipeline):
    events = []
    kw = dict(prompt="a", steps=4, seed=1, denoising_strength=0.5, n_iter=2)
    if pipeline == "img2img":
        img2img(tiny_loaded, Img2ImgParams(**kw), noise_image(), progress=events.append)
    elif pipeline == "inpaint":
        mask = Image.new("L", (32, 32), 0)
        mask.paste(255, (8, 8, 24, 24))
        inpaint(tiny_loaded, InpaintParams(**kw), noise_image(), mask, progress=events.append)
    else:
        outpaint(tiny_loaded, OutpaintParams(pixels=8, directions="left", **kw), noise_image(), progress=events.append)
    n = steps_to_run(4, 0.5)
    assert [(p.job, p.step, p.total, p.phase) for p in events] == [(j, s, n, "img2img") for j in (0, 1)
                                                                  for s in range(1, n + 1)]


# ---------------------------------------------------------------------------- interrupt and skip


@pytest.mark.parametrize("batch, step", [(0, 2), (1, 3)])
def test_interrupt_stops_at_the_next_step_and_returns_what_was_done(tiny_loaded, batch, step):
    control = GenerationControl()

    def on_progress(p: Progress):
        if (p.batch, p.step) == (batch, step):
            control.interrupt()

    with CountCalls(tiny_loaded.model.unet) as unet:
        result = txt2img(tiny_loaded, Txt2ImgParams(prompt="a", steps=5, seed=10, batch_size=2, n_iter=3),
                         progress=on_progress, control=control)
    assert unet.calls == 5 * batch + step  # one batched (uncond, cond) UNet call a step
    assert result.seeds == list(range(10, 10 + 2 * (batch + 1)))  # the interrupted batch comes back too
    assert len(result.images) == len(result.infotexts) == 2 * (batch + 1)
    full = txt2img(tiny_loaded, Txt2ImgParams(prompt="a", steps=5, seed=10 + 2 * batch)).images[0]
    assert not np.array_equal(arr(result.images[-2]), arr(full))  # half-denoised, not the finished image


def test_skip_drops_the_batch_and_goes_on(tiny_loaded):
    control = GenerationControl()

    def on_progress(p: Progress):
        if (p.batch, p.step) == (1, 2):
            control.skip()

    with CountCalls(tiny_loaded.model.unet) as unet:
        result = txt2img(tiny_loaded, Txt2ImgParams(prompt="a", steps=4, seed=20, n_iter=3),
                         progress=on_progress, control=control)
    assert unet.calls == 4 + 2 + 4
    assert result.seeds == [20, 22] and len(result.images) == len(result.infotexts) == 2
    alone = txt2img(tiny_loaded, Txt2ImgParams(prompt="a", steps=4, seed=22)).images[0]
    assert np.array_equal(arr(result.images[1]), arr(alone))
    assert not control.skip_requested and not control.interrupted  # a skip is used up by its batch


def test_skip_during_the_hires_pass_drops_the_batch(tiny_loaded):
    control = GenerationControl()

    def on_progress(p: Progress):
        if p.batch == 0 and p.phase == "hires":
            control.skip()

    result = txt2img(tiny_loaded, Txt2ImgParams(prompt="a", steps=2, seed=5, n_iter=2, enable_hr=True),
                     progress=on_progress, control=control)
    assert result.seeds == [6] and result.images[0].size == (64, 64)


def test_skipped_inpaint_batch_keeps_images_and_inputs_paired(tiny_loaded):
    """Run image i starts from input i mod 2: after skipping batch 0, the one result is input 1's."""
    control = GenerationControl()
    inputs = [noise_image(seed=1), noise_image(seed=2)]
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (12, 12, 20, 20))

    def on_progress(p: Progress):
        if p.batch == 0:
            control.skip()

    result = inpaint(tiny_loaded, InpaintParams(prompt="a", steps=2, seed=3, n_iter=2, mask_blur=0), inputs, mask,
                     progress=on_progress, control=control)
    assert result.seeds == [4]
    outside = np.asarray(mask) == 0
    assert np.array_equal(arr(result.images[0])[outside], arr(inputs[1])[outside])


def test_img2img_interrupt_and_skip(tiny_loaded):
    control = GenerationControl()

    def on_progress(p: Progress):
        if p.batch == 0 and p.step == 1:
            control.skip()
        if p.batch == 1 and p.step == 2:
            control.interrupt()

    with CountCalls(tiny_loaded.model.unet) as unet:
        result = img2img(tiny_loaded, Img2ImgParams(prompt="a", steps=8, seed=1, n_iter=3, denoising_strength=0.5),
                         noise_image(), progress=on_progress, control=control)
    assert unet.calls == 1 + 2 and result.seeds == [2]


def test_old_callback_interrupt_ends_the_run(tiny_loaded):
    result = txt2img(tiny_loaded, Txt2ImgParams(prompt="a", steps=4, seed=1, n_iter=3),
                     callback=lambda i, total, latents: "interrupt" if i == 1 else None)
    assert result.seeds == [1]


def test_control_set_from_another_thread_before_the_run(tiny_loaded):
    control = GenerationControl()
    thread = threading.Thread(target=control.interrupt)
    thread.start()
    thread.join()
    with CountCalls(tiny_loaded.model.unet) as unet:
        result = txt2img(tiny_loaded, Txt2ImgParams(prompt="a", steps=3, seed=1), control=control)
    assert unet.calls == 0 and result.images == []
    control.reset()
    assert len(txt2img(tiny_loaded, Txt2ImgParams(prompt="a", steps=2, seed=1), control=control).images) == 1


# ---------------------------------------------------------------------------- live preview


def test_preview_shape_cache_and_no_vae_call(tiny_loaded):
    model = tiny_loaded.model
    rgb_map = latent_rgb_map(model)
    assert rgb_map.weight.shape == (4, 3) and rgb_map.bias.shape == (3,)
    assert latent_rgb_map(model) is rgb_map  # fitted once, cached on the model
    latents = torch.randn(3, 4, 16, 8)
    with CountCalls(model.vae.decoder) as decoder, CountCalls(model.vae.encoder) as encoder:
        images = latent_preview(model, latents)
        big = latent_preview(model, latents, size=(16, 32))
    assert decoder.calls == encoder.calls == 0
    assert [im.size for im in images] == [(8, 16)] * 3 and big[0].size == (16, 32)
    expected = (latents.permute(0, 2, 3, 1) @ rgb_map.weight + rgb_map.bias).clamp(-1, 1)
    assert np.abs(arr(images[1]) - ((expected[1].numpy() + 1) * 127.5)).max() <= 1
    with pytest.raises(ValueError, match="latents must be"):
        rgb_map(torch.zeros(1, 3, 4, 4))



def test_preview_map_is_refitted_for_other_vae_weights(tiny_model_dir):
    from t2i.checkpoints.registry import load_model
    from t2i.runtime import Runtime

    model = load_model(tiny_model_dir, Runtime.auto("full", "cpu")).model  # a copy of its own to change
    first = latent_rgb_map(model)
    with torch.no_grad():
        for param in model.vae.parameters():
            param.mul_(1.1)  # what loading another VAE file into the same modules does: new values
    second = latent_rgb_map(model)
    assert second is not first and not torch.equal(second.weight, first.weight)
    assert latent_rgb_map(model) is second


def test_fit_is_least_squares(tiny_loaded):
    """No other linear map does better on the fitting data: nudging the fit raises the error."""
    model = tiny_loaded.model
    latents = torch.randn((3, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    fitted = fit_latent_rgb_map(model, latents)
    with torch.no_grad():
        target = F.avg_pool2d(model.decode_latents(latents).clamp(-1, 1), 2)
    error = ((fitted(latents) - target) ** 2).mean()
    assert error < ((target - target.mean(dim=(0, 2, 3), keepdim=True)) ** 2).mean()  # beats the mean colour
    torch.manual_seed(0)
    for _ in range(5):
        nudged = LatentRGBMap(fitted.weight + 0.01 * torch.randn(4, 3), fitted.bias + 0.01 * torch.randn(3))
        assert ((nudged(latents) - target) ** 2).mean() > error


def test_progress_preview_during_sampling(tiny_loaded):
    previews = []
    txt2img(tiny_loaded, Txt2ImgParams(prompt="a", steps=2, seed=1, batch_size=2),
            progress=lambda p: previews.append(p.preview()))
    assert len(previews) == 2 and [im.size for im in previews[-1]] == [(16, 16)] * 2


def test_preview_follows_the_image_on_the_bundled_model():
    """Held-out shapes images (not the fitting scenes): the preview of their latents correlates
    with the image averaged over each latent pixel's patch, channel by channel."""
    from t2i.checkpoints.registry import load_model
    from t2i.data.shapes import ShapesDataset
    from t2i.pipelines.imageops import images_to_tensor
    from t2i.runtime import Runtime

    model = load_model(None, Runtime.auto("full", "cpu")).model
    dataset = ShapesDataset(length=8, seed=4242, resolution=64)
    pixels = images_to_tensor([dataset[i]["image"] for i in range(8)])
    with torch.no_grad():
        latents = model.encode_images(pixels, sample=False)
    preview = latent_rgb_map(model)(latents)  # (8, 3, 16, 16)
    target = F.avg_pool2d(pixels, model.vae_scale_factor)
    a = preview - preview.mean(dim=(0, 2, 3), keepdim=True)
    b = target - target.mean(dim=(0, 2, 3), keepdim=True)
    correlation = (a * b).sum(dim=(0, 2, 3)) / ((a * a).sum(dim=(0, 2, 3)) * (b * b).sum(dim=(0, 2, 3))).sqrt()
    # measured on the bundled model: 0.90, 0.63, 0.78 (a map fitted to these very images: 0.91, 0.62, 0.76)
    assert (correlation > 0.45).all() and correlation.mean() > 0.65, correlation


# ---------------------------------------------------------------------------- CLI bar


def test_cli_progress_bar_draws_each_pass(tiny_loaded):
    from t2i.interfaces.cli.progress import ProgressBar

    out = io.StringIO()
    with ProgressBar(file=out, disable=False, mininterval=0) as bar:
        txt2img(tiny_loaded, Txt2ImgParams(prompt="a", steps=3, seed=1, n_iter=2), progress=bar)
    text = out.getvalue()
    assert "batch 1/2" in text and "batch 2/2" in text and "3/3" in text and "eta" in text
