"""The one schema and the one Session: every field found in every view derived from it (CLI flags,
API request model, infotext keys, X/Y/Z axes), strict validation, and the Session's caching,
batch-by-batch outputs, locking and errors."""
import dataclasses
import subprocess
import sys
import threading

import numpy as np
import pytest

from t2i.atomic import TMP_PREFIX
from t2i.errors import ParamError
from t2i.interfaces.cli import build_parser
from t2i.pipelines.generation_params import Img2ImgParams, InpaintParams, OutpaintParams, Txt2ImgParams
from t2i.pipelines.infotext import KEY_FIELDS, params_from_infotext
from t2i.pipelines.load_settings import LoadSettings
from t2i.pipelines.params import GROUPS, api_name, field_specs, flag_of
from t2i.pipelines.sample_params import SampleParams
from t2i.pipelines.schema import params_from_request, request_model, validate_strict
from t2i.pipelines.script_options import (Img2ImgAltOptions, LoopbackOptions, PromptMatrixOptions, SDUpscaleOptions,
                                          XYZOptions)
from t2i.pipelines.upscale import UpscaleParams
from t2i.pipelines.xyz_axes import AXIS_OPTIONS

# every params class -> a command whose parser must carry its flags
SCHEMA = {Txt2ImgParams: "generate", Img2ImgParams: "img2img", InpaintParams: "inpaint", OutpaintParams: "outpaint",
          UpscaleParams: "upscale", SampleParams: "sample", XYZOptions: "xyz", PromptMatrixOptions: "prompt-matrix",
          LoopbackOptions: "loopback", SDUpscaleOptions: "sd-upscale", Img2ImgAltOptions: "img2img-alt",
          LoadSettings: "generate"}
ALWAYS_ARGS = {"generate": ["x"], "img2img": ["in.png", "x"], "inpaint": ["in.png", "m.png", "x"],
               "outpaint": ["in.png", "x"], "upscale": ["in.png"], "sample": ["run"], "xyz": ["x"],
               "prompt-matrix": ["x"], "loopback": ["in.png", "x"],
               "sd-upscale": ["in.png", "x"], "img2img-alt": ["in.png", "x"]}
# the load settings that `t2i sample` / `t2i upscale` do not take (no VAE, LoRAs, memory flags there)
FAMILY_ONLY = {"first_stage"}


def _flags(command: str) -> set[str]:
    parser = build_parser(only=command)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {option for action in sub._actions for option in action.option_strings}


def _example(kind: type, f: dataclasses.Field):
    """A non-default value of the field's type, inside its bounds and choices."""
    meta = f.metadata
    if meta.get("choices"):
        return next(c for c in meta["choices"] if c != f.default)
    if kind is bool:
        return not f.default
    if kind is int:
        return int(meta.get("minimum") or 0) + 3
    if kind is float:
        return float(meta.get("minimum") or 0.0) + 0.25
    return "something new"


@pytest.mark.parametrize("cls", list(SCHEMA), ids=lambda c: c.__name__)
def test_every_field_is_in_every_view(cls):
    flags = _flags(SCHEMA[cls])
    api = request_model(cls).model_fields
    axes = {o.label: o for o in AXIS_OPTIONS}
    for f, kind in field_specs(cls):
        meta = f.metadata
        assert meta["help"] and meta["group"] in GROUPS, f.name
        if meta["cli"] and f.name not in FAMILY_ONLY:
            assert flag_of(f) in flags, f"{cls.__name__}.{f.name}: no {flag_of(f)} in `t2i {SCHEMA[cls]}`"
        if api_name(f) is not None:
            assert api_name(f) in api, f"{cls.__name__}.{f.name} missing from the API request model"
        if meta["axis"]:
            assert axes[meta["axis"]].field == f.name
        if meta["infotext"] and cls in (Txt2ImgParams, Img2ImgParams, InpaintParams, OutpaintParams):
            assert meta["infotext"] in KEY_FIELDS, f"{f.name}: infotext key {meta['infotext']!r} is not read"


@pytest.mark.parametrize("cls", [Txt2ImgParams, InpaintParams, OutpaintParams], ids=lambda c: c.__name__)
def test_infotext_keys_read_back_into_their_fields(cls):
    """Each infotext key declared in the schema, written as the writer does, reads back into its
    field(s) (a WxH pair into both halves, worded bools into the bool)."""
    for f, kind in field_specs(cls):
        key = f.metadata["infotext"]
        if not key or key in ("Prompt", "Negative prompt") or kind not in (int, float, bool, str):
            continue
        value = _example(kind, f)
        if f.metadata["infotext_part"] is not None:
            text = f"{value}x{value}"
        elif f.metadata["infotext_values"]:
            text = f.metadata["infotext_values"][int(value)]
        else:
            text = str(value)
        params = params_from_infotext(f"a prompt\n{key}: {text}, Model hash: 0123456789, Model: m, Version: t2i", cls)
        assert getattr(params, f.name) == value, f"{key}: {text!r} did not read back into {f.name}"


@pytest.mark.parametrize("change, message", [
    ({"steps": 2.5}, "steps: must be a valid integer"),
    ({"steps": True}, "steps: must be a valid integer"),
    ({"cfg_scale": float("nan")}, "cfg_scale: must be a finite number"),
    ({"cfg_scale": float("inf")}, "cfg_scale: must be a finite number"),
    ({"tiling": "no"}, "tiling: must be a valid boolean"),
    ({"sampler": 3}, "sampler: must be a valid string"),
    ({"steps": 0}, "steps must be >= 1"),
    ({"hr_scale": 9.0}, "hr_scale must be <= 8"),  # hr_upscaler names depend on folders: checked at run time
])
def test_strict_validation(change, message):
    with pytest.raises(ParamError, match=message):
        validate_strict(Txt2ImgParams(prompt="x", **change))


def test_load_settings_are_validated():
    with pytest.raises(ParamError, match="threads must be >= 1"):
        validate_strict(LoadSettings(threads=-1))
    with pytest.raises(ParamError, match="precision must be one of"):
        validate_strict(LoadSettings(precision="half"))
    assert LoadSettings(model="default").model_path is None


def test_api_request_model_is_strict_json_and_ignores_unknown_keys():
    model = request_model(Txt2ImgParams)
    request = model.model_validate({"prompt": "a", "sampler_name": "Euler a", "styles": ["s"], "unknown": 1})
    params = params_from_request(Txt2ImgParams, request)
    assert params.sampler == "Euler a" and params.styles == ("s",)
    for bad in ({"steps": "20"}, {"steps": 2.5}, {"tiling": "no"}, {"steps": 5000}, {"cfg_scale": "nan"}):
        with pytest.raises(Exception) as err:
            model.model_validate(bad)
        assert list(bad)[0] in str(err.value)
    assert model.model_json_schema()["properties"]["steps"]["maximum"] == 1000


def test_help_and_argument_errors_load_no_torch():
    code = ("import sys\nfrom t2i.interfaces.cli import main\n"
            "for argv in (['--help'], ['generate', '--steps', 'x'], ['nope']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().endswith("ok"), out.stderr


# ----------------------------------------------------------------------------- the Session


@pytest.fixture()
def session(tiny_model_dir):
    from t2i.pipelines.session import Session

    lines = []
    s = Session(LoadSettings(model=str(tiny_model_dir), precision="full"), notes=lines.append)
    s.lines = lines
    return s


def test_session_outputs_come_batch_by_batch_and_equal_one_whole_run(session):
    from t2i.pipelines.txt2img import txt2img

    seen = []
    params = Txt2ImgParams(prompt="a red circle", steps=3, seed=11, batch_size=2, n_iter=2)
    result = session.run(params, on_output=lambda out: seen.append(out.seed))
    assert seen == [11, 12, 13, 14] == result.seeds
    assert len(session.loaded_models()) == 1 and session.lines[0].startswith("model ")
    whole = txt2img(session.model().loaded, params)
    for a, b in zip(result.images, whole.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert result.infotexts == whole.infotexts
    session.run(params)
    assert len(session.loaded_models()) == 1  # cached, not loaded again


def test_session_interrupt_keeps_finished_batches(session):
    from t2i.pipelines.progress import GenerationControl

    control = GenerationControl()

    def stop_after_first(out):
        control.interrupt()

    result = session.run(Txt2ImgParams(prompt="x", steps=2, seed=1, n_iter=3), control=control,
                         on_output=stop_after_first)
    assert result.seeds == [1]


def test_session_is_thread_safe(session):
    params = [Txt2ImgParams(prompt=p, steps=2, seed=5) for p in ("a red circle", "a blue square")]
    alone = [np.asarray(session.run(p).images[0]) for p in params]
    together = [None, None]

    def work(i):
        together[i] = np.asarray(session.run(params[i]).images[0])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))


def test_session_cache_is_bounded(tiny_model_dir):
    from t2i.pipelines.session import Session

    s = Session(LoadSettings(model=str(tiny_model_dir), precision="full"), max_models=1)
    first = s.model()
    s.model(LoadSettings(model=str(tiny_model_dir), precision="auto"))  # another key: evicts the first
    assert first not in s.loaded_models() and len(s.loaded_models()) == 1


def test_session_rejects_unknown_params_and_bad_devices(session):
    with pytest.raises(ParamError, match="no pipeline runs"):
        session.run(object())
    from t2i.pipelines.session import Session

    with pytest.raises(ParamError, match="not a torch device"):
        Session(LoadSettings(device="warp-drive")).model()


# ----------------------------------------------------------------------------- the CLI's behaviour


def _t2i(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "t2i.interfaces.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**__import__("os").environ,
                                                                     "OMP_NUM_THREADS": "1"}, **kwargs)


def test_ctrl_c_keeps_the_images_already_written(tmp_path):
    import signal
    import time

    out = tmp_path / "out"

    def default_sigint():  # as at a terminal: a shell's background job would pass SIGINT on ignored
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = _t2i("generate", "a red circle", "--seed", "3", "--steps", "8", "--n-iter", "60", "--outdir", out,
                preexec_fn=default_sigint)
    def finished():  # an image renamed into place: a temporary file (TMP_PREFIX) is still being written
        return out.is_dir() and any(not p.name.startswith(TMP_PREFIX) for p in out.glob("*.png"))

    deadline = time.time() + 240
    while time.time() < deadline and not finished():
        time.sleep(0.2)
    assert finished(), proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    names = sorted(p.name for p in out.iterdir())
    assert names and all(n.endswith(".png") and not n.startswith(".") for n in names), names  # no temp leftovers
    assert names[0] == "00000-3-a_red_circle.png"


@pytest.mark.parametrize("args, message", [
    (["--cfg-scale", "nan"], "cfg_scale: must be a finite number"),
    (["--threads", "-1"], "threads must be >= 1"),
    (["--device", "warp"], "not a torch device"),
    (["--vae-decoder", "tiny"], "'full' or 'tiny FILE'"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, message):
    proc = _t2i("generate", "x", "--outdir", tmp_path / "o", *args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_cli_outdir_that_is_a_file(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    proc = _t2i("generate", "x", "--steps", "1", "--outdir", target)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "is a file" in err and len(err.strip().splitlines()) == 1, err
    assert target.read_text() == "keep me"


def test_cli_model_default_and_jpeg_infotext(tmp_path):
    from t2i.metadata import read_infotext

    proc = _t2i("generate", "a red circle", "--model", "default", "--steps", "2", "--seed", "4", "--format", "jpg",
                "--outdir", tmp_path)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    path = tmp_path / "00000-4-a_red_circle.jpg"
    assert out.split() == [str(path)]
    assert "Seed: 4" in read_infotext(path) and err.startswith("model t2i-shapes-ldm")
