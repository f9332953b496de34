"""Upscaler files in tiles: how far the blended tiles are from running the whole image at once.

Random-weight models of three architectures spandrel recognises (as tests/test_model_upscalers.py
builds them); a 56x48 image upscaled x2 whole and in 24-px tiles, without and with an 8-px blended
overlap; mean / max absolute difference of the [0, 1] outputs.

    python benchmarks/upscaler_tiling.py
"""
from __future__ import annotations

import numpy as np
import torch


def main() -> None:
    torch.set_num_threads(1)
    from t2i.checkpoints.image_models import import_spandrel, registry
    from t2i.pipelines.model_upscalers import run_tiled

    import_spandrel()
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    nets = {"ESRGAN": ESRGAN(num_filters=8, num_blocks=1, scale=2),
            "Real-ESRGAN Compact": Compact(num_feat=8, num_conv=2, upscale=2),
            "SwinIR": SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
                             upsampler="pixelshuffledirect", mlp_ratio=2.0)}
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (48, 56, 3)).astype(np.float32) / 255).permute(2, 0, 1)[None]
    print(f"{'architecture':<22}{'no overlap (mean / max)':>26}{'overlap 8 (mean / max)':>26}")
    for name, net in nets.items():
        model = registry().load(net.state_dict())
        whole = model(x)
        cells = []
        for overlap in (0, 8):
            diff = (run_tiled(model, x, 2, 24, overlap) - whole).abs()
            cells.append(f"{diff.mean():.5f} / {diff.max():.4f}")
        print(f"{name:<22}{cells[0]:>26}{cells[1]:>26}")


if __name__ == "__main__":
    main()
