"""The top row of txt2img and img2img: prompt and negative prompt with their token counters, the
Generate button (Interrupt and Skip while a job runs; right-click for Generate forever), the tool
buttons (↙ read parameters from the prompt, 🗑 clear, 🎴 extra networks, 📋 apply styles,
💾 save as style) and the styles dropdown."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from t2i.errors import ParamError
from t2i.interfaces.webui import styles as styles_ui
from t2i.interfaces.webui.builder import Form
from t2i.interfaces.webui.tokens import counter_text


@dataclass
class PromptRow:
    prompt: object
    negative: object
    styles: object
    generate: object
    interrupt: object
    skip: object
    forever_on: object
    forever_off: object
    read_params: object
    networks_toggle: object


def build(ctx, form: Form, cls, checkpoint) -> PromptRow:
    p = form.prefix
    limit = ctx.limits.max_prompt_chars
    empty = f"0/{ctx.chunk_length(checkpoint.value)}"
    with gr.Row(elem_id=f"{p}_toprow", elem_classes=["t2i-toprow"]):
        with gr.Column(scale=6, min_width=280, elem_classes=["t2i-prompts"]):
            with gr.Group(elem_classes=["t2i-prompt-box"]):
                prompt = form.control(cls, "prompt", lines=3, max_lines=12, max_length=limit, show_label=False,
                                      placeholder="Prompt (press Ctrl+Enter to generate)")
                prompt_count = gr.HTML(empty, elem_id=f"{p}_token_counter", elem_classes=["t2i-token-counter"])
            with gr.Group(elem_classes=["t2i-prompt-box"]):
                negative = form.control(cls, "negative_prompt", lines=2, max_lines=8, max_length=limit,
                                        show_label=False, placeholder="Negative prompt (press Ctrl+Enter to generate)")
                negative_count = gr.HTML(empty, elem_id=f"{p}_negative_token_counter",
                                         elem_classes=["t2i-token-counter"])
        with gr.Column(scale=1, min_width=200, elem_classes=["t2i-actions"]):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{p}_generate", elem_classes=["t2i-generate"])
            with gr.Row(elem_classes=["t2i-stop-row"]):
                interrupt = gr.Button("Interrupt", variant="stop", visible=False, elem_id=f"{p}_interrupt")
                skip = gr.Button("Skip", visible=False, elem_id=f"{p}_skip")
            # Clicked by the Generate button's context menu (webui.js); hidden, still in the page.
            forever_on = gr.Button("Generate forever", visible="hidden", elem_id=f"{p}_forever_on")
            forever_off = gr.Button("Cancel generate forever", visible="hidden", elem_id=f"{p}_forever_off")
            with gr.Row(elem_classes=["t2i-tools"]):
                read_params = gr.Button("↙️", elem_id=f"{p}_read_params", elem_classes=["t2i-tool"], min_width=36)
                clear = gr.Button("🗑️", elem_id=f"{p}_clear_prompt", elem_classes=["t2i-tool"], min_width=36)
                networks_toggle = gr.Button("🎴", elem_id=f"{p}_networks_toggle", elem_classes=["t2i-tool"],
                                            min_width=36)
                apply_styles = gr.Button("📋", elem_id=f"{p}_apply_styles", elem_classes=["t2i-tool"], min_width=36)
                save_style = gr.Button("💾", elem_id=f"{p}_save_style", elem_classes=["t2i-tool"], min_width=36)
            styles = form.control(cls, "styles", choices=styles_ui.style_names(ctx.config), label="Styles",
                                  allow_custom_value=False)
    form.hints.update({
        f"{p}_generate": "generate (Ctrl+Enter); right-click for Generate forever",
        f"{p}_interrupt": "stop your job at the next step and keep what is done",
        f"{p}_skip": "drop the current batch and go on with the next",
        f"{p}_read_params": "read generation parameters pasted into the prompt (an image's infotext) into the UI",
        f"{p}_clear_prompt": "clear the prompt and the negative prompt",
        f"{p}_networks_toggle": "show or hide the extra networks (LoRA, embeddings, checkpoints)",
        f"{p}_apply_styles": "write the chosen styles into the prompts and clear the selection",
        f"{p}_save_style": "save the current prompts as a style",
    })
    _wire(ctx, prompt, negative, prompt_count, negative_count, checkpoint, clear, apply_styles, save_style, styles)
    return PromptRow(prompt, negative, styles, generate, interrupt, skip, forever_on, forever_off, read_params,
                     networks_toggle)


def _wire(ctx, prompt, negative, prompt_count, negative_count, checkpoint, clear, apply_styles, save_style,
          styles) -> None:
    def count(text, title):
        return counter_text(text or "", ctx.chunk_length(title))

    for box, counter in ((prompt, prompt_count), (negative, negative_count)):
        box.change(count, inputs=[box, checkpoint], outputs=counter, trigger_mode="always_last",
                   show_progress="hidden", concurrency_limit=None)
        checkpoint.change(count, inputs=[box, checkpoint], outputs=counter, show_progress="hidden",
                          concurrency_limit=None)
    clear.click(lambda: ("", ""), outputs=[prompt, negative], show_progress="hidden", queue=False)

    def apply(names, text, neg):
        try:
            text, neg = styles_ui.apply(ctx.config, names, text or "", neg or "")
        except (ParamError, ValueError, OSError) as err:
            raise gr.Error(str(err)) from None
        return text, neg, []

    apply_styles.click(apply, inputs=[styles, prompt, negative], outputs=[prompt, negative, styles],
                       show_progress="hidden")

    def save(name, text, neg):
        if name is None:  # the name dialog was cancelled
            return gr.skip()
        try:
            names = styles_ui.save(ctx.config, name, text or "", neg or "")
        except (ParamError, ValueError, OSError) as err:
            raise gr.Error(str(err)) from None
        gr.Info(f"style {name.strip()!r} saved")
        return gr.Dropdown(choices=names)

    name_box = gr.State(None)
    # The web UI asks for the style's name in a browser dialog before the request is sent.
    save_style.click(save, inputs=[name_box, prompt, negative], outputs=styles, show_progress="hidden",
                     js="(name, p, n) => [window.prompt('Style name:'), p, n]")
