"""Two threads loading two different models at once, as the first thing a fresh process does (two
server workers' first jobs): both loads succeed, and the libraries' lazy classes are resolved once,
under a lock, before either load (pipelines/session_models.prepare_model_libraries).

A race inside diffusers' lazy imports does not show on every run, so this test cannot prove its
absence; it checks that concurrent first loads work and that the preparation ran before them."""
import os
import subprocess
import sys
import textwrap

import torch
from conftest import tiny_ldm_config

CHILD = textwrap.dedent("""
    import sys, threading
    assert "diffusers" not in sys.modules and "transformers" not in sys.modules  # a fresh process
    from t2i.pipelines import session_models
    from t2i.pipelines.load_settings import LoadSettings
    from t2i.pipelines.session import Session

    assert not session_models._libraries_ready
    session = Session(max_models=2)
    barrier = threading.Barrier(2)
    loaded, errors = {}, []

    def load(path):
        barrier.wait()
        try:
            loaded[path] = session.model(LoadSettings(model=path, device="cpu", precision="full")).loaded
        except Exception as err:
            errors.append(repr(err))

    threads = [threading.Thread(target=load, args=(p,)) for p in sys.argv[1:3]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(loaded) == 2 and len({id(m) for m in loaded.values()}) == 2
    assert session_models._libraries_ready
    import diffusers, transformers
    resolved = vars(diffusers) | vars(transformers)  # resolved lazy attributes are cached in the module
    assert all(name in resolved for name in session_models.DIFFUSERS_CLASSES + session_models.TRANSFORMERS_CLASSES)
    print("OK")
""")


def test_two_first_loads_at_once_in_a_fresh_process(tmp_path):
    from t2i.checkpoints.diffusers_folder import save_ldm_folder
    from t2i.models.ldm import LatentDiffusion

    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = tmp_path / f"model{seed}"
        save_ldm_folder(LatentDiffusion(tiny_ldm_config()), path)
        paths.append(str(path))
    done = subprocess.run([sys.executable, "-c", CHILD, *paths], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}, check=False)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stderr[-3000:]
