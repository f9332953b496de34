"""LoRA files: read the kohya / web-UI and diffusers / peft formats, find each layer's module in a
model, merge them into its weights (and restore them exactly), and write the kohya format.

A LoRA layer adds a low-rank product to one weight (Hu et al. 2021, "LoRA: Low-Rank Adaptation
of Large Language Models"):

    W' = W + multiplier · (alpha / rank) · up @ down      # down (rank, in[, kh, kw]), up (out, rank[, 1, 1])

Names in files, for the module `down_blocks.1.attentions.0.proj_in` of the UNet:

| format                          | tensors                                                                 |
|---------------------------------|-------------------------------------------------------------------------|
| kohya, diffusers-layout UNet    | `lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight`, `.lora_up.weight`, `.alpha` |
| kohya, original (web-UI) layout | `lora_unet_input_blocks_4_1_proj_in.lora_down.weight`, ...              |
| diffusers / peft                | `unet.down_blocks.1.attentions.0.proj_in.lora_A.weight`, `.lora_B.weight` (alpha in the header's `lora_adapter_metadata`, else = rank) |
| older diffusers                 | `unet.<module>.lora.down.weight`, attention processors `...attn1.processor.to_q_lora.down.weight` |
Text encoders: `lora_te_text_model_encoder_layers_0_self_attn_q_proj` (SDXL: `lora_te1_`, `lora_te2_`),
or `text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight` (`text_encoder_2.`);
the web UI's OpenCLIP names (SD 2.x, SDXL's second encoder) are read too:
`lora_te_model_transformer_resblocks_0_attn_q_proj`, `..._attn_out_proj`, `..._mlp_c_fc`, `..._mlp_c_proj`.
LyCORIS layers (LoHa, LoKr, LoCon with a Tucker middle, full differences) under kohya names are
read by lycoris.py; a tensor kind t2i does not know is an error, never a silent partial load.

kohya names flatten module paths with `_`, which is ambiguous to split (`to_q`, `proj_in`), so
they are looked up in an index of every linear and convolution module of the model under all
the names a file may use; the original-layout names come from t2i.checkpoints.convert.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from t2i.checkpoints.convert import text_name, unet_target
from t2i.checkpoints.detect import UNET_PREFIX
from t2i.checkpoints.diffusers_folder import ModelLoadError
from t2i.checkpoints.safe_load import load_state_dict_file, read_safetensors_header, sniff_format
from t2i.extra_networks.lycoris import KINDS_HELP, AlphaScaled, LYCORIS_PARTS, lycoris_layer

log = logging.getLogger("t2i")

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
_KOHYA_PREFIXES = (("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"),
                   ("lora_te_", "text_encoder"))
_KOHYA_PARTS = ((".lora_down.weight", "down"), (".lora_up.weight", "up"), (".alpha", "alpha")) + LYCORIS_PARTS
_DIFFUSERS_PARTS = ((".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora.down.weight", "down"),
                    (".lora.up.weight", "up"), (".lora_linear_layer.down.weight", "down"),
                    (".lora_linear_layer.up.weight", "up"), (".alpha", "alpha"))
_ATTN_PROCESSOR = re.compile(r"^(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
# Variants whose math t2i does not implement: applying their other tensors alone would be silently wrong.
_UNSUPPORTED = {"dora_scale": "DoRA", "lora_magnitude_vector": "DoRA", "oft_": "OFT", "ia3_l": "IA3"}


@dataclass
class LoraLayer(AlphaScaled):
    """One weight's low-rank update."""

    down: Tensor  # (rank, in) or (rank, in, kh, kw)
    up: Tensor  # (out, rank) or (out, rank, 1, 1)
    alpha: float | None = None  # None: alpha = rank (scale 1), as diffusers and kohya assume

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


    def shape_text(self) -> str:
        return f"up {tuple(self.up.shape)} / down {tuple(self.down.shape)}"

    def fits(self, weight: Tensor) -> bool:
        """Whether up @ down has `weight`'s output rows and input size (any 1x1 or linear layout)."""
        up, down = self.up.reshape(self.up.shape[0], -1), self.down.reshape(self.rank, -1)
        return up.shape[1] == self.rank and up.shape[0] == weight.shape[0] and down.shape[1] == weight[0].numel()

    def delta(self, weight: Tensor) -> Tensor:
        """scale · up @ down in float32 on `weight`'s device, shaped like `weight`."""
        up = self.up.to(weight.device, torch.float32).reshape(self.up.shape[0], -1)  # (out, rank)
        down = self.down.to(weight.device, torch.float32).reshape(self.rank, -1)  # (rank, in · kh · kw)
        return (up @ down).reshape(weight.shape) * self.scale


@dataclass
class LoraFile:
    """The layers of one file, keyed (component, name as the file spells it)."""

    path: Path
    layers: dict[tuple[str, str], LoraLayer]
    ignored: list[str] = field(default_factory=list)  # tensors that are no LoRA layer t2i knows

    def __len__(self) -> int:
        return len(self.layers)


# ----------------------------------------------------------------------------- reading


def read_lora(path: str | Path) -> LoraFile:
    """A LoRA file in either format, read safely (t2i.checkpoints.safe_load); ModelLoadError,
    naming the file, for anything that is not a complete LoRA or LyCORIS file t2i can apply."""
    path = Path(path)
    state = load_state_dict_file(path)
    metadata = read_safetensors_header(path)[1] if sniff_format(path) == "safetensors" else {}
    for key in state:
        for marker, what in _UNSUPPORTED.items():
            if marker in key:
                raise ModelLoadError(f"{path} is a {what} file (tensor {key!r}); t2i applies plain LoRA files "
                                     f"(lora_down/lora_up or lora_A/lora_B tensors) only")
    parts: dict[tuple[str, str], dict[str, Tensor]] = {}
    ignored = []
    for key, tensor in state.items():
        found = _kohya_key(key) or _diffusers_key(key)
        if found is None:
            ignored.append(key)
            continue
        component, name, part = found
        parts.setdefault((component, name), {})[part] = tensor
    if not parts:
        raise ModelLoadError(f"{path} is not a LoRA file: no lora_down/lora_up or lora_A/lora_B tensors "
                             f"(it holds e.g. {', '.join(sorted(state)[:3])})")
    unknown = [key for key in ignored if key.startswith(tuple(prefix for prefix, _ in _KOHYA_PREFIXES))]
    if unknown:  # a layer kind t2i cannot apply: merging the rest would be a silently different network
        kinds = sorted({key.partition(".")[2] or key for key in unknown})
        raise ModelLoadError(f"{path} holds LoRA tensors of a kind t2i does not know ({', '.join(kinds[:5])}; e.g. "
                             f"{unknown[0]!r}); t2i reads {KINDS_HELP}")
    peft_alpha = _peft_alphas(metadata, path)
    layers = {}
    for (component, name), found in parts.items():
        if not set(found) <= {"down", "up", "alpha"}:  # LyCORIS kinds (lycoris.py)
            alpha = _alpha(found, path, name) if "alpha" in found else None
            layers[(component, name)] = lycoris_layer(path, name, found, alpha)
            continue
        if "down" not in found or "up" not in found:
            missing = "up" if "down" in found else "down"
            raise ModelLoadError(f"{path} is incomplete: LoRA layer {name!r} has no {missing} weight")
        if found["down"].ndim < 2:
            raise ModelLoadError(f"{path}: LoRA layer {name!r} has a down weight of shape {tuple(found['down'].shape)}")
        alpha = _alpha(found, path, name) if "alpha" in found else peft_alpha(component, name, int(found["down"].shape[0]))
        layers[(component, name)] = LoraLayer(found["down"], found["up"], alpha)
    return LoraFile(path, layers, ignored)


def _alpha(found: dict[str, Tensor], path: Path, name: str) -> float:
    """A layer's alpha tensor as a number: one finite value."""
    value = found["alpha"]
    if value.numel() != 1 or value.is_complex() or not torch.isfinite(value.float()).all():
        raise ModelLoadError(f"{path}: LoRA layer {name!r} has an alpha of shape {tuple(value.shape)} "
                             f"and dtype {value.dtype}; alpha is one finite number")
    return float(value)


def _kohya_key(key: str) -> tuple[str, str, str] | None:
    for suffix, part in _KOHYA_PARTS:
        if key.endswith(suffix):
            base = key[: -len(suffix)]
            for prefix, component in _KOHYA_PREFIXES:
                if base.startswith(prefix):
                    return component, base[len(prefix):], part
    return None


def _diffusers_key(key: str) -> tuple[str, str, str] | None:
    key = key.removeprefix("base_model.model.")
    processor = _ATTN_PROCESSOR.match(key)
    if processor:  # diffusers' old attention-processor files: bare UNet names
        module, proj, part = processor.groups()
        return "unet", f"{module}.{'to_out.0' if proj == 'to_out' else proj}", part
    for suffix, part in _DIFFUSERS_PARTS:
        if key.endswith(suffix):
            module = key[: -len(suffix)]
            head, _, rest = module.partition(".")
            if head in COMPONENTS and rest:
                return head, text_name(rest) if head != "unet" else rest, part
            if module.startswith("text_model."):
                return "text_encoder", text_name(module), part
            if head in ("down_blocks", "mid_block", "up_blocks", "conv_in", "conv_out", "time_embedding"):
                return "unet", module, part
    return None


_MODULE_NAME = re.compile(r"[\w.]{1,300}")


def _peft_alphas(metadata: dict[str, str], path: Path):
    """alpha(component, module name, rank) from diffusers' `lora_adapter_metadata` header entry
    (peft's LoraConfig per component: lora_alpha, alpha_pattern, use_rslora); without it alpha
    equals the rank, as diffusers assumes."""
    raw = metadata.get("lora_adapter_metadata")
    config = {}
    if raw:
        try:
            config = json.loads(raw)
        except (ValueError, RecursionError) as err:  # RecursionError: JSON nested thousands deep
            raise ModelLoadError(f"{path}: its lora_adapter_metadata is not valid JSON ({err})") from err
        if not isinstance(config, dict):
            raise ModelLoadError(f"{path}: its lora_adapter_metadata is not a JSON object; the file is damaged")

    def number(key: str, value) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ModelLoadError(f"{path}: lora_adapter_metadata's {key} is {value!r}, not a number")
        return float(value)

    def alpha(component: str, name: str, rank: int) -> float | None:
        base = number(f"{component}.lora_alpha", config.get(f"{component}.lora_alpha"))
        patterns = config.get(f"{component}.alpha_pattern") or {}
        if not isinstance(patterns, dict):
            raise ModelLoadError(f"{path}: lora_adapter_metadata's {component}.alpha_pattern is not a JSON object")
        for pattern, value in patterns.items():
            # peft treats a pattern as a regular expression matched against the module name's end;
            # the files diffusers writes hold module names, which are matched here literally (a
            # regular expression from a file could take exponential time: a hostile file's hang)
            if not _MODULE_NAME.fullmatch(pattern):
                raise ModelLoadError(f"{path}: alpha_pattern entry {pattern[:80]!r} is not a module name; t2i "
                                     f"reads alpha_pattern entries that name modules (letters, digits, _ and .)")
            if name == pattern or name.endswith("." + pattern):
                base = number(f"alpha_pattern[{pattern!r}]", value)
                break
        if base is None:
            return None
        if config.get(f"{component}.use_rslora"):
            return base * math.sqrt(rank)  # rsLoRA scales by alpha / sqrt(rank)
        return base
    return alpha


# ----------------------------------------------------------------------------- model index


def _lora_modules(module: nn.Module):
    return ((name, m) for name, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def original_unet_name(name: str, unet_config: Mapping) -> str | None:
    """`down_blocks.1.attentions.0.proj_in` -> `input_blocks.4.1.proj_in` (original layout), or
    None where the UNet's config has no original layout."""
    try:
        key = unet_target(name + ".weight", dict(unet_config)).key
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    return key[len(UNET_PREFIX): -len(".weight")]


_OPEN_CLIP_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(self_attn\.[qkv]_proj|self_attn\.out_proj|mlp\.fc1|mlp\.fc2)$")
_OPEN_CLIP_PARTS = {"mlp.fc1": "mlp_c_fc", "mlp.fc2": "mlp_c_proj"}


def open_clip_lora_name(name: str) -> str | None:
    """The web UI's OpenCLIP name of a CLIP text-encoder module, as some SD 2.x / SDXL LoRA files
    spell it: `encoder.layers.3.self_attn.q_proj` -> `model_transformer_resblocks_3_attn_q_proj`,
    `encoder.layers.3.mlp.fc1` -> `model_transformer_resblocks_3_mlp_c_fc` (fc2: `mlp_c_proj`);
    None for modules without one. (OpenCLIP fuses q, k and v into one in-projection; the web UI
    names their LoRA layers `attn_q_proj`, `attn_k_proj`, `attn_v_proj`.)"""
    match = _OPEN_CLIP_LAYER.match(name)
    if match is None:
        return None
    layer, part = match.groups()
    part = _OPEN_CLIP_PARTS.get(part) or part.replace("self_attn.", "attn_")
    return f"model_transformer_resblocks_{layer}_{part}"


class LoraTargets:
    """Every LoRA-able module of a model (linear and convolution layers of the UNet and text
    encoders) under each name a file may use: kohya flat names in both UNet layouts, dotted
    diffusers names."""

    def __init__(self, model):
        self.modules: dict[tuple[str, str], tuple[str, nn.Module]] = {}
        for component in COMPONENTS:
            part = getattr(model, component, None)
            if part is None:
                continue
            config = getattr(part, "config", None) if component == "unet" else None
            for name, module in _lora_modules(part):
                for key in self._keys(component, name, config):
                    self.modules.setdefault((component, key), (name, module))

    @staticmethod
    def _keys(component: str, name: str, unet_config) -> list[str]:
        if component != "unet":
            short = text_name(name)
            keys = [short, "text_model_" + short.replace(".", "_")]
            open_clip = open_clip_lora_name(short)
            return keys + [open_clip] if open_clip else keys
        keys = [name, name.replace(".", "_")]
        original = original_unet_name(name, unet_config) if unet_config is not None else None
        if original:
            keys.append(original.replace(".", "_"))
        return keys

    def find(self, component: str, name: str) -> tuple[str, nn.Module] | None:
        return self.modules.get((component, name))


# ----------------------------------------------------------------------------- merging


def merge_loras(targets: LoraTargets, loras: list[tuple[LoraFile, float, float]]) -> list[tuple[Tensor, Tensor]]:
    """Add each (file, text-encoder multiplier, UNet multiplier) into the weights; return
    (weight, original copy) pairs for `restore_weights`. Nothing changes when a file does not fit:
    every shape is checked first."""
    plan: dict[int, tuple[nn.Module, list[tuple[LoraLayer, float]]]] = {}
    for lora, te_multiplier, unet_multiplier in loras:
        unmatched = []
        for (component, name), layer in lora.layers.items():
            found = targets.find(component, name)
            if found is None:
                unmatched.append(name)
                continue
            module_name, module = found
            bias = getattr(layer, "bias", None)  # a full difference's diff_b
            if not layer.fits(module.weight) or (bias is not None and (
                    module.bias is None or bias.numel() != module.bias.numel())):
                raise ModelLoadError(f"{lora.path}: LoRA layer {name!r} has shape {layer.shape_text()}, which does not "
                                     f"fit {component} {module_name} {tuple(module.weight.shape)}; the LoRA was made "
                                     f"for another model family")
            multiplier = unet_multiplier if component == "unet" else te_multiplier
            plan.setdefault(id(module), (module, []))[1].append((layer, multiplier))
        if len(unmatched) == len(lora.layers):
            raise ModelLoadError(f"{lora.path}: none of its {len(lora.layers)} LoRA layers matches a module of this "
                                 f"model (e.g. {unmatched[0]!r}); it was made for another model family")
        if unmatched or lora.ignored:
            log.warning("%s: %d of %d LoRA layers match no module of this model and %d other tensors are not LoRA "
                        "layers; ignored (e.g. %s)", lora.path.name, len(unmatched), len(lora.layers),
                        len(lora.ignored), ", ".join((unmatched + lora.ignored)[:3]))
    backups = []
    try:
        with torch.no_grad():
            for module, contributions in plan.values():
                weight = module.weight
                total = sum(multiplier * layer.delta(weight) for layer, multiplier in contributions)
                backups.append((weight, weight.detach().clone()))
                weight.copy_((weight.float() + total).to(weight.dtype))
                biases = [(layer.bias, multiplier) for layer, multiplier in contributions
                          if getattr(layer, "bias", None) is not None]
                if biases:
                    bias = module.bias
                    backups.append((bias, bias.detach().clone()))
                    shift = sum(m * b.to(bias.device, torch.float32).reshape(bias.shape) for b, m in biases)
                    bias.copy_((bias.float() + shift).to(bias.dtype))
    except BaseException:  # out of memory, interrupted: never leave a half-merged model
        restore_weights(backups)
        raise
    return backups


def restore_weights(backups: list[tuple[Tensor, Tensor]]) -> None:
    """Put back the exact original weights saved by `merge_loras` (no subtraction, no drift)."""
    with torch.no_grad():
        for weight, original in reversed(backups):
            weight.copy_(original)


# ----------------------------------------------------------------------------- kohya export


def kohya_name(component: str, module: str, *, family: str = "sd1", unet_config: Mapping | None = None,
               unet_layout: str = "diffusers") -> str:
    """The kohya name of a diffusers module: `lora_unet_down_blocks_0_..._to_q`, with
    unet_layout="original" `lora_unet_input_blocks_1_1_..._to_q`; text encoders
    `lora_te_text_model_encoder_layers_0_self_attn_q_proj` (SDXL: `lora_te1_`, `lora_te2_`)."""
    if component == "unet":
        if unet_layout == "original":
            if unet_config is None:
                raise ValueError("kohya names in the original UNet layout need the UNet's config")
            original = original_unet_name(module, unet_config)
            if original is None:
                raise ValueError(f"UNet module {module!r} has no name in the original layout")
            module = original
        elif unet_layout != "diffusers":
            raise ValueError(f"unet_layout must be 'diffusers' or 'original', got {unet_layout!r}")
        return "lora_unet_" + module.replace(".", "_")
    if component not in ("text_encoder", "text_encoder_2"):
        raise ValueError(f"component must be one of {COMPONENTS}, got {component!r}")
    if component == "text_encoder_2" and family != "sdxl":
        raise ValueError("text_encoder_2 LoRA layers need family='sdxl'")
    prefix = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}[component] if family == "sdxl" else "lora_te_"
    return prefix + "text_model_" + text_name(module).replace(".", "_")


def kohya_state_dict(layers: Mapping[str, tuple], *, alpha: float | None = None, family: str = "sd1",
                     unet_config: Mapping | None = None, unet_layout: str = "diffusers",
                     dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """{kohya name: tensor} from {"<component>.<module>": (down, up) or (down, up, alpha)}, e.g.
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" or
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj". Each layer's alpha (its own, else
    `alpha`, else its rank) is stored, so that the trained scale alpha / rank survives."""
    out: dict[str, Tensor] = {}
    for key, value in layers.items():
        component, _, module = key.partition(".")
        down, up, *rest = value
        layer_alpha = rest[0] if rest and rest[0] is not None else alpha
        if down.shape[0] != up.shape[1]:
            raise ValueError(f"{key}: down {tuple(down.shape)} and up {tuple(up.shape)} disagree on the rank")
        name = kohya_name(component, module, family=family, unet_config=unet_config, unet_layout=unet_layout)
        if name + ".lora_down.weight" in out:
            raise ValueError(f"{key} maps onto {name} twice")
        cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
        out[name + ".lora_down.weight"] = cast(down.detach()).contiguous().cpu()
        out[name + ".lora_up.weight"] = cast(up.detach()).contiguous().cpu()
        out[name + ".alpha"] = torch.tensor(float(layer_alpha if layer_alpha is not None else down.shape[0]))
    return out


def save_kohya_lora(path: str | Path, layers: Mapping[str, tuple], *, alpha: float | None = None,
                    family: str = "sd1", unet_config: Mapping | None = None, unet_layout: str = "diffusers",
                    dtype: torch.dtype | None = None, metadata: Mapping[str, str] | None = None) -> Path:
    """Write a kohya-format `.safetensors` LoRA (the web UI, ComfyUI and diffusers read it),
    atomically. `layers` and naming as in `kohya_state_dict`; the UNet's diffusers layout is
    what kohya's own trainer writes for SD 1.x/2.x and what diffusers reads most reliably."""
    from safetensors.torch import save_file

    from t2i.atomic import atomic_path

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: LoRA exports are written as .safetensors")
    state = kohya_state_dict(layers, alpha=alpha, family=family, unet_config=unet_config, unet_layout=unet_layout,
                             dtype=dtype)
    ranks = sorted({int(t.shape[0]) for k, t in state.items() if k.endswith(".lora_down.weight")})
    alphas = sorted({float(t) for k, t in state.items() if k.endswith(".alpha")})
    info = {"format": "pt", "ss_network_module": "networks.lora", "ss_network_dim": str(ranks[-1]) if ranks else "",
            "ss_network_alpha": f"{alphas[-1]:g}" if alphas else "",
            "ss_base_model_version": {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}.get(family, family),
            **(metadata or {})}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={str(k): str(v) for k, v in info.items()})
    return path
