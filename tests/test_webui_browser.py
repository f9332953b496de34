"""The web UI in a real browser: `t2i serve` started on 127.0.0.1 (with credentials, as a shared
server runs), its page driven in headless Chromium as a user drives it. Screenshots of every tab,
desktop and phone width, go to $T2I_WEBUI_SHOTS (default /tmp/webui-shots)."""
import io
import shutil
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, PngImagePlugin
from safetensors.torch import load_file, save_file
from webui_helpers import (
    fetch_image,
    gallery_urls,
    generate,
    launch,
    need_browser,
    open_page,
    open_tab,
    set_number,
    shot,
    start_server,
    wait_for,
    wait_idle,
)

AUTH = ("alice", "secret-pw")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_browser()
    work = tmp_path_factory.mktemp("webui")
    (work / "configs").mkdir()
    shutil.copy(REPO / "configs" / "tiny-gan.yaml", work / "configs")
    (work / "loras").mkdir()
    (work / "loras" / "inkwash.safetensors").write_bytes(b"")  # a card only: never applied here
    (work / "styles.csv").write_text("name,prompt,negative_prompt\nsharp,\"{prompt}, sharp\",blurry\n")
    (work / "models").mkdir()
    for name, value in (("alpha", 1.0), ("beta", 3.0)):  # two "checkpoints" of one architecture, to merge
        save_file({"w": torch.full((4, 4), value), "b": torch.full((4,), value)}, work / "models" / f"{name}.safetensors")
    srv = start_server(work, "--max-upload-mb", "1", "--ckpt-dir", str(work / "models"), auth=AUTH)
    if "t2iHints" not in httpx.get(srv.url + "/", auth=AUTH, timeout=30).text:  # the UI's page script
        srv.stop()
        pytest.fail("`t2i serve` does not serve the web UI at /: interfaces/api/server.py must call "
                    "t2i.interfaces.webui.mount_webui(app, config) after create_app")
    yield srv
    assert srv.stop() in (0, -signal.SIGTERM)
    assert "Traceback" not in srv.log_text()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    page = open_page(browser, server.url, credentials={"username": AUTH[0], "password": AUTH[1]})
    yield page
    page.context.close()


def http(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, auth=AUTH, timeout=120)


def png_with_infotext(text: str, size=(64, 64), color=(30, 90, 200)) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- txt2img


def test_txt2img_in_the_page_gives_the_api_image_with_its_infotext(page, server):
    from t2i.pipelines.generation_params import Txt2ImgParams
    from t2i.pipelines.params import field_specs

    prompt = page.locator("#txt2img_prompt textarea")
    prompt.fill("a small red circle in the top left on a black background")
    # the bundled model reads 32 tokens: chunks of 30, as the web UI shows 12/75 for SD
    wait_for(lambda: page.inner_text("#txt2img_token_counter").strip() == "12/30", what="the token counter")
    help_text = {f.name: f.metadata["help"] for f, _ in field_specs(Txt2ImgParams)}
    wait_for(lambda: page.get_attribute("#txt2img_steps", "title") == help_text["steps"], what="the hover hint")
    assert page.get_attribute("#txt2img_cfg_scale", "title") == help_text["cfg_scale"]
    assert page.locator("#txt2img_steps input[type=number]").first.input_value() == "20"  # the schema's default
    set_number(page, "txt2img_steps", 6)
    page.locator("#txt2img_seed input").fill("7")
    generate(page, "txt2img", press="Control+Enter")  # the web UI's shortcut
    ui_image = fetch_image(page, gallery_urls(page, "txt2img")[0])
    text = ui_image.info["parameters"]
    assert ui_image.size == (64, 64)
    assert text.startswith("a small red circle in the top left on a black background\n")
    assert "Steps: 6," in text and "Seed: 7," in text and "Size: 64x64" in text
    assert "Seed: 7," in page.inner_text("#txt2img_info")
    with http(server) as client:
        answer = client.post("/sdapi/v1/txt2img", json={
            "prompt": "a small red circle in the top left on a black background", "seed": 7, "steps": 6,
            "width": 64, "height": 64, "sampler_name": "DPM++ 2M", "cfg_scale": 7}).json()
    api_image = Image.open(io.BytesIO(__import__("base64").b64decode(answer["images"][0])))
    assert np.array_equal(np.asarray(ui_image.convert("RGB")), np.asarray(api_image.convert("RGB")))
    assert api_image.info["parameters"] == text
    assert np.asarray(ui_image).std() > 5  # a picture, not a blank


def test_interrupt_stops_only_the_users_own_job(browser, server):
    credentials = {"username": AUTH[0], "password": AUTH[1]}
    first, second = (open_page(browser, server.url, credentials=credentials) for _ in range(2))
    try:
        first.locator("#txt2img_prompt textarea").fill("a red circle")
        set_number(first, "txt2img_steps", 100)
        set_number(first, "txt2img_n_iter", 8)
        second.locator("#txt2img_prompt textarea").fill("a blue square")
        set_number(second, "txt2img_steps", 5)
        first.click("#txt2img_generate")
        # running, not the bar: the bar is 0 px wide until the first step is done, and Playwright
        # does not count an element without width as visible
        first.locator("#txt2img_progress [data-state=running]").wait_for()
        second.click("#txt2img_generate")  # queued behind the first user's job
        second.locator("#txt2img_progress [data-state=queued]").wait_for()
        assert "Waiting in the queue" in second.inner_text("#txt2img_progress")
        second.click("#txt2img_interrupt")
        wait_idle(second, "txt2img")
        assert "interrupted before it started" in second.inner_text("#txt2img_info")

        def step():
            text = first.locator("#txt2img_progress .t2i-progress").get_attribute("data-fraction") or "0"
            return float(text)

        before = step()
        wait_for(lambda: step() > before, what="the first user's job to go on")  # untouched by the second
        first.locator("#txt2img_preview img").wait_for()  # a live preview every few steps
        first.click("#txt2img_interrupt")
        wait_idle(first, "txt2img", timeout=60)
        assert 1 <= len(gallery_urls(first, "txt2img")) < 8  # stopped early, what was done came back
    finally:
        first.context.close()
        second.context.close()


def test_generate_forever_repeats_until_cancelled(page):
    page.locator("#txt2img_prompt textarea").fill("a green triangle")
    set_number(page, "txt2img_steps", 2)
    page.click("#txt2img_generate", button="right")
    page.click("#txt2img_menu_forever_on")
    seen = set()

    def new_images():
        seen.update(gallery_urls(page, "txt2img"))
        return len(seen) >= 3

    wait_for(new_images, timeout=120, what="three generations")
    page.click("#txt2img_interrupt", button="right")  # the menu is on Interrupt while a job runs
    page.click("#txt2img_menu_forever_off")
    wait_idle(page, "txt2img", timeout=60)  # the generation under way finishes, no new one starts
    final = gallery_urls(page, "txt2img")
    time.sleep(3)
    assert page.locator("#txt2img_generate").is_visible() and gallery_urls(page, "txt2img") == final


def test_prompt_tools_attention_cards_styles(page):
    prompt = page.locator("#txt2img_prompt textarea")
    prompt.fill("a red circle")
    prompt.evaluate("el => el.setSelectionRange(2, 5)")  # "red"
    prompt.press("Control+ArrowUp")
    assert prompt.input_value() == "a (red:1.1) circle"
    prompt.press("Control+ArrowUp")
    assert prompt.input_value() == "a (red:1.2) circle"
    page.click("#txt2img_networks_toggle")
    page.locator("#txt2img_networks_cards .t2i-card[data-kind=lora]").first.click()
    wait_for(lambda: prompt.input_value() == "a (red:1.2) circle <lora:inkwash:1>", what="the LoRA tag")
    page.locator("#txt2img_styles input").first.click()
    page.get_by_role("option", name="sharp").click()
    page.click("#txt2img_apply_styles")
    wait_for(lambda: prompt.input_value().endswith(", sharp"), what="the style in the prompt")
    assert page.locator("#txt2img_negative_prompt textarea").input_value() == "blurry"


# ----------------------------------------------------------------------------- img2img, PNG Info


def test_inpaint_repaints_the_painted_area_only(page, tmp_path):
    source = Image.new("RGB", (64, 64), (30, 160, 40))
    ImageDraw.Draw(source).ellipse((6, 6, 26, 26), fill=(220, 30, 30))
    source.save(tmp_path / "in.png")
    open_tab(page, "img2img")
    open_tab(page, "Inpaint")
    canvas = page.locator("#img2img_inpaint canvas").first
    canvas.wait_for()
    time.sleep(1)  # the editor's canvas app starts a moment after its element
    page.locator("#img2img_inpaint input[type=file]").first.set_input_files(str(tmp_path / "in.png"))
    page.locator("#img2img_inpaint_controls").first.wait_for()  # the inpaint options show in the inpaint modes
    time.sleep(1.5)
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx + box["height"] * 0.15, cy - box["height"] * 0.25)  # a stroke over the right half
    page.mouse.down()
    for i in range(1, 16):
        page.mouse.move(cx + box["height"] * 0.15 + i * 2, cy - box["height"] * 0.25 + i * 5, steps=2)
    page.mouse.up()
    page.locator("#img2img_prompt textarea").fill("a blue square")
    page.locator("#img2img_seed input").fill("3")
    set_number(page, "img2img_steps", 8)
    set_number(page, "img2img_mask_blur", 0)
    time.sleep(1.5)  # the editor sends its strokes to the server a moment after they are made
    generate(page, "img2img")
    assert "Error" not in page.inner_text("#img2img_info")
    result = fetch_image(page, gallery_urls(page, "img2img")[0])
    assert "Mask blur: 0" in result.info["parameters"] and "Denoising strength" in result.info["parameters"]
    diff = np.abs(np.asarray(result.convert("RGB"), dtype=int) - np.asarray(source, dtype=int)).max(axis=2)
    assert (diff > 40).mean() > 0.03  # the painted area was repainted
    assert (diff[:, :20] <= 2).mean() > 0.95  # the left side, never painted, is the source's
    shot(page, "img2img-inpaint-desktop")


def choose(page, elem_id: str, option: str) -> None:
    """An option of a dropdown, picked as a user picks it."""
    page.locator(f"#{elem_id} input").first.click()
    page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click()


def results(page, tab: str) -> list:
    """The gallery's images, fetched as a download gets them (infotext inside)."""
    assert "Error" not in page.inner_text(f"#{tab}_info")
    return [fetch_image(page, url) for url in gallery_urls(page, tab)]


def test_inpaint_upload_repaints_where_the_mask_file_is_white(page, tmp_path):
    source = Image.new("RGB", (64, 64), (30, 160, 40))
    ImageDraw.Draw(source).ellipse((6, 6, 26, 26), fill=(220, 30, 30))
    source.save(tmp_path / "image.png")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((32, 0, 63, 63), fill=255)  # the right half
    mask.save(tmp_path / "mask.png")
    open_tab(page, "img2img")
    open_tab(page, "Inpaint upload")
    page.locator("#img2img_upload_image input[type=file]").first.set_input_files(str(tmp_path / "image.png"))
    page.locator("#img2img_upload_mask input[type=file]").first.set_input_files(str(tmp_path / "mask.png"))
    page.locator("#img2img_upload_mask img").first.wait_for()
    page.locator("#img2img_prompt textarea").fill("a blue square")
    page.locator("#img2img_seed input").fill("4")
    set_number(page, "img2img_steps", 4)
    set_number(page, "img2img_mask_blur", 0)
    generate(page, "img2img")
    (result,) = results(page, "img2img")
    text = result.info["parameters"]
    assert result.size == (64, 64) and "Mask blur: 0" in text and "Seed: 4," in text and "Steps: 4," in text
    diff = np.abs(np.asarray(result.convert("RGB"), dtype=int) - np.asarray(source, dtype=int)).max(axis=2)
    assert (diff[:, 36:] > 40).mean() > 0.2  # the white half was repainted
    assert (diff[:, :28] <= 2).mean() > 0.95  # the black half is the source's


def test_loopback_script_feeds_each_output_back(page, tmp_path):
    Image.new("RGB", (64, 64), (200, 60, 30)).save(tmp_path / "in.png")
    open_tab(page, "img2img")
    open_tab(page, "img2img")  # the img2img mode of the img2img tab
    page.locator("#img2img_image input[type=file]").first.set_input_files(str(tmp_path / "in.png"))
    page.locator("#img2img_image img").first.wait_for()
    page.locator("#img2img_prompt textarea").fill("a green circle")
    set_number(page, "img2img_steps", 2)
    set_number(page, "img2img_denoising_strength", 0.6)
    page.locator("#img2img_seed input").fill("8")
    choose(page, "img2img_script", "Loopback")
    set_number(page, "img2img_script_loopback_loops", 2)
    set_number(page, "img2img_script_loopback_denoising_strength_change_factor", 0.5)
    generate(page, "img2img")
    grid, first, second = results(page, "img2img")  # the grid of the loops first, as the web UI answers
    assert grid.size == (128, 64) and first.size == second.size == (64, 64)
    assert "Denoising strength: 0.6," in first.info["parameters"] and "Seed: 8," in first.info["parameters"]
    assert "Denoising strength: 0.3," in second.info["parameters"] and "Seed: 9," in second.info["parameters"]
    assert "Denoising strength change factor: 0.5" in first.info["parameters"]
    choose(page, "img2img_script", "None")


def test_prompt_matrix_script_makes_every_combination_and_a_grid(page):
    page.locator("#txt2img_prompt textarea").fill("a circle|red|small")
    set_number(page, "txt2img_steps", 2)
    page.locator("#txt2img_seed input").fill("5")
    choose(page, "txt2img_script", "Prompt matrix")
    generate(page, "txt2img")
    grid, *images = results(page, "txt2img")
    assert grid.width > 128 and grid.height > 128 and len(images) == 4  # 2 x 2 cells and the legend
    prompts = [image.info["parameters"].split("\n")[0] for image in images]
    assert prompts == ["a circle", "a circle, red", "a circle, small", "a circle, red, small"]
    assert all("Seed: 5," in image.info["parameters"] for image in images)  # one seed for all, as by default
    choose(page, "txt2img_script", "None")


def test_xyz_plot_script_draws_a_grid_of_its_axes(page):
    page.locator("#txt2img_prompt textarea").fill("a blue square")
    set_number(page, "txt2img_steps", 2)
    page.locator("#txt2img_seed input").fill("6")
    choose(page, "txt2img_script", "X/Y/Z plot")
    choose(page, "txt2img_script_xyz_x_type", "Steps")
    page.locator("#txt2img_script_xyz_x textarea").fill("2, 6")
    choose(page, "txt2img_script_xyz_y_type", "CFG Scale")
    page.locator("#txt2img_script_xyz_y textarea").fill("3, 7")
    page.locator("#txt2img_script_xyz_draw_legend input").uncheck()
    generate(page, "txt2img")
    (grid,) = results(page, "txt2img")  # sub-images not asked for
    assert grid.size == (128, 128)  # 2 x 2 cells of 64, no legend
    text = grid.info["parameters"]
    assert "Script: X/Y/Z plot" in text and "X Type: Steps" in text and "X Values: \"2, 6\"" in text
    cells = np.asarray(grid.convert("RGB"), dtype=int)
    assert np.abs(cells[:64, :64] - cells[:64, 64:]).max() > 10  # 2 steps and 6 steps differ
    assert np.abs(cells[:64, :64] - cells[64:, :64]).max() > 10  # CFG 3 and 7 differ
    choose(page, "txt2img_script", "None")


def test_hires_fix_upscales_and_refines(page):
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    set_number(page, "txt2img_steps", 2)
    page.locator("#txt2img_seed input").fill("9")
    page.click("#txt2img_hires_accordion")
    page.locator("#txt2img_enable_hr input").check()
    set_number(page, "txt2img_hr_scale", 1.5)
    set_number(page, "txt2img_hr_second_pass_steps", 2)
    generate(page, "txt2img")
    (image,) = results(page, "txt2img")
    text = image.info["parameters"]
    assert image.size == (96, 96)
    assert "Size: 64x64," in text and "Hires upscale: 1.5," in text and "Hires steps: 2," in text
    assert "Hires upscaler: Latent" in text and np.asarray(image).std() > 5


def test_an_upload_over_the_pixel_limit_is_refused_before_it_is_decoded(page, server, tmp_path):
    from webui_helpers import bomb_png

    (tmp_path / "bomb.png").write_bytes(bomb_png())  # 100 M pixels in a small file
    open_tab(page, "img2img")
    open_tab(page, "img2img")
    page.locator("#img2img_image input[type=file]").first.set_input_files(str(tmp_path / "bomb.png"))
    page.locator("#img2img_prompt textarea").fill("a red circle")
    time.sleep(1)
    generate(page, "img2img")
    wait_for(lambda: "10000x10000 pixels is over the limit" in page.inner_text("#img2img_info"),
             what="the refusal")
    assert "Traceback" not in server.log_text()


def test_interrogate_clip_writes_the_images_caption_into_the_prompt(page, tmp_path):
    """The img2img tab's "Interrogate CLIP" button, with t2i's bundled CLIP: a `shapes` scene
    becomes a prompt in the `shapes` grammar naming its object's colour and shape and its
    background (the attributes the small CLIP reads at 99-100%; BENCHMARKS.md)."""
    from t2i.data.shapes import ShapesDataset

    item = ShapesDataset(1, 31, 64, p_two=0.0, p_short=0.0)[0]
    item["image"].save(tmp_path / "scene.png")
    scene = item["scene"]
    open_tab(page, "img2img")
    open_tab(page, "img2img")
    page.locator("#img2img_prompt textarea").fill("")
    page.locator("#img2img_image input[type=file]").first.set_input_files(str(tmp_path / "scene.png"))
    page.locator("#img2img_image img").first.wait_for()
    page.locator("#img2img_interrogate").click()
    prompt = page.locator("#img2img_prompt textarea")
    wait_for(lambda: "background" in prompt.input_value(), what="the caption in the prompt")
    caption = prompt.input_value()
    wanted = (f"{scene.objects[0].color} {scene.objects[0].shape}", f"{scene.background} background")
    assert all(w in caption for w in wanted), (caption, item["caption"])


def test_png_info_reads_an_image_and_sends_its_parameters_to_txt2img(page, tmp_path):
    text = ("a blue square above a yellow triangle\nNegative prompt: red\nSteps: 9, Sampler: Euler a, "
            "CFG scale: 5, Seed: 1234, Size: 64x64, Model: t2i-shapes-ldm")
    (tmp_path / "made.png").write_bytes(png_with_infotext(text))
    open_tab(page, "PNG Info")
    page.locator("#pnginfo_image input[type=file]").first.set_input_files(str(tmp_path / "made.png"))
    wait_for(lambda: "Seed: 1234" in page.inner_text("#pnginfo_html"), what="the parameters")
    page.click("#pnginfo_send_txt2img")
    prompt = page.locator("#txt2img_prompt textarea")
    wait_for(lambda: prompt.is_visible() and prompt.input_value() == "a blue square above a yellow triangle",
             what="the prompt in txt2img")
    assert page.locator("#txt2img_negative_prompt textarea").input_value() == "red"
    assert page.locator("#txt2img_seed input").input_value() == "1234"
    assert page.locator("#txt2img_steps input[type=number]").first.input_value() == "9"
    assert page.locator("#txt2img_cfg_scale input[type=number]").first.input_value() == "5"
    assert page.locator("#txt2img_sampler input").first.input_value() == "Euler a"


# ----------------------------------------------------------------------------- training, settings


def test_training_run_shows_a_growing_loss_curve(page):
    open_tab(page, "Train")
    page.locator("#train_name textarea").fill("ui-gan")
    page.locator("#train_steps input").fill("1000")
    page.locator("#train_log_every input").fill("2")
    page.click("#train_start")
    status = page.locator("#train_status .t2i-info")

    def points() -> int:
        return int(status.get_attribute("data-points") or 0) if status.count() else 0

    seen = set()  # the point counts the page showed while the run went on

    def finished() -> bool:
        seen.add(points())
        return "finished" in status.inner_text()

    wait_for(finished, timeout=300, what="the run to finish")
    page.locator("#train_loss_plot canvas, #train_loss_plot svg").first.wait_for()
    assert points() == 1000  # d_loss and g_loss at each of the 500 logged steps of the 1,000
    # the curve was seen growing: at least one partial count between none and the final one
    assert {n for n in seen if 0 < n < 1000}, sorted(seen)
    shot(page, "train-run-desktop")


def test_lora_finetune_runs_as_a_training_job_and_shows_its_loss(page, server, tiny_model_dir, tmp_path):
    from t2i.data.shapes import ShapesDataset

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    dataset = ShapesDataset(4, seed=5, resolution=32)
    for i in range(4):
        dataset[i]["image"].save(pictures / f"p{i}.png")
        (pictures / f"p{i}.txt").write_text(dataset[i]["caption"])
    open_tab(page, "Train")
    page.get_by_role("tab", name="Fine-tune", exact=True).click()
    # the controls are `t2i finetune`'s options: label, default and help from its schema
    assert page.locator("#finetune_lora_rank input").first.input_value() == "8"
    # hints are set by the page's script shortly after a tab's controls render: wait, don't race it
    wait_for(lambda: "LoRA rank" in (page.get_attribute("#finetune_lora_rank", "title") or ""),
             what="the LoRA rank hover hint")
    page.locator("#finetune_model textarea").fill(str(tiny_model_dir))
    page.locator("#finetune_data textarea").fill(str(pictures))
    page.locator("#finetune_name textarea").fill("ui-lora")
    for elem, value in (("steps", 3), ("batch_size", 2), ("log_every", 1), ("sample_every", 0), ("lora_rank", 2)):
        page.locator(f"#finetune_{elem} input, #finetune_{elem} textarea").first.fill(str(value))
    page.click("#finetune_start")
    status = page.locator("#train_status .t2i-info")
    # the server's one run at a time: the status may still show an earlier run of this module first
    wait_for(lambda: status.count() and "'ui-lora': finished" in status.inner_text(), timeout=300,
             what="the fine-tune to end")
    assert status.get_attribute("data-points") == "3"  # a loss point per step
    assert "step 3, loss" in status.inner_text()
    page.locator("#train_loss_plot canvas, #train_loss_plot svg").first.wait_for()
    run = server.outdir / "train" / "ui-lora"
    lora = load_file(run / "ui-lora.safetensors")
    assert lora and all("lora" in key or key.endswith(".alpha") for key in lora)
    assert {float(v) for k, v in lora.items() if k.endswith(".alpha")} == {2.0}
    shot(page, "train-finetune-desktop")
    page.click("#finetune_start")  # the same name again: refused with a message, nothing started
    wait_for(lambda: "Not started: run 'ui-lora' exists" in page.inner_text("#train_status"), what="the refusal")


def test_settings_are_saved_and_used_without_a_restart(page, server):
    import json

    open_tab(page, "Settings")
    set_number(page, "settings_default_steps", 7)
    page.click("#settings_submit")
    wait_for(lambda: "saved" in page.inner_text("#settings_result"), what="the saved message")
    saved = json.loads((server.outdir / "webui-settings.json").read_text())
    assert saved["default_steps"] == 7
    page.reload()
    page.wait_for_selector("#txt2img_generate")
    wait_for(lambda: page.locator("#txt2img_steps input[type=number]").first.input_value() == "7",
             what="the new default after a reload")


def test_output_folders_apply_without_a_restart_and_stay_inside_the_output_folder(page, server):
    import json

    def apply(value: str, expect: str) -> str:
        open_tab(page, "Settings")
        page.locator("#settings_outdir_txt2img_samples textarea").fill(value)
        page.click("#settings_submit")
        wait_for(lambda: expect in page.inner_text("#settings_result"), what=f"{expect!r} for {value!r}")
        return page.inner_text("#settings_result")

    def saved_value() -> str:
        return json.loads((server.outdir / "webui-settings.json").read_text())["outdir_txt2img_samples"]

    assert "Settings not saved" in apply("/etc", "'/etc' is outside the server's output folder")
    assert "Settings not saved" in apply("../../elsewhere", "'../../elsewhere' is outside")
    apply("mine", "Settings saved to")
    assert saved_value() == "mine"
    before = set((server.outdir / "txt2img").glob("*.png"))
    open_tab(page, "txt2img")
    page.locator("#txt2img_prompt textarea").fill("a yellow triangle")
    set_number(page, "txt2img_steps", 2)
    page.locator("#txt2img_seed input").fill("11")
    generate(page, "txt2img")
    saved = sorted((server.outdir / "mine").glob("*.png"))
    assert [p.name for p in saved] == ["00000-11-a_yellow_triangle.png"]
    assert "Seed: 11," in Image.open(saved[0]).info["parameters"]  # the infotext kept
    assert set((server.outdir / "txt2img").glob("*.png")) == before  # not also in the API's folder
    apply("txt2img", "Settings saved to")  # back to the API's folder for the other tests
    wait_for(lambda: saved_value() == "txt2img", what="the folder back in the settings file")


def test_extras_upscale_and_save_into_the_settings_folder(page, server, tmp_path):
    import json

    Image.new("RGB", (40, 24), (200, 60, 30)).save(tmp_path / "photo.png")
    open_tab(page, "Settings")
    page.locator("#settings_outdir_extras_samples textarea").fill("upscaled")
    page.click("#settings_submit")
    wait_for(lambda: "Settings saved to" in page.inner_text("#settings_result"), what="the saved folder")
    before = set((server.outdir / "extras").glob("*.png")) if (server.outdir / "extras").exists() else set()
    open_tab(page, "Extras")
    page.locator("#extras_image input[type=file]").first.set_input_files(str(tmp_path / "photo.png"))
    page.locator("#extras_image img").first.wait_for()
    generate(page, "extras")
    (result,) = results(page, "extras")
    assert result.size == (80, 48)  # Lanczos, the default 2x
    saved = sorted((server.outdir / "upscaled").glob("*.png"))
    assert len(saved) == 1 and Image.open(saved[0]).size == (80, 48)
    after = set((server.outdir / "extras").glob("*.png")) if (server.outdir / "extras").exists() else set()
    assert after == before  # not also in the API's folder
    shot(page, "extras-result-desktop")
    open_tab(page, "Settings")  # back to the API's folder for the other tests
    page.locator("#settings_outdir_extras_samples textarea").fill("extras")
    page.click("#settings_submit")
    wait_for(lambda: json.loads((server.outdir / "webui-settings.json").read_text())["outdir_extras_samples"]
             == "extras", what="the folder back in the settings file")


def test_checkpoint_merger_writes_a_weighted_sum_and_lists_it(page, server):
    open_tab(page, "Checkpoint Merger")
    for name, title in (("primary", "alpha.safetensors"), ("secondary", "beta.safetensors")):
        page.locator(f"#merger_{name} input").first.click()
        page.locator(f"#merger_{name} [role=option]", has_text=title).first.click()
    set_number(page, "merger_alpha", 0.25)
    page.locator("#merger_name textarea").fill("mixed")
    page.click("#merger_merge")
    wait_for(lambda: "Saved" in page.inner_text("#merger_result"), timeout=60, what="the merge")
    merged = load_file(server.workdir / "models" / "mixed.safetensors")
    assert torch.allclose(merged["w"], torch.full((4, 4), 0.75 * 1.0 + 0.25 * 3.0))
    page.locator("#t2i_checkpoint input").first.click()  # the new file is a checkpoint now
    assert page.locator("#t2i_checkpoint [role=option]", has_text="mixed.safetensors").count() == 1


# ----------------------------------------------------------------------------- safety, layout


def test_only_outputs_and_gradio_files_are_served(server, tmp_path):
    outdir = server.outdir.resolve()
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        assert anonymous.get("/").status_code == 401
        assert anonymous.get("/gradio_api/file=/etc/hostname").status_code == 401
    with http(server) as client:
        client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "steps": 2, "width": 64, "height": 64})
        saved = sorted((outdir / "txt2img").glob("*.png"))
        assert client.get(f"/gradio_api/file={saved[0]}").status_code == 200
        (outdir / "txt2img" / "link.png").symlink_to("/etc/hostname")
        refused = ["/etc/hostname", str(outdir / "queue.sqlite3"), str(outdir / ".t2i" / "queue.sqlite3"),
                   f"{outdir}/txt2img/../.t2i/queue.sqlite3", str(outdir / "webui-settings.json"),
                   f"{outdir}/txt2img/../queue.sqlite3", f"{outdir}/txt2img/link.png", "../../../../etc/hostname",
                   "%2e%2e/%2e%2e/%2e%2e/etc/hostname", str(REPO / "pyproject.toml"),
                   "http://example.com/x.png", "%68ttp://example.com/x.png", "https:%2f%2fexample.com/a"]
        for path in refused:
            response = client.get(f"/gradio_api/file={path}")
            assert response.status_code in (403, 404), (path, response.status_code)
        assert client.get("/gradio_api/proxy=http://example.com/x").status_code in (403, 404)
        big = client.post("/gradio_api/upload", files={"files": ("big.png", b"\0" * (2 * 2**20), "image/png")})
        assert big.status_code == 413  # --max-upload-mb 1


def test_every_tab_at_desktop_and_phone_width(browser, server):
    credentials = {"username": AUTH[0], "password": AUTH[1]}
    for width, height, label in ((1400, 1000, "desktop"), (390, 844, "phone")):
        page = open_page(browser, server.url, credentials=credentials, width=width, height=height)
        try:
            for tab in ("txt2img", "img2img", "Extras", "PNG Info", "Checkpoint Merger", "Train", "Settings"):
                open_tab(page, tab)
                time.sleep(0.5)
                overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
                assert overflow <= 1, f"{tab} scrolls sideways at {width} px"
                shot(page, f"{tab.replace(' ', '_').lower()}-{label}")
                if tab == "Train":  # its second section
                    page.get_by_role("tab", name="Fine-tune", exact=True).click()
                    page.locator("#finetune_start").wait_for()
                    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
                    assert overflow <= 1, f"Fine-tune scrolls sideways at {width} px"
                    shot(page, f"train_finetune-{label}")
            open_tab(page, "txt2img")
            assert page.locator("#txt2img_generate").is_visible()
        finally:
            page.context.close()
