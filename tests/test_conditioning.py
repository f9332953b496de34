"""Prompt syntax in sampling: weighted encoding, long prompts, BREAK, schedules, AND, padding."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from t2i.diffusion.conditioning import (
    PromptConditioning,
    PromptDenoiser,
    PromptEncoder,
    chunk_tokens,
)
from t2i.diffusion.samplers import make_scheduler
from t2i.diffusion.sampling import CFGDenoiser, cfg_combine, denoise, draw_noise, make_generators, sample_scheduler
from t2i.models.text import BOS_ID, EOS_ID, load_tokenizer, tokenize
from t2i.prompts import has_schedule, parse_attention

torch.set_num_threads(1)
# diffusers' schedule set-up trips a NumPy 2 deprecation on every call.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
SHAPE = (4, 8, 8)  # latent (C, H, W): the tiny UNet takes any multiple of 4


@pytest.fixture(scope="module")
def model(tiny_loaded):
    return tiny_loaded.model


@pytest.fixture()
def encoder(model):
    return PromptEncoder.from_model(model)


class Recorder(torch.nn.Module):
    """Wraps a UNet and keeps the text context it sees at each call."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.contexts: list[torch.Tensor] = []

    def forward(self, x, t, encoder_hidden_states):
        self.contexts.append(encoder_hidden_states.clone())
        return self.unet(x, t, encoder_hidden_states=encoder_hidden_states)


class FakeUNet(torch.nn.Module):
    """An output that depends on x and, per batch row, on the context: easy to compute by hand."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, encoder_hidden_states):
        offset = encoder_hidden_states.mean(dim=1)[:, : x.shape[1]]  # (N, C)
        return SimpleNamespace(sample=x * self.gain + offset[:, :, None, None])


def sample(unet, model, cond, uncond, steps=4, cfg_scale=5.0, sampler="Euler", seeds=(1,)):
    gens = make_generators(list(seeds))
    noise = draw_noise(gens, SHAPE)
    scheduler = make_scheduler(sampler, "Automatic", model.scheduler_config())
    return denoise(unet, scheduler, noise, cond, uncond, steps=steps, cfg_scale=cfg_scale, generators=gens)


# --------------------------------------------------------------------------- tokens and chunks


def test_long_prompt_is_cut_into_chunks_of_model_max_length():
    tiny = load_tokenizer(max_length=32)  # the bundled model's length: 30 tokens per chunk
    chunks = chunk_tokens(tiny, [("cat " * 100, 1.0)])
    cat = tiny("cat", add_special_tokens=False).input_ids[0]
    assert len(chunks) == 4 and all(len(c.ids) == len(c.weights) == 32 for c in chunks)
    assert chunks[0].ids == (BOS_ID, *[cat] * 30, EOS_ID)
    assert chunks[3].ids == (BOS_ID, *[cat] * 10, *[EOS_ID] * 21)
    sd = load_tokenizer(max_length=77)  # a real SD tokenizer's length: 75 per chunk
    chunks = chunk_tokens(sd, [("cat " * 100, 1.0)])
    assert [len(c.ids) for c in chunks] == [77, 77]
    assert chunks[1].ids[:27] == (BOS_ID, *[cat] * 25, EOS_ID)


def test_one_chunk_equals_the_tokenizer_padding():
    tok = load_tokenizer(max_length=32)
    for prompt in ["", "a photo of a cat, red", "a " * 30]:
        (chunk,) = chunk_tokens(tok, [(prompt, 1.0)])
        assert list(chunk.ids) == tokenize(tok, [prompt])[0].tolist()


def test_break_pads_the_current_chunk_and_starts_a_new_one():
    tok = load_tokenizer(max_length=32)
    chunks = chunk_tokens(tok, parse_attention("a red circle BREAK a blue square"))
    assert [list(c.ids) for c in chunks] == tokenize(tok, ["a red circle", "a blue square"]).tolist()
    assert len(chunk_tokens(tok, parse_attention("BREAK a cat"))) == 2  # leading BREAK: an empty chunk first


def test_a_comma_near_the_end_of_a_full_chunk_moves_the_words_after_it():
    tok = load_tokenizer(max_length=32)
    cat, dog, comma = tok("cat dog ,", add_special_tokens=False).input_ids
    chunks = chunk_tokens(tok, [("cat " * 25 + ", " + "dog " * 10, 1.0)])
    assert chunks[0].ids[1:28] == (*[cat] * 25, comma, EOS_ID)
    assert chunks[1].ids[1:12] == (*[dog] * 10, EOS_ID)
    no_backtrack = chunk_tokens(tok, [("cat " * 25 + ", " + "dog " * 10, 1.0)], comma_backtrack=0)
    assert no_backtrack[0].ids[-5:] == (dog, dog, dog, dog, EOS_ID)


def test_token_weights_follow_the_attention_chunks():
    tok = load_tokenizer(max_length=32)
    (chunk,) = chunk_tokens(tok, parse_attention("a (cat:1.5) [sat]"))
    assert chunk.weights[:5] == (1.0, 1.0, 1.5, pytest.approx(1 / 1.1), 1.0)


# --------------------------------------------------------------------------- encoding


def test_weight_one_everywhere_equals_plain_encoding_exactly(model, encoder):
    plain = model.encode_prompts(["a red circle on blue"])
    for prompt in ["a red circle on blue", "a (red circle:1.0) on blue", "(a red circle on blue:1)"]:
        assert torch.equal(encoder.encode(prompt), plain)
    assert torch.equal(encoder.empty, model.encode_prompts([""]))


def test_a_weight_scales_its_tokens_and_keeps_the_mean(encoder):
    plain = encoder.encode("a red circle")[0]  # (32, D)
    weighted = encoder.encode("a (red:1.5) circle")[0]
    ratio = weighted / plain
    k = ratio[0].mean()  # BOS: untouched but for the mean-preserving rescale
    others = torch.cat([ratio[:2], ratio[3:]])
    torch.testing.assert_close(others, torch.full_like(others, k.item()), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ratio[2], torch.full_like(ratio[2], 1.5 * k.item()), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(weighted.mean(), plain.mean(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(weighted[2], plain[2], atol=1e-3)


def test_long_prompt_and_break_encodings(encoder, model):
    assert encoder.encode("cat " * 100).shape == (1, 128, 32)  # 4 chunks of 32 side by side
    both = encoder.encode("a red circle BREAK a blue square")
    assert both.shape == (1, 64, 32)
    torch.testing.assert_close(both[:, :32], model.encode_prompts(["a red circle"]))
    torch.testing.assert_close(both[:, 32:], model.encode_prompts(["a blue square"]))


def test_each_text_is_encoded_once_and_a_plain_prompt_costs_nothing_per_step(model, encoder):
    calls = []
    handle = model.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        cond, uncond = encoder.conditioning("a red circle"), encoder.conditioning("", negative=True)
        assert len(calls) == 2 and cond.static
        den = cond.denoiser(model.unet, uncond, 5.0, 1)
        context = den.context
        sample(Recorder(model.unet), model, cond, uncond, steps=6)
        assert len(calls) == 2  # nothing encoded while sampling
        den.begin_step(3, 6)
        assert den.context is context
        sample(model.unet, model, encoder.conditioning("a [green|blue] circle"), uncond, steps=6)
        assert len(calls) == 4  # two texts, each once, for six steps
    finally:
        handle.remove()


# --------------------------------------------------------------------------- schedules in sampling


def test_prompt_editing_switches_conditioning_at_the_right_step(model, encoder):
    rec = Recorder(model.unet)
    sample(rec, model, encoder.conditioning("a [cat:dog:0.5] sat"), encoder.conditioning("", negative=True), steps=10)
    cat, dog = encoder.encode("a cat sat"), encoder.encode("a dog sat")
    assert len(rec.contexts) == 10
    for i, context in enumerate(rec.contexts):
        assert torch.equal(context[1:], cat if i < 5 else dog), i
        assert torch.equal(context[:1], encoder.empty)


def test_schedule_counts_model_evaluations_for_second_order_samplers(model, encoder):
    rec = Recorder(model.unet)
    sample(rec, model, encoder.conditioning("[cat:dog:0.5]"), encoder.conditioning("", negative=True),
           steps=3, sampler="Heun")
    assert len(rec.contexts) == 5  # Heun: 2 * 3 - 1 evaluations; 0.5 of 5 -> switch after the 2nd
    cat, dog = encoder.encode("cat"), encoder.encode("dog")
    assert [torch.equal(c[1:], cat) for c in rec.contexts] == [True, True, False, False, False]
    assert torch.equal(rec.contexts[-1][1:], dog)


def test_alternation_and_a_scheduled_negative_prompt(model, encoder):
    rec = Recorder(model.unet)
    cond = encoder.conditioning("a [cat|dog]")
    uncond = encoder.conditioning("[ugly::2] blurry", negative=True)
    sample(rec, model, cond, uncond, steps=5)
    cat, dog = encoder.encode("a cat"), encoder.encode("a dog")
    assert [torch.equal(c[1:], cat) for c in rec.contexts] == [True, False, True, False, True]
    assert [torch.equal(c[1:], dog) for c in rec.contexts] == [False, True, False, True, False]
    ugly, blurry = encoder.encode("ugly blurry"), encoder.encode(" blurry")
    assert [torch.equal(c[:1], ugly) for c in rec.contexts] == [True, True, False, False, False]
    assert torch.equal(rec.contexts[-1][:1], blurry)


def test_a_scheduled_prompt_needs_the_step_count(encoder, model):
    cond = encoder.conditioning("a [cat|dog]")
    with pytest.raises(ValueError, match="number of steps"):
        cond.at_step(0)
    assert torch.equal(cond.at_step(1, total=4)[0][0][0], encoder.encode("a dog"))
    den = cond.denoiser(model.unet, encoder.conditioning("", negative=True), 5.0, 1)
    with pytest.raises(ValueError, match="begin_step"):
        den(torch.zeros(1, *SHAPE), torch.tensor(999))


def test_has_schedule():
    assert has_schedule("a [cat:dog:3]") and has_schedule("[a|b]") and has_schedule("x [[a:b:1]|c]")
    assert not has_schedule("a (cat:1.2) [dog] [a:b] plain")


# --------------------------------------------------------------------------- padding


def test_uncond_is_padded_to_the_cond_length_with_empty_chunks(model, encoder):
    rec = Recorder(model.unet)
    sample(rec, model, encoder.conditioning("cat " * 100), encoder.conditioning("ugly", negative=True), steps=1)
    (context,) = rec.contexts
    assert context.shape == (2, 128, 32)
    torch.testing.assert_close(context[1:], encoder.encode("cat " * 100))
    expected_uncond = torch.cat([encoder.encode("ugly")] + [encoder.empty] * 3, dim=1)
    assert torch.equal(context[:1], expected_uncond)
    rec.contexts.clear()  # and the other way round: a long negative prompt pads the prompt
    sample(rec, model, encoder.conditioning("a cat"), encoder.conditioning("dog " * 40, negative=True), steps=1)
    assert torch.equal(rec.contexts[0][1:], torch.cat([encoder.encode("a cat"), encoder.empty], dim=1))


def test_and_parts_of_different_lengths_repeat_their_last_vector(model, encoder):
    rec = Recorder(model.unet)
    sample(rec, model, encoder.conditioning("cat " * 40 + "AND dog"), encoder.conditioning("", negative=True), steps=1)
    (context,) = rec.contexts
    assert context.shape == (3, 64, 32)  # [uncond, part 1, part 2]
    dog = encoder.encode("dog")
    assert torch.equal(context[2:, :32], dog)
    assert torch.equal(context[2:, 32:], dog[:, -1:].expand(1, 32, 32))


# --------------------------------------------------------------------------- AND in the guidance


def test_and_weights_combine_as_composable_diffusion(encoder):
    unet = FakeUNet()
    cond = encoder.conditioning(["a red circle :1.5 AND a blue square :-0.5", "a green star"])
    uncond = encoder.conditioning("blurry", negative=True)
    den = cond.denoiser(unet, uncond, 3.0, batch_size=2)
    x, t = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0)), torch.tensor(500)
    out = den(x, t)

    def f(text, b):
        return unet(x[b: b + 1], t, encoder_hidden_states=encoder.encode(text)).sample.detach()

    u0, u1 = f("blurry", 0), f("blurry", 1)
    expected0 = u0 + 3.0 * (1.5 * (f("a red circle", 0) - u0) - 0.5 * (f("a blue square", 0) - u0))
    expected1 = u1 + 3.0 * (f("a green star", 1) - u1)
    torch.testing.assert_close(out, torch.cat([expected0, expected1]))


def test_one_part_equals_plain_cfg(encoder):
    unet = FakeUNet()
    x, t = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0)), torch.tensor(500)
    uncond = encoder.conditioning("blurry", negative=True)
    plain = CFGDenoiser(unet, encoder.encode("a cat"), encoder.encode("blurry"), 4.0, 2)(x, t)
    assert torch.equal(encoder.conditioning("a cat :1").denoiser(unet, uncond, 4.0, 2)(x, t), plain)
    weighted = encoder.conditioning("a cat :2").denoiser(unet, uncond, 4.0, 2)(x, t)
    u, c = unet(x, t, encoder_hidden_states=encoder.encode("blurry").expand(2, -1, -1)).sample, \
        unet(x, t, encoder_hidden_states=encoder.encode("a cat").expand(2, -1, -1)).sample
    torch.testing.assert_close(weighted, cfg_combine(u, c, 8.0).detach())


def test_composable_prompt_needs_an_uncond_and_counts_must_match(encoder, model):
    with pytest.raises(ValueError, match="negative prompt"):
        encoder.conditioning("a AND b").denoiser(model.unet, None, 7.0, 1)
    with pytest.raises(ValueError, match="3 prompts for 2 images"):
        encoder.conditioning(["a", "b", "c"]).denoiser(model.unet, None, 7.0, 2)
    with pytest.raises(ValueError, match="negative=True"):
        encoder.conditioning("a").denoiser(model.unet, encoder.conditioning("x AND y"), 7.0, 1)
    with pytest.raises(ValueError, match="uncond must be one too"):
        encoder.conditioning("a").denoiser(model.unet, encoder.encode("x"), 7.0, 1)
    assert encoder.conditioning("x AND y", negative=True).parts[0][0][0].prompt == "x AND y"  # literal


def test_batch_image_equals_single_run_with_and_and_schedules(model, encoder):
    """Float64 UNet: in float32 batched and single outputs differ by BLAS blocking (~1e-4 here)."""
    unet = copy.deepcopy(model.unet).double()
    prompts = ["a red circle AND a blue square :0.5", "a [green|yellow] star"]
    uncond = encoder.conditioning("", negative=True)
    batch = sample(unet, model, encoder.conditioning(prompts), uncond, steps=3, seeds=(5, 6))
    for i, prompt in enumerate(prompts):
        single = sample(unet, model, encoder.conditioning(prompt), uncond, steps=3, seeds=(5 + i,))
        torch.testing.assert_close(batch[i: i + 1], single, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- through the pipeline


def test_plain_prompt_through_the_new_path_equals_the_old_path_bit_for_bit(tiny_loaded, model, encoder):
    from t2i.pipelines.txt2img import Txt2ImgParams, latents_to_images, txt2img

    with torch.no_grad():
        cond, uncond = model.encode_prompts(["a red circle"]), model.encode_prompts(["blurry"])
    for sampler in ("Euler a", "DPM++ 2M"):
        old = sample(model.unet, model, cond, uncond, steps=4, sampler=sampler, seeds=(7, 8))
        new = sample(model.unet, model, encoder.conditioning("a red circle"),
                     encoder.conditioning("blurry", negative=True), steps=4, sampler=sampler, seeds=(7, 8))
        assert torch.equal(new, old), sampler
    params = Txt2ImgParams(prompt="a red circle", negative_prompt="blurry", steps=4, seed=7, batch_size=2,
                           sampler="Euler a", width=16, height=16)
    images = txt2img(tiny_loaded, params).images
    gens = make_generators([7, 8])
    noise = draw_noise(gens, (4, 8, 8))
    scheduler = make_scheduler("Euler a", "Automatic", model.scheduler_config())
    old = latents_to_images(model, sample_scheduler(CFGDenoiser(model.unet, cond, uncond, 7.0, 2), scheduler, noise,
                                                    steps=4, generators=gens))
    for a, b in zip(images, old):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_txt2img_applies_the_syntax(tiny_loaded):
    from t2i.pipelines.txt2img import Txt2ImgParams, txt2img

    base = dict(negative_prompt="[ugly:0.5]", steps=3, seed=3, sampler="Euler", width=16, height=16)
    plain = np.asarray(txt2img(tiny_loaded, Txt2ImgParams(prompt="a red circle", **base)).images[0])
    fancy = txt2img(tiny_loaded, Txt2ImgParams(prompt="a (red:1.4) [circle|square] AND a blue star :0.7", **base))
    assert fancy.images[0].size == (16, 16)
    assert not np.array_equal(np.asarray(fancy.images[0]), plain)
    with_cfg_one = txt2img(tiny_loaded, Txt2ImgParams(prompt="a AND b", cfg_scale=1.0, **base))  # builds an uncond
    assert len(with_cfg_one.images) == 1


def test_prompt_denoiser_is_a_cfg_denoiser(encoder, model):
    den = encoder.conditioning("a cat").denoiser(model.unet, None, 7.0, 1)
    assert isinstance(den, PromptDenoiser) and isinstance(den, CFGDenoiser)
    assert isinstance(encoder.conditioning("x"), PromptConditioning)
