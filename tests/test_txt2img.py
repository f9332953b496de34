import numpy as np
import pytest

from t2i.diffusion.samplers import SAMPLER_NAMES
from t2i.metadata import parse_infotext
from t2i.pipelines.params import ParamError
from t2i.pipelines.txt2img import Txt2ImgParams, txt2img


def run(loaded, **kw):
    kw.setdefault("steps", 3)
    return txt2img(loaded, Txt2ImgParams(**kw))


def arr(image):
    return np.asarray(image).astype(np.int16)


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE", "DDIM"])
def test_image_i_of_a_batch_equals_single_run_with_seed_plus_i(tiny_loaded, sampler):
    batch = run(tiny_loaded, prompt="a red circle", seed=10, batch_size=3, sampler=sampler, eta=1.0)
    assert batch.seeds == [10, 11, 12]
    for i in range(3):
        single = run(tiny_loaded, prompt="a red circle", seed=10 + i, sampler=sampler, eta=1.0)
        assert np.abs(arr(batch.images[i]) - arr(single.images[0])).max() <= 1


def test_n_iter_continues_the_seeds(tiny_loaded):
    result = run(tiny_loaded, prompt="x", seed=5, batch_size=2, n_iter=2)
    assert result.seeds == [5, 6, 7, 8] and len(result.images) == 4


def test_seed_decides_the_image(tiny_loaded):
    a, b, c = (run(tiny_loaded, prompt="a", seed=s).images[0] for s in (1, 1, 2))
    assert np.array_equal(arr(a), arr(b))
    assert not np.array_equal(arr(a), arr(c))


def test_random_seed_is_reported(tiny_loaded):
    result = run(tiny_loaded, prompt="a", seed=-1)
    assert 0 <= result.seeds[0] < 2**32
    assert parse_infotext(result.infotexts[0])["Seed"] == str(result.seeds[0])


def test_infotext_holds_the_parameters(tiny_loaded):
    result = run(tiny_loaded, prompt="a blue square", negative_prompt="red", seed=3, cfg_scale=4.5,
                 sampler="DPM++ 2M Karras")
    info = parse_infotext(result.infotexts[0])
    assert info["Prompt"] == "a blue square" and info["Negative prompt"] == "red"
    assert info["Steps"] == "3" and info["Sampler"] == "DPM++ 2M" and info["Schedule type"] == "Karras"
    assert info["CFG scale"] == "4.5" and info["Seed"] == "3" and info["Size"] == "32x32"
    assert info["Model hash"] == tiny_loaded.hash and info["Version"].startswith("t2i ")


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_name_generates(tiny_loaded, sampler):
    result = run(tiny_loaded, prompt="a", seed=1, sampler=sampler, steps=4)
    assert result.images[0].size == (32, 32)


def test_other_sizes(tiny_loaded):
    assert run(tiny_loaded, prompt="a", seed=1, width=48, height=16).images[0].size == (48, 16)


@pytest.mark.parametrize("kw, match", [
    ({"sampler": "Euler b"}, "DPM\\+\\+ 2M"),
    ({"width": 31}, "multiple of 2"),
    ({"steps": 0}, "steps must be >= 1"),
    ({"cfg_scale": -1.0}, "cfg_scale"),
    ({"scheduler": "Fancy"}, "Karras"),
])
def test_bad_parameters_give_clear_errors(tiny_loaded, kw, match):
    with pytest.raises(ParamError, match=match):
        run(tiny_loaded, prompt="a", **kw)


def test_empty_prompt_is_allowed(tiny_loaded):
    assert len(run(tiny_loaded, prompt="", seed=1).images) == 1


def test_interrupt_stops_early(tiny_loaded):
    calls = []

    def callback(i, total, latents):
        calls.append(i)
        return "interrupt" if i == 1 else None

    txt2img(tiny_loaded, Txt2ImgParams(prompt="a", steps=10, seed=1), callback=callback)
    assert calls == [0, 1]
