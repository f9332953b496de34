"""The web UI's pieces that need no browser: controls built from the schema, the token counter,
the settings file, the file-route guard, the training log reader, infotext keys to fields."""
import json
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")

from t2i.errors import ParamError
from t2i.interfaces.webui.builder import Form, coerce, shown
from t2i.pipelines.generation_params import InpaintParams, Txt2ImgParams
from t2i.pipelines.params import field_specs

REPO = Path(__file__).resolve().parents[1]


def test_controls_take_label_default_range_step_and_help_from_the_schema():
    hints = {}
    with gr.Blocks():
        form = Form("t", hints, {"steps": {"maximum": 150}})
        steps = form.control(Txt2ImgParams, "steps")
        seed = form.control(Txt2ImgParams, "seed")
        cfg = form.control(Txt2ImgParams, "cfg_scale")
        sampler = form.control(Txt2ImgParams, "sampler", choices=["Euler", "DPM++ 2M"])
        mode = form.control(InpaintParams, "inpainting_mask_invert")
        hires = form.controls(Txt2ImgParams, group="hires")
    meta = {f.name: f.metadata for f, _ in field_specs(Txt2ImgParams)}
    assert isinstance(steps, gr.Slider) and steps.label == "Sampling steps"
    assert (steps.minimum, steps.maximum, steps.step, steps.value) == (1, 150, 1, 20)  # the server's 150, not 1000
    assert isinstance(seed, gr.Number) and seed.value == -1  # 2**32 positions: a number box, not a slider
    assert (cfg.minimum, cfg.maximum, cfg.step, cfg.value) == (0.0, 100.0, 0.5, 7.0)
    assert isinstance(sampler, gr.Dropdown) and sampler.value == "DPM++ 2M" and sampler.label == "Sampling method"
    assert isinstance(mode, gr.Radio) and [c[0] for c in mode.choices] == ["Inpaint masked", "Inpaint not masked"]
    assert list(hires) == ["enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x",
                           "hr_resize_y", "denoising_strength"]
    assert hints["t_steps"] == meta["steps"]["help"] and hints["t_cfg_scale"] == meta["cfg_scale"]["help"]


def test_control_values_are_coerced_to_the_field_types():
    values = coerce(InpaintParams, {"steps": 12.0, "cfg_scale": 5, "styles": ["a", "b"], "seed": None,
                                    "inpainting_mask_invert": "Inpaint not masked"})
    assert values == {"steps": 12, "cfg_scale": 5.0, "styles": ("a", "b"), "seed": -1, "inpainting_mask_invert": True}
    assert isinstance(values["steps"], int) and isinstance(values["cfg_scale"], float)
    assert shown(InpaintParams, "inpainting_mask_invert", False) == "Inpaint masked"
    with pytest.raises(ParamError, match="inpainting_mask_invert"):
        coerce(InpaintParams, {"inpainting_mask_invert": "sometimes"})


def test_token_counter_counts_as_the_web_ui_does():
    from t2i.interfaces.webui.tokens import count_tokens

    tokens, capacity = count_tokens("a red circle", 75)
    assert (tokens, capacity) == (3, 75)
    assert count_tokens("a red circle <lora:ink:0.8>", 75) == (3, 75)  # extra-network tags are not tokens
    assert count_tokens("(a red:1.3) circle", 75) == (3, 75)  # attention syntax is not tokens either
    assert count_tokens("a red circle AND a blue square on grass", 75) == (5, 75)  # the longest AND part
    assert count_tokens("a BREAK b", 75) == (2, 150)  # BREAK starts a chunk
    assert count_tokens("red " * 31, 30) == (31, 60)  # the bundled model's 30-token chunks


def test_settings_are_validated_saved_and_read_back(tmp_path):
    from t2i.interfaces.webui.settings import SettingsStore, UISettings

    path = tmp_path / "webui-settings.json"
    store = SettingsStore(path, UISettings(default_width=64, default_height=64))
    assert store.get().default_steps == 20 and not path.exists()
    store.update({"default_steps": 7, "live_preview_every": 2})
    assert json.loads(path.read_text())["default_steps"] == 7
    assert SettingsStore(path, UISettings()).get().live_preview_every == 2  # a restart reads them back
    with pytest.raises(ParamError, match="default_steps"):
        store.update({"default_steps": 0})
    assert json.loads(path.read_text())["default_steps"] == 7  # a refused value is not written
    path.write_text("{not json")
    broken = SettingsStore(path, UISettings())
    assert broken.get() == UISettings() and "was not used" in broken.problem


@pytest.mark.parametrize("path,refused", [
    ("/gradio_api/file=/tmp/gradio/abc/image.png", False),
    ("/gradio_api/file=http://example.com/a.png", True),
    ("/gradio_api/file=HTTPS://example.com/a.png", True),
    ("/gradio_api/file=%68ttp://example.com/a.png", True),
    ("/gradio_api/file=%2568ttp://example.com/a.png", True),
    ("/gradio_api/file=//http://x", True),
    ("/gradio_api/proxy=https://x.hf.space/file=a", True),
    ("/sdapi/v1/txt2img", False),
])
def test_file_route_guard_refuses_urls(path, refused):
    from t2i.interfaces.webui.guard import refused as is_refused

    assert is_refused(path) is refused


def test_training_log_and_config_overrides(tmp_path):
    from t2i.interfaces.webui.training import parse_losses, prepare_config

    log = ("ldm:  10%|█| 20/200 [00:01<00:09]\r[vae] step 20/200 loss 0.12500 lr 1.00e-03 31.0 img/s\n"
           "[gan] step 6/40 d_loss 1.7605 g_loss 0.7048\nnoise [unet] step 7/9 loss nan lr 1e-4\n")
    losses = parse_losses(log)
    assert losses[:3] == [("vae", 20, 0.125), ("gan d_loss", 6, 1.7605), ("gan g_loss", 6, 0.7048)]
    assert losses[3][:2] == ("unet", 7) and losses[3][2] != losses[3][2]  # nan: a diverged run shows it
    assert len(losses) == 4
    config = prepare_config(REPO / "configs" / "shapes-ldm.yaml", tmp_path / "run",
                            {"steps": 30, "log_every": 5, "batch_size": 0}, data_folder=str(tmp_path))
    import yaml

    data = yaml.safe_load(config.read_text())
    for stage in ("vae", "unet"):
        assert data[stage]["steps"] == 30 and data[stage]["log_every"] == 5
    assert data["unet"]["batch_size"] == 64  # 0 keeps the config's
    assert data["data"]["name"] == "folder" and data["data"]["folder"] == str(tmp_path.resolve())


def test_infotext_keys_name_the_fields_they_set():
    from t2i.interfaces.webui.paste import fields_in

    text = "a cat\nSteps: 9, Size: 64x96, Seed: 3, Hires upscaler: Latent, Mask blur: 2"
    assert fields_in(text) >= {"prompt", "negative_prompt", "steps", "width", "height", "seed", "hr_upscaler",
                               "enable_hr", "mask_blur"}
    assert "cfg_scale" not in fields_in(text)


def test_finetune_form_is_the_cli_s_options_and_validates_as_the_cli_does():
    from t2i.interfaces.cli.finetune import FLAGS
    from t2i.interfaces.webui.finetune_form import config_data, finetune_fields
    from t2i.training.finetune.config import config_from

    fields = finetune_fields()
    by_key = {f.key: f for f in fields}
    assert set(by_key) == {key for key, _, _ in FLAGS.values()} - {"outdir", "device"}  # none lost, none made up
    rank, schedule, steps = by_key["lora.rank"], by_key["lr_schedule"], by_key["steps"]
    assert (rank.kind, rank.default, rank.minimum, rank.maximum) == (int, 8, 1, 1024)
    assert schedule.choices == ("constant", "cosine", "linear") and steps.default is None
    assert rank.help == FLAGS["--rank"][2] and rank.label == "Rank"
    form = {"data": "pics", "steps": "3", "lr": "", "lora.rank": 2.0, "ti.vectors": 4, "buckets": True,
            "sample_prompts": "a red circle\n\na blue square", "hypernetwork.layer_structure": "1, 2, 1"}
    data = config_data("lora", form, fields)
    assert data == {"method": "lora", "data": "pics", "steps": 3, "lora": {"rank": 2},
                    "sample_prompts": ["a red circle", "a blue square"]}  # other methods' sections dropped
    cfg = config_from(data)
    assert cfg.steps == 3 and cfg.lr is None and cfg.lora.rank == 2
    hyper = config_data("hypernetwork", {"hypernetwork.layer_structure": "1, 4, 1"}, fields)
    assert config_from(hyper).hypernetwork.layer_structure == (1.0, 4.0, 1.0)
    with pytest.raises(ValueError, match="Steps: 'many' is not a whole number"):
        config_data("lora", {"steps": "many"}, fields)
    with pytest.raises(ValueError, match="rank"):
        config_from(config_data("lora", {"lora.rank": 0}, fields))


def test_output_folders_stay_inside_the_output_folder_and_decide_who_saves(tmp_path):
    from t2i.interfaces.webui import output_dirs
    from t2i.interfaces.webui.bridge import Finished
    from t2i.interfaces.webui.settings import SettingsStore, UISettings

    root = tmp_path / "out"
    (root / "txt2img").mkdir(parents=True)
    (root / "escape").symlink_to(tmp_path)
    store = SettingsStore(tmp_path / "s.json", UISettings(), output_root=root)
    default = store.get()
    assert output_dirs.job_flags(default, root, "txt2img") == {
        "save_images": True, "do_not_save_samples": False, "do_not_save_grid": False}  # the API's own folders
    for bad, why in (("/etc", "outside"), ("../x", "outside"), ("escape/x", "outside"), (".", "itself"), (" ", "give")):
        with pytest.raises(ParamError, match=f"Output directory for txt2img grids: .*{why}"):
            store.update({"outdir_txt2img_grids": bad})
    assert store.get() == default and not (tmp_path / "s.json").exists()  # nothing saved
    new = store.update({"outdir_txt2img_samples": "mine/pics", "save_grids": False})
    assert json.loads((tmp_path / "s.json").read_text())["outdir_txt2img_samples"] == "mine/pics"
    assert output_dirs.job_flags(new, root, "txt2img") == {
        "save_images": False, "do_not_save_samples": True, "do_not_save_grid": True}
    folders = output_dirs.ui_saves(new, root, "txt2img")
    assert folders == {"images": (root / "mine" / "pics").resolve(), "grids": None}
    assert output_dirs.ui_saves(new, root, "img2img") == {"images": None, "grids": None}
    import base64
    answer = {"images": [base64.b64encode(b"grid").decode(), base64.b64encode(b"png1").decode()],
              "info": json.dumps({"index_of_first_image": 1, "all_seeds": [42], "all_prompts": ["a red circle"]})}
    written = output_dirs.save_answer(folders, Finished("j", 200, answer))
    assert [p.name for p in written] == ["00000-42-a_red_circle.png"] and written[0].read_bytes() == b"png1"
    # the Extras tab: the API saves into OUTDIR/extras; another folder makes the UI save, under the files' names
    assert output_dirs.ui_saves(new, root, "extras") == {"images": None, "grids": None}
    assert output_dirs.job_flags(new, root, "extras") == {"save_images": True}
    ups = store.update({"outdir_extras_samples": "ups"})
    assert output_dirs.job_flags(ups, root, "extras") == {"save_images": False}
    extras = output_dirs.ui_saves(ups, root, "extras")
    assert extras == {"images": (root / "ups").resolve(), "grids": None}
    answer = {"images": [base64.b64encode(b"up1").decode(), base64.b64encode(b"up2").decode()]}
    written = output_dirs.save_answer(extras, Finished("k", 200, answer), ["a.png", "a.png"])
    assert [p.name for p in written] == ["a.png", "a-1.png"] and written[1].read_bytes() == b"up2"
    with pytest.raises(ParamError, match="Output directory for images from extras tab: .*outside"):
        store.update({"outdir_extras_samples": "../x"})


def test_uploads_over_the_limits_are_refused_from_their_header_before_gradio_decodes_them(tmp_path, monkeypatch):
    from PIL import Image
    from webui_helpers import bomb_png

    from t2i.interfaces.api.config import Limits
    from t2i.interfaces.api.errors import ApiError
    from t2i.interfaces.webui.context import open_upload
    from t2i.interfaces.webui.uploads import (
        CheckedImage,
        CheckedImageEditor,
        Refused,
        checked,
    )

    limits = Limits()
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    assert bomb.stat().st_size < 100_000  # small on disk, 100 M pixels in its header
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self, *a: decoded.append(self.size))  # would decode: recorded
    with gr.Blocks():
        editor = checked(CheckedImageEditor, limits, type="filepath", image_mode="RGBA", elem_id="e")
        image = checked(CheckedImage, limits, type="filepath", elem_id="i")
    assert editor.get_block_name() == "imageeditor" and image.get_block_name() == "image"  # Gradio's own widgets
    assert editor.get_config()["elem_id"] == "e" and image.get_config()["image_mode"] is not None  # props kept
    file = gr.FileData(path=str(bomb), orig_name="bomb.png")
    refused = editor.convert_and_format_image(file)
    assert isinstance(refused, Refused) and "10000x10000 pixels is over the limit" in refused
    assert editor.convert_and_format_image(bomb.read_bytes()).startswith("image of 10000x10000")  # the canvas' bytes
    assert isinstance(image.preprocess(gr.FileData(path=str(bomb), orig_name="bomb.png")), Refused)
    assert not decoded
    with pytest.raises(ApiError, match="mask layer 0: image of 10000x10000 pixels is over the limit"):
        open_upload(refused, "mask layer 0", limits)
    (tmp_path / "text.png").write_bytes(b"not an image at all")
    assert "not a readable image" in image.preprocess(gr.FileData(path=str(tmp_path / "text.png")))
    monkeypatch.undo()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "fine.png")
    assert not isinstance(image.preprocess(gr.FileData(path=str(tmp_path / "fine.png"), orig_name="fine.png")),
                          Refused)


def test_a_number_field_without_a_default_is_an_empty_box_meaning_not_given():
    from t2i.pipelines.script_options import LoopbackOptions

    with gr.Blocks():
        box = Form("l", {}).control(LoopbackOptions, "final_denoising_strength")
    assert isinstance(box, gr.Textbox) and box.value == ""  # a slider would always send a number
    assert coerce(LoopbackOptions, {"final_denoising_strength": " "}) == {"final_denoising_strength": None}
    assert coerce(LoopbackOptions, {"final_denoising_strength": "0.2"}) == {"final_denoising_strength": 0.2}
    with pytest.raises(ParamError, match="final_denoising_strength must be a number or empty"):
        coerce(LoopbackOptions, {"final_denoising_strength": "high"})


def test_a_finetune_run_streams_its_loss_and_stops_on_request(tmp_path, tiny_model_dir):
    import time

    import yaml

    from t2i.data.shapes import ShapesDataset
    from t2i.interfaces.webui.training import Trainer

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    dataset = ShapesDataset(2, seed=1, resolution=32)
    for i in range(2):
        dataset[i]["image"].save(pictures / f"p{i}.png")
        (pictures / f"p{i}.txt").write_text(dataset[i]["caption"])
    trainer = Trainer(tmp_path / "train", threads=1)
    with pytest.raises(ParamError, match="no fine-tuning run 'nothing' to resume"):
        trainer.start_finetune("nothing", {}, resume=True)
    config = {"method": "lora", "model": str(tiny_model_dir), "data": str(pictures), "steps": 100_000,
              "batch_size": 1, "log_every": 1, "sample_every": 0, "checkpoint_every": 100_000}
    run = trainer.start_finetune("long", config)
    assert yaml.safe_load((run.folder / "finetune.yaml").read_text())["outdir"] == str(run.folder)
    with pytest.raises(ParamError, match="'long' is running; stop it first"):
        trainer.start_finetune("other", config)
    deadline = time.monotonic() + 240
    while not trainer.status()[1] and time.monotonic() < deadline and trainer.running():
        time.sleep(0.5)
    _, losses, _, tail = trainer.status()
    assert losses and losses[0][:2] == ("finetune", 1), tail  # the loss, live, from the run's log
    assert trainer.stop() and not trainer.running()
    assert "stopped" in trainer.status()[0]
