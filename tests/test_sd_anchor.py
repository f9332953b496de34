"""The correctness anchor beyond SD 1.x (which tests/test_sd_checkpoints.py checks with DDIM and
Euler): tiny random SDXL-shaped, SD 2.x v-prediction and 9-channel inpainting models written as
original-layout single files, loaded by t2i from the file, generate diffusers' own pipeline's
image (same weights, prompt, seed, sampler, steps, CFG) to within 2/255 per pixel. Plus SDXL
through every pipeline and through the prompt syntax."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from t2i.checkpoints.convert import export_targets, open_clip_target, save_single_file, text_name, to_original
from t2i.checkpoints.single_file import load_user_model
from t2i.runtime import Runtime

from test_sd_checkpoints import tiny_clip_config, tiny_pipeline, tiny_unet
from test_sdxl_checkpoint import tiny_sdxl_pipeline

CPU = Runtime.auto("full", "cpu")
SIZE = 32  # pixels: 16x16 latents with the tiny VAEs (factor 2)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def ddim(**overrides):
    from diffusers import DDIMScheduler

    # SD's training schedule with the keys the real scheduler_config.json files carry
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading", **overrides)


def scheduled(pipe, sampler):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    cls = {"DDIM": DDIMScheduler, "Euler": EulerDiscreteScheduler}[sampler]
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def t2i_image(loaded, **kwargs):
    from t2i.pipelines.txt2img import Txt2ImgParams, txt2img

    params = Txt2ImgParams(**{"steps": 5, "cfg_scale": 7.5, "seed": 1234, "width": SIZE, "height": SIZE, **kwargs})
    return np.asarray(txt2img(loaded, params).images[0]).astype(np.float64)


def assert_close_to(image, expected):
    assert image.shape == (SIZE, SIZE, 3) and image.std() > 2  # a real image, not a flat one
    assert np.abs(image - expected * 255).max() <= 2.0


# --------------------------------------------------------------------------- SDXL


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """(diffusers SDXL pipeline, t2i LoadedModel from its single file)."""
    from diffusers import StableDiffusionXLPipeline

    root = tmp_path_factory.mktemp("sdxl-anchor")
    parts = tiny_sdxl_pipeline().components
    pipe = StableDiffusionXLPipeline(**{**parts, "scheduler": ddim()}, add_watermarker=False)
    pipe.save_pretrained(root / "folder")
    save_single_file(pipe, root / "tiny-xl.safetensors")
    return pipe, load_user_model(root / "tiny-xl.safetensors", CPU, config_dir=root / "folder")


@pytest.mark.parametrize("sampler, negative", [("DDIM", "blurry"), ("Euler", "")])
def test_sdxl_txt2img_equals_diffusers_pipeline(sdxl, sampler, negative):
    """Pooled embedding, size conditioning and both encoders' context reach the UNet as diffusers
    sends them. An empty negative prompt is zeros, as diffusers' `force_zeros_for_empty_prompt`
    (negative_prompt=None) and the web UI do."""
    pipe, loaded = sdxl
    assert loaded.model.config.family == "sdxl"
    expected = scheduled(pipe, sampler)(
        "a red circle", negative_prompt=negative or None, num_inference_steps=5, guidance_scale=7.5, height=SIZE,
        width=SIZE, eta=0.0, generator=torch.Generator().manual_seed(1234), output_type="np").images[0]
    image = t2i_image(loaded, prompt="a red circle", negative_prompt=negative, sampler=sampler)
    assert_close_to(image, expected)
    if not negative:  # the zeros matter: encoding "" would give another image
        encoded = pipe("a red circle", negative_prompt="", num_inference_steps=5, guidance_scale=7.5, height=SIZE,
                       width=SIZE, generator=torch.Generator().manual_seed(1234), output_type="np").images[0]
        assert np.abs(image - encoded * 255).max() > 4


def test_sdxl_empty_negative_is_zeros_but_padding_is_the_empty_prompt(sdxl):
    from t2i.diffusion.conditioning import PromptEncoder

    _, loaded = sdxl
    encoder = PromptEncoder.from_model(loaded.model)
    negative = encoder.conditioning("", negative=True)
    assert not negative.context("").any() and not negative.pooled("").any()
    assert encoder.empty.abs().sum() > 0  # what pads a shorter context: the real encoding of ""
    assert encoder.conditioning("x", negative=True).context("x").abs().sum() > 0
    assert encoder.conditioning("").context("").abs().sum() > 0  # an empty *prompt* is encoded


def test_sdxl_prompt_syntax_chunks_weights_and_pooled(sdxl):
    """Long prompts / BREAK concatenate chunks of both encoders; the pooled embedding is the first
    chunk's, unweighted (the web UI's rule); weights scale each encoder's states separately."""
    from t2i.diffusion.conditioning import PromptEncoder

    _, loaded = sdxl
    model = loaded.model
    encoder = PromptEncoder.from_model(model)
    with torch.no_grad():
        context, pooled = model.encode_prompts_sdxl(["a cat"])
    assert torch.allclose(encoder.encode("a cat"), context, atol=1e-6)
    assert torch.allclose(encoder.pooled("a cat"), pooled, atol=1e-6)
    both = encoder.encode("a cat BREAK a dog")
    assert both.shape == (1, 154, 80) and torch.allclose(both[:, :77], context, atol=1e-6)
    assert torch.allclose(encoder.pooled("a cat BREAK a dog"), pooled, atol=1e-6)
    weighted = encoder.encode("(a cat:1.5)")
    assert torch.allclose(encoder.pooled("(a cat:1.5)"), pooled, atol=1e-6)
    assert not torch.allclose(weighted, context, atol=1e-3)
    for part in (slice(0, 32), slice(32, 80)):  # each encoder keeps its own mean
        assert torch.allclose(weighted[..., part].mean(), context[..., part].mean(), rtol=1e-4, atol=1e-6)


class AddedConditionsRecorder(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet, self.config, self.calls = unet, unet.config, []

    def forward(self, x, t, encoder_hidden_states, added_cond_kwargs):
        self.calls.append({k: v.clone() for k, v in added_cond_kwargs.items()})
        return self.unet(x, t, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs)


def test_sdxl_pooled_follows_prompt_editing_and_and_parts(sdxl):
    from t2i.diffusion.conditioning import PromptEncoder
    from t2i.diffusion.samplers import make_scheduler
    from t2i.diffusion.sampling import denoise, draw_noise, make_generators

    _, loaded = sdxl
    model = loaded.model
    encoder = PromptEncoder.from_model(model)
    unet = AddedConditionsRecorder(model.unet)
    gens = make_generators([1, 2])
    cond = encoder.conditioning("a [cat:dog:0.5] AND a tree :0.5")
    uncond = encoder.conditioning("", negative=True)
    scheduler = make_scheduler("Euler", "Automatic", model.scheduler_config())
    out = denoise(unet, scheduler, draw_noise(gens, (4, 4, 6)), cond, uncond, steps=4, cfg_scale=5.0, generators=gens)
    assert torch.isfinite(out).all()
    first, last = unet.calls[0], unet.calls[-1]
    # rows: uncond x2 (zeros), then per image its two parts
    assert first["text_embeds"].shape == (6, 48) and not first["text_embeds"][:2].any()
    assert torch.equal(first["text_embeds"][2], encoder.pooled("a cat")[0])
    assert torch.equal(last["text_embeds"][2], encoder.pooled("a dog")[0])
    assert torch.equal(last["text_embeds"][3], encoder.pooled("a tree")[0])
    # size conditioning: original (h, w), crop (0, 0), target (h, w) in pixels, for every row
    factor = model.vae_scale_factor
    assert first["time_ids"].tolist() == [[4 * factor, 6 * factor, 0, 0, 4 * factor, 6 * factor]] * 6


def test_sdxl_img2img_inpaint_and_hires(sdxl):
    from t2i.pipelines.img2img import Img2ImgParams, img2img
    from t2i.pipelines.inpaint import InpaintParams, inpaint
    from t2i.pipelines.txt2img import Txt2ImgParams, txt2img

    _, loaded = sdxl
    common = {"prompt": "a red circle", "steps": 4, "seed": 7, "sampler": "Euler"}
    first = txt2img(loaded, Txt2ImgParams(**common, width=SIZE, height=SIZE)).images[0]
    # strength 1 starts from pure noise: exactly txt2img, conditioning included
    again = img2img(loaded, Img2ImgParams(**common, denoising_strength=1.0), first).images[0]
    assert np.array_equal(np.asarray(again), np.asarray(first))
    changed = img2img(loaded, Img2ImgParams(**common, denoising_strength=0.5), first).images[0]
    assert not np.array_equal(np.asarray(changed), np.asarray(first))
    mask = Image.new("L", first.size, 0)
    mask.paste(255, (8, 8, 24, 24))
    painted = np.asarray(inpaint(loaded, InpaintParams(**common, mask_blur=0), first, mask).images[0])
    assert np.array_equal(painted[:4], np.asarray(first)[:4])  # outside the mask: the input's pixels
    hires = txt2img(loaded, Txt2ImgParams(**common, width=SIZE, height=SIZE, enable_hr=True, hr_scale=1.5,
                                          denoising_strength=0.5)).images[0]
    assert hires.size == (48, 48) and np.asarray(hires).std() > 2


# --------------------------------------------------------------------------- SD 2.x v-prediction


@pytest.fixture(scope="module")
def sd2v(tmp_path_factory):
    """An SD 2.x-shaped v-prediction model: OpenCLIP text tower (one layer more in the file than
    SD 2.x uses), linear attention projections, "!" padding, a sidecar YAML saying `v`."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from t2i.models.text import load_tokenizer

    root = tmp_path_factory.mktemp("sd2v")
    torch.manual_seed(3)
    full_tower = CLIPTextModelWithProjection(tiny_clip_config(layers=3, act="gelu"))
    used = CLIPTextModel(tiny_clip_config(layers=2, act="gelu"))  # SD 2.x: the penultimate layer
    used.load_state_dict({text_name(k): v for k, v in full_tower.state_dict().items()
                          if ".layers.2." not in k and "projection" not in k})
    tokenizer = load_tokenizer(max_length=77)
    tokenizer.pad_token = "!"
    pipe = StableDiffusionPipeline(vae=tiny_pipeline().vae, text_encoder=used, tokenizer=tokenizer,
                                   unet=tiny_unet(linear_projection=True),
                                   scheduler=ddim(prediction_type="v_prediction"), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "folder")
    targets = export_targets("sd1", dict(pipe.unet.config), dict(pipe.vae.config))
    state = to_original({"unet": (pipe.unet.state_dict(), targets["unet"]),
                         "vae": (pipe.vae.state_dict(), targets["vae"]),
                         "te": (full_tower.state_dict(),
                                lambda n: open_clip_target(text_name(n), "cond_stage_model.model."))})
    path = root / "tiny-sd2-v.safetensors"
    save_file(state, str(path))
    path.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: v\n")
    return pipe, load_user_model(path, CPU, config_dir=root / "folder")


def test_sd2_v_prediction_txt2img_equals_diffusers_pipeline(sd2v):
    pipe, loaded = sd2v
    model = loaded.model
    assert model.config.family == "sd2" and model.config.prediction_type == "v_prediction"
    assert model.tokenizer.pad_token == "!"
    expected = scheduled(pipe, "Euler")(
        "a red circle", negative_prompt="blurry", num_inference_steps=5, guidance_scale=7.5, height=SIZE, width=SIZE,
        generator=torch.Generator().manual_seed(1234), output_type="np").images[0]
    image = t2i_image(loaded, prompt="a red circle", negative_prompt="blurry", sampler="Euler")
    assert_close_to(image, expected)


# --------------------------------------------------------------------------- 9-channel inpainting UNet


@pytest.fixture(scope="module")
def inpainting(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd1-inpaint")
    pipe = tiny_pipeline(in_channels=9)
    pipe.save_pretrained(root / "folder")
    save_single_file(pipe, root / "tiny-inpaint.safetensors")
    return pipe, load_user_model(root / "tiny-inpaint.safetensors", CPU, config_dir=root / "folder")


def test_txt2img_on_an_inpainting_unet_equals_diffusers_with_everything_masked(inpainting):
    """txt2img with a 9-channel UNet conditions it as the web UI does: mask of ones, masked image
    mid grey (0 in [-1, 1]) encoded by the VAE (its posterior's mode). diffusers' inpainting
    pipeline given a white mask and those masked-image latents must then agree."""
    from diffusers import StableDiffusionInpaintPipeline

    pipe, loaded = inpainting
    assert loaded.model.config.inpainting
    with torch.no_grad():
        grey = torch.zeros(1, 3, SIZE, SIZE)
        masked_latents = pipe.vae.encode(grey).latent_dist.mode() * pipe.vae.config.scaling_factor
    inpaint_pipe = scheduled(StableDiffusionInpaintPipeline(**pipe.components), "DDIM")
    expected = inpaint_pipe(
        "a red circle", image=Image.new("RGB", (SIZE, SIZE), (128, 128, 128)),
        mask_image=Image.new("L", (SIZE, SIZE), 255), masked_image_latents=masked_latents, strength=1.0,
        negative_prompt="blurry", num_inference_steps=5, guidance_scale=7.5, height=SIZE, width=SIZE, eta=0.0,
        generator=torch.Generator().manual_seed(1234), output_type="np").images[0]
    image = t2i_image(loaded, prompt="a red circle", negative_prompt="blurry", sampler="DDIM")
    assert_close_to(image, expected)


def test_hires_fix_on_an_inpainting_unet(inpainting):
    from t2i.pipelines.txt2img import Txt2ImgParams, txt2img

    _, loaded = inpainting
    params = Txt2ImgParams(prompt="a red circle AND a square", steps=3, seed=5, width=SIZE, height=SIZE,
                           batch_size=2, enable_hr=True, hr_scale=1.5, denoising_strength=0.6)
    images = txt2img(loaded, params).images
    assert [im.size for im in images] == [(48, 48)] * 2 and all(np.asarray(im).std() > 2 for im in images)
