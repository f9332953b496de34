"""img2img, inpainting, outpainting, variations and hires fix on a tiny random model (32 px, VAE
factor 2): behaviour that holds for any weights."""
import numpy as np
import pytest
import torch
from PIL import Image

from t2i.diffusion.noise import variation_noise
from t2i.diffusion.partial import partial_schedule, sample_partial, steps_to_run
from t2i.diffusion.samplers import make_scheduler
from t2i.diffusion.sampling import draw_noise, make_generators
from t2i.metadata import parse_infotext
from t2i.pipelines.imageops import overlay_mask, prepare_mask, resize_image
from t2i.pipelines.img2img import Img2ImgParams, img2img
from t2i.pipelines.inpaint import InpaintParams, inpaint
from t2i.pipelines.outpaint import OutpaintParams, extents, outpaint
from t2i.pipelines.params import ParamError
from t2i.pipelines.txt2img import Txt2ImgParams, txt2img


def arr(image):
    return np.asarray(image).astype(np.int16)


def noise_image(size=(32, 32), seed=0):
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8))


def box_mask(size, box):
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def count_calls():
    calls = []
    return calls, lambda i, total, latents: calls.append((i, total))


# ---------------------------------------------------------------------------- img2img


def test_strength_zero_returns_the_input_exactly(tiny_loaded):
    image = noise_image()
    result = img2img(tiny_loaded, Img2ImgParams(prompt="a", steps=4, seed=1, denoising_strength=0.0), image)
    assert np.array_equal(arr(result.images[0]), arr(image))
    assert parse_infotext(result.infotexts[0])["Denoising strength"] == "0"


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Euler a"])
def test_strength_one_ignores_the_input(tiny_loaded, sampler):
    kw = dict(prompt="a red circle", steps=4, seed=7, sampler=sampler, eta=1.0)
    plain = txt2img(tiny_loaded, Txt2ImgParams(**kw)).images[0]
    results = [img2img(tiny_loaded, Img2ImgParams(denoising_strength=1.0, **kw), noise_image(seed=s)).images[0]
               for s in (0, 1)]
    for image in results:
        assert np.array_equal(arr(image), arr(plain))


@pytest.mark.parametrize("strength, steps, expected", [(0.5, 10, 5), (0.33, 10, 3), (0.75, 4, 3), (0.01, 10, 1),
                                                       (1.0, 6, 6)])
def test_steps_run_are_strength_times_steps(tiny_loaded, strength, steps, expected):
    calls, callback = count_calls()
    img2img(tiny_loaded, Img2ImgParams(prompt="a", steps=steps, seed=1, denoising_strength=strength,
                                       sampler="Euler"), noise_image(), callback=callback)
    assert len(calls) == expected == steps_to_run(steps, strength)
    assert calls[-1] == (expected - 1, expected)


def test_partial_schedule_is_the_tail_of_the_full_schedule(tiny_loaded):
    config = tiny_loaded.model.scheduler_config()
    full = make_scheduler("DDIM", None, config)
    full.set_timesteps(10)
    timesteps, start = partial_schedule(make_scheduler("DDIM", None, config), 10, 0.3, "cpu")
    assert start == 7 and torch.equal(timesteps, full.timesteps[7:])
    heun = make_scheduler("Heun", None, config)
    timesteps, start = partial_schedule(heun, 10, 0.3, "cpu")
    assert start == 14 and len(timesteps) == 2 * 3 - 1  # Heun: 2 evaluations a step, one on the last


def test_lower_strength_stays_closer_to_the_input(tiny_loaded):
    image = noise_image()
    diffs = []
    for strength in (0.2, 1.0):
        out = img2img(tiny_loaded, Img2ImgParams(prompt="a", steps=10, seed=3, denoising_strength=strength), image)
        diffs.append(np.abs(arr(out.images[0]) - arr(image)).mean())
    assert diffs[0] < diffs[1]


def test_batch_equals_single_runs(tiny_loaded):
    image = noise_image()
    kw = dict(prompt="a", steps=4, denoising_strength=0.6, sampler="Euler a", eta=1.0)
    batch = img2img(tiny_loaded, Img2ImgParams(seed=10, batch_size=3, **kw), image)
    assert batch.seeds == [10, 11, 12]
    for i in range(3):
        single = img2img(tiny_loaded, Img2ImgParams(seed=10 + i, **kw), image)
        assert np.abs(arr(batch.images[i]) - arr(single.images[0])).max() <= 1
    assert not np.array_equal(arr(batch.images[0]), arr(batch.images[1]))


def stripes():
    """64x32: red | green | blue columns (16, 32, 16 px), the top 4 rows white."""
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :16] = (255, 0, 0)
    pixels[:, 16:48] = (0, 255, 0)
    pixels[:, 48:] = (0, 0, 255)
    pixels[:4] = 255
    return Image.fromarray(pixels)


def test_resize_modes_place_the_content():
    image = stripes()
    just = arr(resize_image(image, "Just resize", 32, 32))
    assert just.shape == (32, 32, 3)
    assert tuple(just[16, 3]) == (255, 0, 0) and tuple(just[16, 16]) == (0, 255, 0) and tuple(just[16, 28]) == (0, 0, 255)
    crop = arr(resize_image(image, "Crop and resize", 32, 32))
    assert (crop[4:] == (0, 255, 0)).all()  # the centre 32 columns: all green
    fill = arr(resize_image(image, "Resize and fill", 32, 32))
    assert fill.shape == (32, 32, 3)
    # the image is fitted to 32x16 in rows 8..23, the bands repeat its edge rows
    assert np.abs(fill[:8] - fill[8]).max() <= 1 and np.abs(fill[24:] - fill[23]).max() <= 1
    assert tuple(fill[16, 16]) == (0, 255, 0) and fill[:8, 16].min() > 200  # white top band
    assert not np.abs(just[:8] - just[8]).max() <= 1


@pytest.mark.parametrize("mode", ["Just resize", "Crop and resize", "Resize and fill"])
def test_img2img_resize_modes(tiny_loaded, mode):
    image = stripes()
    params = Img2ImgParams(prompt="a", steps=2, seed=1, width=32, height=32, resize_mode=mode)
    expected = resize_image(image, mode, 32, 32)
    still = img2img(tiny_loaded, Img2ImgParams(**{**params.__dict__, "denoising_strength": 0.0}), image)
    assert still.images[0].size == (32, 32) and np.array_equal(arr(still.images[0]), arr(expected))
    moved = img2img(tiny_loaded, params, image)
    assert moved.images[0].size == (32, 32)
    info = parse_infotext(moved.infotexts[0])
    assert info.get("Resize mode") == (None if mode == "Just resize" else mode)


def test_img2img_default_size_is_the_input_size(tiny_loaded):
    result = img2img(tiny_loaded, Img2ImgParams(prompt="a", steps=2, seed=1), noise_image((24, 41)))
    assert result.images[0].size == (24, 40)


# ---------------------------------------------------------------------------- inpainting


def test_only_masked_keeps_the_unmasked_pixels(tiny_loaded):
    image = noise_image((64, 48))
    mask = box_mask(image.size, (40, 20, 52, 30))
    params = InpaintParams(prompt="a", steps=4, seed=1, mask_blur=2, inpaint_full_res=True,
                           inpaint_full_res_padding=4, denoising_strength=0.9)
    result = inpaint(tiny_loaded, params, image, mask)
    out, src = arr(result.images[0]), arr(image)
    assert result.images[0].size == (64, 48)
    untouched = np.asarray(overlay_mask(prepare_mask(mask, image.size, blur=2))) == 0
    assert np.array_equal(out[untouched], src[untouched])
    assert untouched[:, :30].all()  # a real check: the left part is outside the mask
    assert np.abs(out[22:28, 42:50] - src[22:28, 42:50]).mean() > 5  # the masked box was repainted
    info = parse_infotext(result.infotexts[0])
    assert info["Inpaint area"] == "Only masked" and info["Masked area padding"] == "4"
    assert info["Mask blur"] == "2" and info["Size"] == "32x32"  # painted at the model's size


@pytest.mark.parametrize("fill", ["fill", "original", "latent noise", "latent nothing"])
def test_whole_picture_with_a_hard_mask_keeps_the_rest(tiny_loaded, fill):
    image = noise_image()
    mask = box_mask(image.size, (8, 8, 20, 24))
    params = InpaintParams(prompt="a", steps=3, seed=2, mask_blur=0, inpainting_fill=fill)
    out, src = arr(inpaint(tiny_loaded, params, image, mask).images[0]), arr(image)
    inside = np.asarray(mask) > 0
    assert np.array_equal(out[~inside], src[~inside])
    assert np.abs(out[inside] - src[inside]).mean() > 5


def test_latent_blending_keeps_the_known_latents(tiny_loaded):
    model = tiny_loaded.model
    init = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    gens = make_generators([1])
    noise = draw_noise(gens, (4, 16, 16))
    keep = torch.zeros(1, 1, 16, 16)
    keep[..., :8] = 1
    cond = model.encode_prompts(["a"])

    def denoiser(x, t):
        return model.unet(x, t, encoder_hidden_states=cond).sample

    scheduler = make_scheduler("Euler a", None, model.scheduler_config())
    out = sample_partial(denoiser, scheduler, init, noise, steps=4, strength=0.8, generators=gens, keep=keep)
    assert torch.equal(out[..., :8], init[..., :8]) and not torch.allclose(out[..., 8:], init[..., 8:])


def test_invert_and_empty_masks(tiny_loaded):
    image = noise_image()
    black = Image.new("L", image.size, 0)
    with pytest.raises(ParamError, match="empty"):
        inpaint(tiny_loaded, InpaintParams(prompt="a", steps=2, seed=1), image, black)
    params = InpaintParams(prompt="a", steps=2, seed=1, mask_blur=0, inpainting_mask_invert=True)
    mask = box_mask(image.size, (0, 0, 16, 32))  # white left half; inverted, the right half is repainted
    result = inpaint(tiny_loaded, params, image, mask)
    out, src = arr(result.images[0]), arr(image)
    assert np.array_equal(out[:, :16], src[:, :16]) and not np.array_equal(out[:, 16:], src[:, 16:])
    assert parse_infotext(result.infotexts[0])["Mask mode"] == "Inpaint not masked"
    with pytest.raises(ValueError, match="size"):
        inpaint(tiny_loaded, params, image, Image.new("L", (16, 16), 255))


def test_inpaint_strength_zero_returns_the_input(tiny_loaded):
    image = noise_image()
    for full_res in (False, True):
        params = InpaintParams(prompt="a", steps=2, seed=1, denoising_strength=0.0, inpaint_full_res=full_res,
                               inpainting_fill="fill")
        out = inpaint(tiny_loaded, params, image, box_mask(image.size, (4, 4, 12, 12))).images[0]
        assert np.array_equal(arr(out), arr(image))


@pytest.fixture(scope="module")
def inpainting_loaded(tiny_loaded):
    """The tiny model with a 9-channel (inpainting) UNet."""
    from diffusers import UNet2DConditionModel

    from t2i.checkpoints.registry import LoadedModel
    from t2i.models.ldm import LatentDiffusion

    base = tiny_loaded.model
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**base.unet.config, "in_channels": 9})
    model = LatentDiffusion(base.config, base.tokenizer, base.text_encoder, unet, base.vae).eval()
    return LoadedModel(model, "tiny-inpainting", "abcdef0123", tiny_loaded.path, tiny_loaded.runtime)


def test_nine_channel_unet_gets_mask_and_masked_image(inpainting_loaded):
    seen = []
    hook = inpainting_loaded.model.unet.conv_in.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        image = noise_image()
        mask = box_mask(image.size, (8, 8, 24, 24))
        params = InpaintParams(prompt="a", steps=2, seed=1, mask_blur=0)
        out = arr(inpaint(inpainting_loaded, params, image, mask).images[0])
    finally:
        hook.remove()
    x = seen[0]
    assert x.shape == (2, 9, 16, 16)  # [uncond, cond] x (latents, mask, masked-image latents)
    assert torch.equal(x[:, 4], torch.nn.functional.interpolate(
        torch.from_numpy(np.asarray(mask) / 255.0).float()[None, None], size=(16, 16)).expand(2, 1, 16, 16)[:, 0])
    inside = np.asarray(mask) > 0
    assert np.array_equal(out[~inside], arr(image)[~inside])
    # img2img on an inpainting UNet: the whole image counts as masked
    img2img(inpainting_loaded, Img2ImgParams(prompt="a", steps=2, seed=1), image)


# ---------------------------------------------------------------------------- outpainting


def test_outpaint_extends_the_canvas(tiny_loaded):
    image = noise_image()
    params = OutpaintParams(prompt="a", steps=2, seed=1, pixels=8, directions="left,down", mask_blur=1)
    result = outpaint(tiny_loaded, params, image)
    out = arr(result.images[0])
    assert result.images[0].size == (40, 40)
    # the original sits at (8, 0); far from the seams (left, bottom) it is unchanged
    assert np.array_equal(out[:24, 16:], arr(image)[:24, 8:])
    assert np.abs(out[:, :6] - out[:, 8:9]).mean() > 0  # the new band was painted, not just stretched
    info = parse_infotext(result.infotexts[0])
    assert info["Outpaint pixels"] == "8" and info["Outpaint directions"] == "left,down"
    assert info["Size"] == "40x40"
    with pytest.raises(ParamError, match="directions"):
        outpaint(tiny_loaded, OutpaintParams(prompt="a", directions="sideways"), image)


def test_outpaint_extents_end_on_the_vae_factor():
    assert extents((32, 32), 7, ("left",), 8) == {"left": 8, "right": 0, "up": 0, "down": 0}
    assert extents((30, 32), 8, ("left", "right"), 8) == {"left": 8, "right": 10, "up": 0, "down": 0}


# ---------------------------------------------------------------------------- variations


def test_variation_strength_zero_is_the_seed_and_one_is_the_subseed(tiny_loaded):
    kw = dict(prompt="a", steps=3, sampler="DPM++ 2M")  # deterministic: only the initial noise matters
    base = arr(txt2img(tiny_loaded, Txt2ImgParams(seed=5, **kw)).images[0])
    other = arr(txt2img(tiny_loaded, Txt2ImgParams(seed=99, **kw)).images[0])
    zero = txt2img(tiny_loaded, Txt2ImgParams(seed=5, subseed=99, subseed_strength=0.0, **kw))
    one = txt2img(tiny_loaded, Txt2ImgParams(seed=5, subseed=99, subseed_strength=1.0, **kw))
    half = txt2img(tiny_loaded, Txt2ImgParams(seed=5, subseed=99, subseed_strength=0.5, **kw))
    assert np.array_equal(arr(zero.images[0]), base) and np.array_equal(arr(one.images[0]), other)
    assert not np.array_equal(arr(half.images[0]), base) and not np.array_equal(arr(half.images[0]), other)
    assert "Variation seed" not in parse_infotext(zero.infotexts[0])
    info = parse_infotext(half.infotexts[0])
    assert info["Variation seed"] == "99" and info["Variation seed strength"] == "0.5"


def test_variation_noise_keeps_unit_variance_and_batches():
    noise, _ = variation_noise([1, 2], (4, 32, 32), subseeds=[7, 8], subseed_strength=0.5)
    assert abs(noise.std().item() - 1.0) < 0.05  # a linear blend would give ~0.71
    single, _ = variation_noise([2], (4, 32, 32), subseeds=[8], subseed_strength=0.5)
    assert torch.equal(noise[1], single[0])


def test_seed_resize_from_centres_the_old_noise(tiny_loaded):
    noise, _ = variation_noise([3], (4, 16, 16), resize_from=(4, 8, 8))
    assert torch.equal(noise[0, :, 4:12, 4:12], draw_noise(make_generators([3]), (4, 8, 8))[0])
    same = txt2img(tiny_loaded, Txt2ImgParams(prompt="a", steps=2, seed=3, seed_resize_from_w=32,
                                              seed_resize_from_h=32))
    plain = txt2img(tiny_loaded, Txt2ImgParams(prompt="a", steps=2, seed=3))
    assert np.array_equal(arr(same.images[0]), arr(plain.images[0]))
    assert parse_infotext(same.infotexts[0])["Seed resize from"] == "32x32"
    with pytest.raises(ParamError, match="together"):
        txt2img(tiny_loaded, Txt2ImgParams(prompt="a", seed_resize_from_w=16))


# ---------------------------------------------------------------------------- hires fix


def test_hires_fix_size_and_infotext(tiny_loaded):
    params = Txt2ImgParams(prompt="a", steps=2, seed=1, enable_hr=True, hr_scale=2.0, hr_second_pass_steps=3,
                           denoising_strength=0.5)
    calls, callback = count_calls()
    result = txt2img(tiny_loaded, params, callback=callback)
    assert result.images[0].size == (64, 64)
    assert [total for _, total in calls] == [2, 2, 2, 2]  # 2 first-pass steps, then round(0.5 * 3) = 2
    info = parse_infotext(result.infotexts[0])
    assert info["Size"] == "32x32" and info["Hires upscale"] == "2" and info["Hires steps"] == "3"
    assert info["Hires upscaler"] == "Latent" and info["Denoising strength"] == "0.5"
    wide = txt2img(tiny_loaded, Txt2ImgParams(prompt="a", steps=2, seed=1, enable_hr=True, hr_resize_x=48,
                                              hr_upscaler="Latent (nearest)"))
    assert wide.images[0].size == (48, 48) and parse_infotext(wide.infotexts[0])["Hires resize"] == "48x0"


def test_hires_image_upscaler_at_strength_zero_is_the_upscaled_first_pass(tiny_loaded):
    first = txt2img(tiny_loaded, Txt2ImgParams(prompt="a", steps=2, seed=4)).images[0]
    hires = txt2img(tiny_loaded, Txt2ImgParams(prompt="a", steps=2, seed=4, enable_hr=True, hr_upscaler="Lanczos",
                                               denoising_strength=0.0)).images[0]
    assert np.array_equal(arr(hires), arr(first.resize((64, 64), Image.Resampling.LANCZOS)))


# ---------------------------------------------------------------------------- CLI


def test_cli_image_commands(tiny_model_dir, tmp_path, capsys):
    from t2i.interfaces.cli import build_parser, main
    from t2i.interfaces.cli.common import imply_enable_hr

    image, mask = tmp_path / "in.png", tmp_path / "mask.png"
    noise_image().save(image)
    box_mask((32, 32), (8, 8, 24, 24)).save(mask)
    common = ["--model", str(tiny_model_dir), "--precision", "full", "--device", "cpu", "--steps", "2", "--seed", "3"]
    assert main(["img2img", str(image), "a cat", "--outdir", str(tmp_path / "i"), "--denoising-strength", "0.5",
                 "--resize-mode", "Crop and resize", *common]) == 0
    assert main(["inpaint", str(image), str(mask), "a cat", "--outdir", str(tmp_path / "p"), "--only-masked",
                 "--masked-content", "latent noise", *common]) == 0
    assert main(["outpaint", str(image), "--pixels", "4", "--directions", "right", "--outdir", str(tmp_path / "o"),
                 *common]) == 0
    made = {d: sorted((tmp_path / d).glob("*.png")) for d in "ipo"}
    assert all(len(files) == 1 for files in made.values())
    with Image.open(made["o"][0]) as out:
        assert out.size == (36, 32)
    with Image.open(made["p"][0]) as out:
        assert "Masked content: latent noise" in out.info["parameters"]
    assert main(["inpaint", str(image), str(tmp_path / "missing.png"), *common]) == 2
    assert "does not exist" in capsys.readouterr().err
    args = build_parser().parse_args(["generate", "x", "--hr-scale", "1.5"])
    imply_enable_hr(args)
    assert args.enable_hr is True and args.hr_scale == 1.5
