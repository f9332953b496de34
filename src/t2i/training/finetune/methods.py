"""What each fine-tuning method trains and writes; the loop (loop.py) is shared.

`prepare(method, model, cfg, ...)` freezes the model, adds the method's trainable parts and
returns a `Setup`: the extra modules the step runs, whether the text encoder runs in every step,
the optimizer groups, what sample grids need and how the result is written.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn


@dataclass
class Setup:
    extras: dict[str, nn.Module] = field(default_factory=dict)
    live_text: bool = False  # the text encoder runs in every step (it trains, or TI vectors do)
    text_params: list = field(default_factory=list)  # trained parameters of the text encoder(s)
    export: Callable[..., Path] | None = None  # export(outdir, name, metadata) -> the main output
    embeddings: Callable[[], list] = lambda: []  # textual-inversion embeddings for sample grids
    during_training: Callable = nullcontext  # a context the whole training runs in (hypernetworks)
    ti_name: str | None = None  # textual inversion: the word whose tokens are learned
    ti_vectors: int = 0


def _trained(module: nn.Module) -> list:
    return [p for p in module.parameters() if p.requires_grad]


def _text_encoders(model) -> list[nn.Module]:
    return [e for e in (model.text_encoder, getattr(model, "text_encoder_2", None)) if e is not None]


def prepare(cfg, model, name: str, info: dict[str, str]) -> Setup:
    model.requires_grad_(False)
    return {"lora": _lora, "ti": _ti, "hypernetwork": _hypernetwork, "full": _full, "dreambooth": _full}[cfg.method](
        cfg, model, name, info)


def _lora(cfg, model, name, info) -> Setup:
    from t2i.training.finetune.lora import add_lora, save_lora

    components = add_lora(model, cfg.lora, cfg.train_text_encoder)
    text = [p for e in _text_encoders(model) for p in _trained(e)]
    setup = Setup(live_text=cfg.train_text_encoder, text_params=text,
                  export=lambda outdir, stem, meta: save_lora(model, components, outdir, stem, meta))
    if cfg.lora.init_embedding:
        _pivot(setup, model, cfg.lora.init_embedding, name)
    return setup


def _pivot(setup: Setup, model, path: str, name: str) -> None:
    """Pivotal tuning: the embedding's vectors stand for NAME, frozen (placed as textual inversion
    places its learned ones; the text encoder's outputs are still cached when it does not train)."""
    from t2i.extra_networks.embeddings import load_embedding
    from t2i.training.finetune.textual_inversion import LearnedTokens, embedding

    if not Path(path).is_file():
        raise ValueError(f"--init-embedding {path}: no such file; give a textual-inversion embedding "
                         f"(NAME.safetensors or .pt, e.g. from `t2i finetune ti`)")
    loaded = load_embedding(path)
    vectors = []
    for encoder in _text_encoders(model):
        width = encoder.get_input_embeddings().weight.shape[1]
        v = loaded.for_width(width)
        if v is None:
            raise ValueError(f"--init-embedding {path} was made for another model: no vectors of width {width}, "
                             f"this model's text encoder's")
        vectors.append(v)
    tokens = LearnedTokens(vectors).requires_grad_(False)
    setup.extras["tokens"] = tokens
    setup.ti_name, setup.ti_vectors = name, loaded.count
    setup.embeddings = lambda: [embedding(name, tokens)]
    export = setup.export  # the LoRA file names the embedding it needs beside it
    setup.export = lambda outdir, stem, meta: export(outdir, stem, {**meta, "t2i_init_embedding": Path(path).name,
                                                                    "t2i_init_embedding_hash": loaded.hash})


def _ti(cfg, model, name, info) -> Setup:
    from t2i.training.finetune.textual_inversion import LearnedTokens, embedding, init_vectors, save_embedding

    tokens = LearnedTokens(init_vectors(model, cfg.ti.init_word, cfg.ti.vectors))
    return Setup(extras={"tokens": tokens}, live_text=True, ti_name=name, ti_vectors=cfg.ti.vectors,
                 export=lambda outdir, stem, meta: save_embedding(tokens, outdir, stem, meta),
                 embeddings=lambda: [embedding(name, tokens)])


def _hypernetwork(cfg, model, name, info) -> Setup:
    from t2i.extra_networks.hypernetwork import Hypernetwork, applying_hypernetworks, context_widths

    o = cfg.hypernetwork
    network = Hypernetwork(context_widths(model.unet), o.layer_structure, o.activation, o.layer_norm, o.dropout,
                           weight_init=o.weight_init, name=name)
    network.init_weights()

    def export(outdir: Path, stem: str, meta: dict) -> Path:
        return network.save(outdir / f"{stem}.pt", step=int(meta.get("t2i_steps", 0)),
                            sd_checkpoint=info.get("t2i_base_hash"), sd_checkpoint_name=info.get("t2i_base_model"))

    return Setup(extras={"hypernetwork": network}, export=export,
                 during_training=lambda: applying_hypernetworks(model.unet, [(network, 1.0)]))


def _full(cfg, model, name, info) -> Setup:
    """Full fine-tune (and DreamBooth, which adds prior preservation in the loop): the UNet, and
    with train_text_encoder the text encoder(s), train; the result is a model folder."""
    from t2i.checkpoints.export import save_diffusers_folder

    model.unet.requires_grad_(True)
    text = []
    if cfg.train_text_encoder:
        for encoder in _text_encoders(model):
            encoder.requires_grad_(True)
            text += _trained(encoder)

    def export(outdir: Path, stem: str, meta: dict) -> Path:
        model.eval()
        save_diffusers_folder(model, outdir / "model")
        return outdir / "model"

    return Setup(live_text=cfg.train_text_encoder, text_params=text, export=export)
