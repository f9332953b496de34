"""A small feature network trained by t2i on `shapes`, for FID without downloads (t2i.evaluate.fid).

FID is defined over the features of a network that knows the images' domain. The reference one
(Inception v3 on ImageNet) needs pretrained weights, which t2i cannot fetch offline, so t2i trains
its own: a 4-block conv net classifying `shapes` scenes by everything the dataset draws,

    count (1 or 2 objects), background, colour and shape of the (first) object,
    single-object scenes: size and position; two-object scenes: relation, colour and shape of the second.

Heads a scene has no label for (size of a pair, relation of a single object) are left out of its
loss. The 128-d input of the heads (after a linear layer over the final 4x4 map, so it keeps
where things are) is the feature space of FID. The weights ship in assets/fid_features/ (float32
safetensors + config.json with the training settings and held-out accuracy); retrain them with
`python scripts/train_fid_features.py`.

    net = load_feature_net()                     # the shipped weights, loaded strictly
    feats = net.features(images)                 # (N, 3, 64, 64) in [0, 1] -> (N, 128)
    logits = net(images)                         # {"color": (N, 8), ...}
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from t2i.atomic import atomic_path, write_json
from t2i.checkpoints.safe_load import check_tensor_kinds, load_state_dict_file, misfit_is_load_error
from t2i.config import from_dict
from t2i.data.shapes import COLORS, POSITIONS, RELATIONS, SHAPES, SIZES, Scene, ShapesDataset, draw_scene

RESOLUTION = 64
IGNORE = -1  # label of a head that does not apply to a scene


def _default_heads() -> dict[str, tuple[str, ...]]:
    return {
        "count": ("one", "two"),
        "background": COLORS,
        "color": COLORS,
        "shape": SHAPES,
        "size": tuple(SIZES),
        "position": tuple(POSITIONS),
        "relation": RELATIONS,
        "color_b": COLORS,
        "shape_b": SHAPES,
    }


@dataclass
class FeatureNetConfig:
    widths: tuple[int, ...] = (32, 64, 96, 96)  # one stride-2 3x3 conv per width: 64 -> 32 -> 16 -> 8 -> 4
    feature_dim: int = 128  # the FID feature space
    groups: int = 8  # GroupNorm groups: features of an image do not depend on its batch
    heads: dict[str, tuple[str, ...]] = field(default_factory=_default_heads)


@dataclass
class FeatureTrainConfig:
    seed: int = 0
    train_size: int = 10_000  # shapes seed `data_seed`, indices 0..train_size-1
    data_seed: int = 0  # the training seed of t2i's models: FID's real sets use held-out seed 999
    heldout_size: int = 2_000  # shapes seed 999: accuracy is measured on scenes never trained on
    heldout_seed: int = 999
    steps: int = 800  # ~2 CPU-minutes at 1 thread; held-out accuracy in the shipped config.json
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4


def scene_labels(scene: Scene, heads: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """The class index of every head for one scene (IGNORE where the head does not apply)."""
    first = scene.objects[0]
    values = {"count": "one" if len(scene.objects) == 1 else "two", "background": scene.background,
              "color": first.color, "shape": first.shape, "size": scene.size, "position": scene.position,
              "relation": scene.relation}
    if len(scene.objects) == 2:
        values["color_b"], values["shape_b"] = scene.objects[1].color, scene.objects[1].shape
    return {name: classes.index(values[name]) if values.get(name) is not None else IGNORE
            for name, classes in heads.items()}


class FeatureNet(nn.Module):
    """conv(3x3, stride 2) + GroupNorm + ReLU per width, then a linear map of the flattened 4x4
    map to `feature_dim` features, then one linear head per attribute."""

    def __init__(self, config: FeatureNetConfig):
        super().__init__()
        self.config = config
        blocks, c_in = [], 3
        for width in config.widths:
            blocks += [nn.Conv2d(c_in, width, 3, stride=2, padding=1), nn.GroupNorm(config.groups, width), nn.ReLU()]
            c_in = width
        self.trunk = nn.Sequential(*blocks)
        side = RESOLUTION // 2 ** len(config.widths)
        self.embed = nn.Linear(c_in * side * side, config.feature_dim)
        self.heads = nn.ModuleDict({name: nn.Linear(config.feature_dim, len(classes))
                                    for name, classes in config.heads.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) in [0, 1] -> (B, feature_dim)."""
        if images.shape[1:] != (3, RESOLUTION, RESOLUTION):
            raise ValueError(f"the feature net takes (B, 3, {RESOLUTION}, {RESOLUTION}) images, got "
                             f"{tuple(images.shape)}; resize first (t2i.evaluate.fid.image_features does)")
        h = self.trunk(images * 2 - 1)  # (B, C, 4, 4)
        return self.embed(h.flatten(1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(images)
        return {name: head(feats) for name, head in self.heads.items()}


# -- weights on disk ------------------------------------------------------------------------------

def shipped_weights_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("t2i") / "assets" / "fid_features"))


def save_feature_net(net: FeatureNet, folder: str | Path, info: dict | None = None) -> Path:
    """config.json (architecture + `info`, e.g. training settings and accuracy) and model.safetensors."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"t2i_family": "fid_features"})
    config = {"architecture": asdict(net.config), "info": info or {}}
    write_json(folder / "config.json", config, indent=1)
    return folder


def load_feature_net(folder: str | Path | None = None, device: str | torch.device = "cpu") -> FeatureNet:
    """The feature net of `folder` (default: the shipped one), loaded strictly, in eval mode."""
    folder = Path(folder) if folder is not None else shipped_weights_dir()
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    if not (config_path.is_file() and weights_path.is_file()):
        raise FileNotFoundError(f"{folder} holds no feature net (config.json + model.safetensors); "
                                f"train one with `python scripts/train_fid_features.py --outdir {folder}`")
    with misfit_is_load_error(config_path, "a feature net config"):
        architecture = dict(json.loads(config_path.read_text())["architecture"])
        if isinstance(architecture.get("heads"), dict):  # JSON has lists where the config has tuples
            architecture["heads"] = {name: tuple(classes) for name, classes in architecture["heads"].items()}
        config = from_dict(FeatureNetConfig, architecture, str(config_path))
        net = FeatureNet(config)
    state = load_state_dict_file(weights_path)
    check_tensor_kinds(net.state_dict(), state, weights_path, "the feature net of its config.json")
    with misfit_is_load_error(weights_path, "the feature net of its config.json"):
        net.load_state_dict(state, strict=True)
    return net.to(device).eval().requires_grad_(False)


# -- training -------------------------------------------------------------------------------------

def render_labelled(size: int, seed: int, heads: dict[str, tuple[str, ...]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`size` shapes images (N, 3, 64, 64) uint8 and their labels per head."""
    import numpy as np

    dataset = ShapesDataset(length=size, seed=seed, resolution=RESOLUTION)
    images, labels = [], {name: [] for name in heads}
    for i in range(size):
        scene = dataset.scene(i)
        images.append(np.asarray(draw_scene(scene, RESOLUTION)))
        for name, value in scene_labels(scene, heads).items():
            labels[name].append(value)
    return (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
            {name: torch.tensor(values) for name, values in labels.items()})


def multi_head_loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over heads of the cross-entropy over the scenes the head applies to."""
    total = 0.0
    for name, head_logits in logits.items():
        target = labels[name]
        if (target != IGNORE).any():
            total = total + F.cross_entropy(head_logits, target, ignore_index=IGNORE)
    return total


@torch.no_grad()
def head_accuracy(net: FeatureNet, images_uint8: torch.Tensor, labels: dict[str, torch.Tensor],
                  batch_size: int = 500) -> dict[str, float]:
    """Per-head accuracy over the scenes each head applies to, plus `all`: every head of a scene right."""
    net.eval()
    correct = {name: 0 for name in labels}
    counts = {name: int((target != IGNORE).sum()) for name, target in labels.items()}
    all_right = torch.ones(len(images_uint8), dtype=torch.bool)
    for i in range(0, len(images_uint8), batch_size):
        logits = net(images_uint8[i:i + batch_size].float() / 255)
        for name, head_logits in logits.items():
            target = labels[name][i:i + batch_size]
            hit = head_logits.argmax(1) == target
            applies = target != IGNORE
            correct[name] += int((hit & applies).sum())
            all_right[i:i + batch_size] &= hit | ~applies
    scores = {name: correct[name] / counts[name] for name in labels if counts[name]}
    scores["all"] = float(all_right.float().mean())
    return scores


def train_feature_net(net_config: FeatureNetConfig | None = None, train: FeatureTrainConfig | None = None,
                      log=print) -> tuple[FeatureNet, dict]:
    """Train a FeatureNet on CPU (deterministic given `train.seed` at a fixed thread count);
    returns it and an info dict with the settings and held-out accuracy per head."""
    net_config, train = net_config or FeatureNetConfig(), train or FeatureTrainConfig()
    images, labels = render_labelled(train.train_size, train.data_seed, net_config.heads)
    heldout_images, heldout_labels = render_labelled(train.heldout_size, train.heldout_seed, net_config.heads)
    log(f"rendered {train.train_size} training and {train.heldout_size} held-out scenes")

    torch.manual_seed(train.seed)
    net = FeatureNet(net_config)
    opt = torch.optim.AdamW(net.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    warmup = max(1, train.steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to zero
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, train.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    order = torch.Generator().manual_seed(train.seed)
    perm, cursor = torch.randperm(len(images), generator=order), 0
    net.train()
    for step in range(train.steps):
        if cursor + train.batch_size > len(perm):
            perm, cursor = torch.randperm(len(images), generator=order), 0
        idx = perm[cursor:cursor + train.batch_size]
        cursor += train.batch_size
        loss = multi_head_loss(net(images[idx].float() / 255), {k: v[idx] for k, v in labels.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == train.steps - 1:
            log(f"step {step:>5}  loss {loss.item():.4f}")
    accuracy = head_accuracy(net, heldout_images, heldout_labels)
    log("held-out accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in accuracy.items()))
    info = {"train": asdict(train), "heldout_accuracy": {k: round(v, 4) for k, v in accuracy.items()},
            "params": sum(p.numel() for p in net.parameters()), "torch_threads": torch.get_num_threads()}
    return net.eval().requires_grad_(False), info
