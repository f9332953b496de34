"""The "Send to" buttons: a result (or PNG Info's image) and its parameters go to another tab, and
that tab opens. Parameters travel through the image's infotext, read by the schema (paste.py);
the seed goes to txt2img (to remake the image) but not to img2img, as in the web UI."""
from __future__ import annotations

import gradio as gr

from t2i.interfaces.webui import paste
from t2i.interfaces.webui import results as results_ui


def _editor_value(path: str | None):
    return {"background": path, "layers": [], "composite": path} if path else None


def wire(ctx, tabs, txt2img, img2img, extras, pnginfo) -> None:
    t = ctx.targets
    img2img_fields = list(img2img.form.components.values())
    txt2img_fields = list(txt2img.form.components.values())

    def params_for(form, cls, text: str, skip=()) -> list:
        if not text or "Steps:" not in text:
            return [gr.skip()] * len(form.components)
        try:
            return paste.updates(form, cls, text, skip)
        except ValueError:  # ParamError included: the image's text is not a generation's
            return [gr.skip()] * len(form.components)

    def to_img2img(path, text, mode):
        if not path:
            raise gr.Error("no image to send: generate or drop one first")
        image_update = gr.update(value=path) if mode == "img2img" else gr.update(value=_editor_value(path))
        return [image_update, gr.Tabs(selected="img2img"), gr.Tabs(selected=mode), mode,
                gr.Group(visible=mode == "inpaint"),
                *params_for(img2img.form, img2img.cls, text, skip=paste.SEED_FIELDS)]

    def to_extras(path):
        if not path:
            raise gr.Error("no image to send: generate or drop one first")
        return path, gr.Tabs(selected="extras"), gr.Tabs(selected="single")

    for source in (txt2img, img2img):
        res = source.results
        for mode, target in (("img2img", t["img2img_image"]), ("inpaint", t["img2img_inpaint"])):
            res.send[mode].click(
                lambda state, index, mode=mode: to_img2img(results_ui.selected_image(state, index),
                                                           results_ui.selected_infotext(state, index), mode),
                inputs=[res.state, res.selected],
                outputs=[target, tabs, t["img2img_mode_tabs"], t["img2img_mode"], t["img2img_inpaint_group"], *img2img_fields],
                show_progress="hidden")
        res.send["extras"].click(lambda state, index: to_extras(results_ui.selected_image(state, index)),
                                 inputs=[res.state, res.selected], outputs=[extras.image, tabs, extras.tabs],
                                 show_progress="hidden")
    res = extras.results
    res.send["img2img"].click(lambda state, index: to_img2img(results_ui.selected_image(state, index), "", "img2img"),
                              inputs=[res.state, res.selected],
                              outputs=[t["img2img_image"], tabs, t["img2img_mode_tabs"], t["img2img_mode"], t["img2img_inpaint_group"],
                                       *img2img_fields], show_progress="hidden")
    res.send["inpaint"].click(lambda state, index: to_img2img(results_ui.selected_image(state, index), "", "inpaint"),
                              inputs=[res.state, res.selected],
                              outputs=[t["img2img_inpaint"], tabs, t["img2img_mode_tabs"], t["img2img_mode"], t["img2img_inpaint_group"],
                                       *img2img_fields], show_progress="hidden")
    res.send["extras"].click(lambda state, index: to_extras(results_ui.selected_image(state, index)),
                             inputs=[res.state, res.selected], outputs=[extras.image, tabs, extras.tabs],
                             show_progress="hidden")

    # PNG Info: the parameters to txt2img (seed included: it remakes the image), the image and its
    # parameters to img2img / inpaint, the image to extras.
    def png_to_txt2img(text):
        if not text:
            raise gr.Error("the image holds no generation parameters")
        return [gr.Tabs(selected="txt2img"), *paste.handler(txt2img.form, txt2img.cls)(text)]

    pnginfo.send["txt2img"].click(png_to_txt2img, inputs=pnginfo.text, outputs=[tabs, *txt2img_fields],
                                  show_progress="hidden")
    for mode, target in (("img2img", t["img2img_image"]), ("inpaint", t["img2img_inpaint"])):
        pnginfo.send[mode].click(lambda path, text, mode=mode: to_img2img(path, text, mode),
                                 inputs=[pnginfo.image, pnginfo.text],
                                 outputs=[target, tabs, t["img2img_mode_tabs"], t["img2img_mode"], t["img2img_inpaint_group"], *img2img_fields],
                                 show_progress="hidden")
    pnginfo.send["extras"].click(to_extras, inputs=pnginfo.image, outputs=[extras.image, tabs, extras.tabs],
                                 show_progress="hidden")
