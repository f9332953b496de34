"""Hypernetworks in the web UI's format (NovelAI's technique, as AUTOMATIC1111's web UI trains and
applies them): small MLPs that transform what the UNet's attention layers compute keys and values
from, one pair (key, value) per context width.

In every attention layer of the UNet, with context c (the text states in cross-attention, the
image's own features in self-attention) of width d:

    k = to_k(c + multiplier · mlp_k[d](c))        v = to_v(c + multiplier · mlp_v[d](c))

A width without MLPs is left alone. `<hypernet:name:0.6>` in a prompt sets the multiplier.

File (`NAME.pt`, a pickle read with `weights_only=True`, no code): a dict with one entry per width,
`{320: (state_dict_k, state_dict_v), 768: (...), ...}`, the MLP's state dicts keyed
`linear.0.weight`, `linear.0.bias`, … (their positions in an nn.Sequential of Linear, activation,
LayerNorm and Dropout layers), and the settings that rebuild that sequence: `layer_structure`
([1, 2, 1]: width multipliers), `activation_func`, `is_layer_norm`, `use_dropout`,
`last_layer_dropout`, `activate_output`, `weight_initialization`, plus `name`, `step`,
`sd_checkpoint`, `sd_checkpoint_name`.

Applied through diffusers' attention-processor API (`unet.set_attn_processor`), with the UNet's
own processors put back afterwards: no code of diffusers is patched.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i.errors import ModelLoadError

HYPERNETWORK_SUFFIXES = (".pt",)
DROPOUT = 0.3  # the web UI's fixed dropout rate


def activations() -> dict[str, type[nn.Module] | None]:
    """The web UI's activation names: its short list, plus every torch activation by lower-case name."""
    found = {name.lower(): cls for name, cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass)
             if cls.__module__ == "torch.nn.modules.activation"}
    return found | {"linear": None, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU, "swish": nn.Hardswish,
                    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class HypernetworkModule(nn.Module):
    """x + multiplier · mlp(x) for one width; `linear` is the web UI's nn.Sequential layout."""

    def __init__(self, dim: int, layer_structure, activation: str = "linear", layer_norm: bool = False,
                 dropout: bool = False, activate_output: bool = False, last_layer_dropout: bool = False):
        super().__init__()
        table = activations()
        if activation not in table:
            raise ValueError(f"unknown hypernetwork activation {activation!r}; use one of {', '.join(sorted(table))}")
        layers: list[nn.Module] = []
        n = len(layer_structure)
        for i in range(n - 1):
            layers.append(nn.Linear(int(dim * layer_structure[i]), int(dim * layer_structure[i + 1])))
            if table[activation] is not None and (i < n - 2 or activate_output):
                layers.append(table[activation]())
            if layer_norm:
                layers.append(nn.LayerNorm(int(dim * layer_structure[i + 1])))
            if dropout and (i < n - 3 or (last_layer_dropout and i < n - 2)):
                layers.append(nn.Dropout(p=DROPOUT))
        self.linear = nn.Sequential(*layers)
        self.multiplier = 1.0

    def init_weights(self, kind: str = "Normal", activation: str = "linear") -> None:
        """The web UI's initialisations (its "Normal" is N(0, 0.01) weights and zero biases)."""
        nonlinearity = "leaky_relu" if activation == "leakyrelu" else "relu"
        for layer in self.linear:
            if not isinstance(layer, (nn.Linear, nn.LayerNorm)):
                continue
            if kind == "Normal" or isinstance(layer, nn.LayerNorm):
                nn.init.normal_(layer.weight, 0.0, 0.01)
            else:
                init = {"XavierUniform": nn.init.xavier_uniform_, "XavierNormal": nn.init.xavier_normal_,
                        "KaimingUniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity=nonlinearity),
                        "KaimingNormal": lambda w: nn.init.kaiming_normal_(w, nonlinearity=nonlinearity)}[kind]
                init(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.linear(x) * self.multiplier


class Hypernetwork(nn.Module):
    """The key and value MLPs for each context width, and the settings that rebuild them."""

    def __init__(self, sizes, layer_structure=(1, 2, 1), activation: str = "linear", layer_norm: bool = False,
                 dropout: bool = False, activate_output: bool = False, last_layer_dropout: bool = False,
                 weight_init: str = "Normal", name: str = ""):
        super().__init__()
        self.name = name
        self.settings = {"layer_structure": [float(x) for x in layer_structure], "activation_func": activation,
                         "is_layer_norm": bool(layer_norm), "use_dropout": bool(dropout),
                         "activate_output": bool(activate_output), "last_layer_dropout": bool(last_layer_dropout),
                         "weight_initialization": weight_init}
        build = lambda d: HypernetworkModule(d, layer_structure, activation, layer_norm, dropout,  # noqa: E731
                                             activate_output, last_layer_dropout)
        self.k = nn.ModuleDict({str(d): build(d) for d in sorted(set(sizes))})
        self.v = nn.ModuleDict({str(d): build(d) for d in sorted(set(sizes))})

    @property
    def sizes(self) -> list[int]:
        return [int(d) for d in self.k]

    def init_weights(self) -> None:
        for module in [*self.k.values(), *self.v.values()]:
            module.init_weights(self.settings["weight_initialization"], self.settings["activation_func"])

    def contexts(self, context: Tensor, multiplier: float) -> tuple[Tensor, Tensor]:
        """(context for the keys, context for the values); unchanged for a width it has no MLPs for."""
        key = str(context.shape[-1])
        if key not in self.k or multiplier == 0:
            return context, context
        k, v = self.k[key], self.v[key]
        return context + k.linear(context) * multiplier, context + v.linear(context) * multiplier

    # ------------------------------------------------------------------ the web UI's file
    def file_dict(self, step: int = 0, sd_checkpoint: str | None = None, sd_checkpoint_name: str | None = None) -> dict:
        data: dict = {int(d): ({k: t.detach().cpu().float() for k, t in self.k[d].state_dict().items()},
                               {k: t.detach().cpu().float() for k, t in self.v[d].state_dict().items()})
                      for d in self.k}
        n = len(self.settings["layer_structure"])
        dropout_structure = [0.0] + [DROPOUT if self.settings["use_dropout"] and (
            i < n - 3 or (self.settings["last_layer_dropout"] and i < n - 2)) else 0.0 for i in range(n - 1)]
        data.update(self.settings, name=self.name, step=int(step), sd_checkpoint=sd_checkpoint,
                    sd_checkpoint_name=sd_checkpoint_name, dropout_structure=dropout_structure)
        return data

    def save(self, path: str | Path, **info) -> Path:
        from t2i.atomic import atomic_file

        path = Path(path)
        with atomic_file(path) as f:
            torch.save(self.file_dict(**info), f)
        return path


def hypernetwork_from_data(data, path: Path, name: str | None = None) -> Hypernetwork:
    """A Hypernetwork from a loaded web-UI file's dict; ModelLoadError naming the file otherwise."""
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} holds a {type(data).__name__}, not a hypernetwork")
    sizes = [k for k in data if isinstance(k, int)]
    if not sizes:
        raise ModelLoadError(f"{path} is not a web UI hypernetwork: no per-width layers (integer keys such as 768)")
    settings = dict(layer_structure=data.get("layer_structure") or [1, 2, 1],
                    activation=data.get("activation_func") or "linear", layer_norm=bool(data.get("is_layer_norm")),
                    dropout=bool(data.get("use_dropout")), activate_output=bool(data.get("activate_output", True)),
                    last_layer_dropout=bool(data.get("last_layer_dropout")),
                    weight_init=data.get("weight_initialization") or "Normal")
    try:
        net = Hypernetwork(sizes, name=name or str(data.get("name") or path.stem), **settings)
        for d in sizes:
            pair = data[d]
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"width {d} needs a (key, value) pair of state dicts")
            for module, state in zip((net.k[str(d)], net.v[str(d)]), pair):
                state = {_old_name(k): v for k, v in state.items()}
                module.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError, TypeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"{path} is not a hypernetwork t2i can use: {first}") from None
    return net.eval().requires_grad_(False)


def _old_name(key: str) -> str:
    """The first web UI hypernetworks named their two layers linear1, linear2."""
    return {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
            "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}.get(key, key)


def load_hypernetwork(path: str | Path) -> Hypernetwork:
    from t2i.checkpoints.safe_load import load_weights_object

    path = Path(path)
    return hypernetwork_from_data(load_weights_object(path), path)


# ----------------------------------------------------------------------------- in the UNet


class HypernetworkAttnProcessor:
    """Scaled dot-product attention (as diffusers' AttnProcessor2_0 computes it) whose keys and
    values come from the hypernetworks' transformed contexts."""

    def __init__(self, networks: list[tuple[Hypernetwork, float]]):
        self.networks = networks

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image = hidden_states.ndim == 4
        if image:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, length = context.shape[0], context.shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states)
        context_k = context_v = context
        for network, multiplier in self.networks:  # several apply one after the other, as in the web UI
            context_k, _ = network.contexts(context_k, multiplier)
            _, context_v = network.contexts(context_v, multiplier)
        key, value = attn.to_k(context_k), attn.to_v(context_v)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if image:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def context_widths(unet) -> list[int]:
    """The widths of what the UNet's attention layers compute keys from (self: the features'
    channels, cross: the text states') — the sizes a hypernetwork for it needs."""
    widths = set()
    for module in unet.modules():
        to_k = getattr(module, "to_k", None)
        if isinstance(to_k, nn.Linear) and hasattr(module, "heads"):
            widths.add(to_k.in_features)
    return sorted(widths)


@contextmanager
def applying_hypernetworks(unet, networks: list[tuple[Hypernetwork, float]]) -> Iterator[None]:
    """While inside, the UNet's attention runs through `networks` ((hypernetwork, multiplier)
    pairs); its own attention processors are restored on exit, also after an error."""
    if not networks:
        yield
        return
    param = next(unet.parameters())
    for network, _ in networks:
        network.to(param.device, param.dtype)
    before = unet.attn_processors
    unet.set_attn_processor({name: HypernetworkAttnProcessor(networks) for name in before})
    try:
        yield
    finally:
        unet.set_attn_processor(before)


# ----------------------------------------------------------------------------- prompts and folders


def hypernetwork_requests(prompt: str) -> list[tuple[str, float]]:
    """(name, multiplier) of each `<hypernet:name>` / `<hypernet:name:multiplier>` tag of a prompt."""
    from t2i.errors import ParamError
    from t2i.prompts import extract_extra_networks

    found = []
    for kind, name, args in extract_extra_networks(prompt)[1]:
        if kind.lower() != "hypernet":
            continue
        tag = f"<{kind}:{name}{''.join(':' + a for a in args)}>"
        if len(args) > 1:
            raise ParamError(f"{tag}: expected <hypernet:name> or <hypernet:name:multiplier>")
        try:
            found.append((name.strip(), float(args[0]) if args else 1.0))
        except ValueError:
            raise ParamError(f"{tag}: {args[0]!r} is not a number") from None
    return found


def find_hypernetwork(name: str, folders) -> Path:
    """`name`.pt in `folders` (subfolders too), or `name` as a path; ParamError saying where it looked."""
    from t2i.errors import ParamError

    path = Path(name).expanduser()
    if path.suffix.lower() in HYPERNETWORK_SUFFIXES and path.is_file():
        return path
    for folder in folders:
        folder = Path(folder)
        if (folder / f"{name}.pt").is_file():
            return folder / f"{name}.pt"
        if folder.is_dir():
            for candidate in sorted(folder.rglob(f"{name}.pt")):
                if candidate.is_file():
                    return candidate
    where = ", ".join(str(f) for f in folders) or "(no folders)"
    raise ParamError(f"hypernetwork {name!r} not found: looked for {name}.pt in {where}; put the file there or give "
                     f"its folder with --lora-dir")
