"""Many prompts, many processes (issue 16, item 5): `accelerate launch -m t2i.interfaces.cli generate
--from-file` with 2 CPU processes writes the same files, pixel for pixel and name for name, as one
process does."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from t2i.errors import ParamError
from t2i.interfaces.cli.processes import ProcessShare, image_numbers


def test_share_from_the_launchers_environment():
    assert ProcessShare.from_env({}) == ProcessShare(0, 1, 0, 1)
    share = ProcessShare.from_env({"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "3"})
    assert share.several and share.mine(7) == [1, 4]
    assert ProcessShare(2, 3).mine(2) == []  # more processes than prompts: nothing to do
    assert sorted(i for r in range(3) for i in ProcessShare(r, 3).mine(8)) == list(range(8))  # each prompt once
    for bad in ({"RANK": "2", "WORLD_SIZE": "2"}, {"WORLD_SIZE": "two"}):
        with pytest.raises(ParamError):
            ProcessShare.from_env(bad)
    assert list(image_numbers(10, 2, 3)) == [16, 17, 18]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_two_processes_write_what_one_process_writes(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n\na green triangle on a black background\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for folder in ("one", "two"):  # an image already there: numbering continues after it in both
        (tmp_path / folder).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / folder / "00004-1-old.png")
    common = ["generate", "--from-file", prompts, "--model", tiny_model_dir, "--seed", 7, "--steps", 2,
              "--batch-size", 2, "--grid", "--threads", 1]
    one = subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", *map(str, common), "--outdir",
                          str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(_free_port()), "-m", "t2i.interfaces.cli"]
    two = subprocess.run([*launch, *map(str, common), "--outdir", str(tmp_path / "two")], env=env,
                         capture_output=True, text=True, timeout=900)
    assert two.returncode == 0, two.stderr
    a, b = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len(a) == 1 + 3 * 3  # the old image, then per prompt 2 images and a grid
    assert list(a) == list(b)  # the same names: counters 00005.. in prompt order, grids included
    assert all(np.array_equal(a[name], b[name]) for name in a)
    assert sorted(two.stdout.split()) == sorted(str(tmp_path / "two" / n) for n in b if n != "00004-1-old.png")
    # the check can fail: the processes really did split the prompts (both loaded the model)
    assert two.stderr.count("model tiny") == 2
