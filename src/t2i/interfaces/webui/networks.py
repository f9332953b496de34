"""The extra networks panel (🎴): cards for the checkpoints, LoRAs and textual-inversion embeddings
found in the server's folders. Clicking a LoRA card adds `<lora:name:1>` to the prompt, an
embedding card its name (the prompt word that applies it), a checkpoint card selects that
checkpoint; 🔄 rescans the folders. The cards are plain HTML; webui.js handles their clicks."""
from __future__ import annotations

import html

import gradio as gr


def cards_html(ctx, tab: str) -> str:
    sections = (
        ("Checkpoints", "checkpoint", [(item.title, item.name) for item in ctx.catalog.checkpoints()]),
        ("Lora", "lora", [(f"<lora:{item.name}:1>", item.name) for item in ctx.catalog.loras()]),
        ("Textual Inversion", "embedding", [(item.name, item.name) for item in ctx.catalog.embeddings()]),
    )
    parts = []
    for title, kind, items in sections:
        cards = "".join(
            f'<button type="button" class="t2i-card" data-tab="{tab}" data-kind="{kind}" '
            f'data-insert="{html.escape(value, quote=True)}" title="{html.escape(value, quote=True)}">'
            f'<span class="t2i-card-name">{html.escape(name)}</span></button>' for value, name in items)
        empty = f'<div class="t2i-cards-empty">No {title.lower()} found in the server\'s folders.</div>'
        parts.append(f'<div class="t2i-card-section" data-kind="{kind}"><h4>{title} ({len(items)})</h4>'
                     f'<div class="t2i-cards">{cards or empty}</div></div>')
    return f'<div class="t2i-networks" data-tab="{tab}">{"".join(parts)}</div>'


def build(ctx, tab: str, toggle) -> None:
    with gr.Group(visible=False, elem_id=f"{tab}_networks", elem_classes=["t2i-networks-panel"]) as panel:
        with gr.Row(elem_classes=["t2i-compact-row"]):
            gr.Markdown("**Extra networks**: click a card to add it to the prompt")
            refresh = gr.Button("🔄 Refresh", size="sm", elem_id=f"{tab}_networks_refresh", scale=0, min_width=110)
        cards = gr.HTML(cards_html(ctx, tab), elem_id=f"{tab}_networks_cards")
    ctx.hints[f"{tab}_networks_refresh"] = "scan the checkpoint, LoRA and embedding folders again"
    shown = gr.State(False)
    toggle.click(lambda on: (gr.Group(visible=not on), not on), inputs=shown, outputs=[panel, shown],
                 show_progress="hidden", queue=False)

    def refresh_cards():
        ctx.catalog.refresh_checkpoints()
        ctx.catalog.refresh_loras()
        return cards_html(ctx, tab)

    refresh.click(refresh_cards, outputs=cards, show_progress="hidden")
