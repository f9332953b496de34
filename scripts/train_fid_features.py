"""Train the `shapes` feature network that t2i's FID uses and write it where t2i ships it.

    python scripts/train_fid_features.py                      # -> src/t2i/assets/fid_features/
    python scripts/train_fid_features.py --outdir /tmp/feat --steps 200   # a quick try

CPU only, one thread by default, deterministic for a given seed and thread count. The held-out
accuracy per attribute (shapes seed 999) is printed and stored in config.json under info.
See t2i.evaluate.features for the network and t2i.evaluate.fid for how its features are used.
"""
import argparse
import time
from pathlib import Path

import torch

from t2i.evaluate.features import FeatureNetConfig, FeatureTrainConfig, save_feature_net, train_feature_net

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "src" / "t2i" / "assets" / "fid_features"


def main() -> None:
    defaults = FeatureTrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--outdir", type=Path, default=DEFAULT_OUT, help="default: %(default)s")
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--train-size", type=int, default=defaults.train_size)
    p.add_argument("--heldout-size", type=int, default=defaults.heldout_size)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train = FeatureTrainConfig(seed=args.seed, train_size=args.train_size, heldout_size=args.heldout_size,
                               steps=args.steps, batch_size=args.batch_size)
    start, cpu_start = time.time(), time.process_time()
    net, info = train_feature_net(FeatureNetConfig(), train, log=lambda msg: print(msg, flush=True))
    info["wall_seconds"] = round(time.time() - start, 1)
    info["cpu_seconds"] = round(time.process_time() - cpu_start, 1)
    folder = save_feature_net(net, args.outdir, info)
    print(f"{info['params']} parameters, {info['wall_seconds']} s wall, {info['cpu_seconds']} s CPU -> {folder}")


if __name__ == "__main__":
    main()
