"""`t2i serve`: the web UI's REST API (/sdapi/v1) and t2i's job API on a persistent queue.

    t2i serve                                      # 127.0.0.1:7860, the bundled model, docs at /docs
    t2i serve --ckpt-dir ~/models/Stable-diffusion --lora-dir ~/models/Lora --queue-size 64
    t2i serve --host 0.0.0.0 --api-auth alice:secret   # any other address than loopback needs credentials

The configuration is checked (a public bind without credentials refused) before anything heavy
is imported, so a refusal answers at once.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

AUTH_ENV = "T2I_API_AUTH"


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def add_serve_commands(sub) -> None:
    from t2i.interfaces.api.config import Limits

    lim = Limits()
    p = sub.add_parser("serve", help="serve the web UI's REST API (/sdapi/v1) on a job queue",
                       description="Serve the Stable Diffusion web UI's REST API (/sdapi/v1: txt2img, img2img, "
                                   "extras, png-info, options, progress, ...) so its clients (webuiapi, Krita and "
                                   "Photoshop plugins, bots) work unchanged, on a persistent job queue with t2i's "
                                   "job API (/t2i/v1/jobs). API docs at /docs.")
    net = p.add_argument_group("network and security")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s); any other "
                     "than loopback needs --api-auth")
    net.add_argument("--port", type=int, default=7860, help="port (default: %(default)s; 0: any free port)")
    net.add_argument("--api-auth", metavar="USER:PASSWORD[,...]",
                     help=f"HTTP Basic credentials every request must carry (also from ${AUTH_ENV}, which keeps "
                          f"them out of the process list)")
    net.add_argument("--cors-allow-origins", metavar="ORIGIN[,...]",
                     help="web pages (origins) allowed to call the API from a browser (default: none)")
    net.add_argument("--cors-allow-origin-regex", metavar="REGEX", help="the same, as a regular expression")
    net.add_argument("--allowed-hosts", metavar="NAME[,...]",
                     help="Host header names answered (default: loopback names on a loopback bind, any otherwise)")
    files = p.add_argument_group("models and files")
    files.add_argument("--model", help="the model at start (default: the bundled one); switch with POST "
                       "/sdapi/v1/options {\"sd_model_checkpoint\": title}")
    for flag, help_text in (("--ckpt-dir", "Stable Diffusion checkpoints (.safetensors, .ckpt, diffusers folders)"),
                            ("--vae-dir", "VAEs for sd_vae"), ("--lora-dir", "LoRA files for <lora:name:w>"),
                            ("--embeddings-dir", "textual-inversion embeddings"),
                            ("--upscaler-dir", ("upscaler weights (ESRGAN, Real-ESRGAN, SwinIR, ...) for the extras "
                                                "and the hires fix, by file name")),
                            ("--sr-model-dir", "t2i super-resolution models for the extras")):
        files.add_argument(flag, action="append", type=Path, default=[],
                           help=f"folder of {help_text}; repeat for several. Only files found there can be chosen")
    files.add_argument("--face-restorer", help="GFPGAN/CodeFormer weights (a file, or its name in models/GFPGAN "
                       "or models/Codeformer) for restore_faces")
    files.add_argument("--safety-checker", metavar="DIR", help="the Stable Diffusion safety checker's folder: "
                       "flagged images are blacked out (default: off)")
    files.add_argument("--styles-file", type=Path, help="prompt styles CSV (default: ./styles.csv if present)")
    files.add_argument("--outdir", type=Path, default=Path("outputs"),
                       help="where images are saved (txt2img/, img2img/, extras/) (default: %(default)s)")
    files.add_argument("--queue-db", type=Path, help="the job queue's SQLite file (default: "
                       "OUTDIR/.t2i/queue.sqlite3, in a hidden folder that no route serves)")
    files.add_argument("--api-log", type=Path, help="also write the JSON log lines to this file")
    run = p.add_argument_group("queue and devices")
    run.add_argument("--device", help="device(s), comma-separated: one worker each, e.g. cuda:0,cuda:1 "
                     "(default: cuda if available, else cpu)")
    run.add_argument("--queue-size", type=int, default=64, help="jobs waiting before new ones get 429 "
                     "(default: %(default)s)")
    run.add_argument("--keep-results", type=int, default=1000, help="finished jobs whose answers are kept "
                     "(default: %(default)s)")
    run.add_argument("--precision", choices=("auto", "full"), default="auto")
    run.add_argument("--threads", type=int, help="CPU threads for torch")
    run.add_argument("--max-models", type=int, default=2, help="models each worker keeps loaded (default: %(default)s)")
    run.add_argument("--shutdown-grace", type=float, default=10.0, help="seconds a running job gets to finish on "
                     "SIGTERM before it is interrupted and queued again (default: %(default)s)")
    limits = p.add_argument_group("limits per request")
    limits.add_argument("--max-size", type=int, default=lim.max_size, help="width, height (default: %(default)s)")
    limits.add_argument("--min-size", type=int, default=lim.min_size, help="(default: %(default)s)")
    limits.add_argument("--max-steps", type=int, default=lim.max_steps, help="(default: %(default)s)")
    limits.add_argument("--max-images", type=int, default=lim.max_images, help="batch size x batch count "
                        "(default: %(default)s)")
    limits.add_argument("--max-script-images", type=int, default=lim.max_script_images,
                        help="images of a script run (default: %(default)s)")
    limits.add_argument("--max-prompt-chars", type=int, default=lim.max_prompt_chars, help="(default: %(default)s)")
    limits.add_argument("--max-upload-pixels", type=int, default=lim.max_upload_pixels,
                        help="pixels of an uploaded image (default: %(default)s = 4096x4096)")
    limits.add_argument("--max-upload-mb", type=float, default=lim.max_upload_bytes / 2**20,
                        help="MB of an uploaded image (default: %(default)s)")
    p.set_defaults(run=run_serve)


def config_from_args(args):
    from t2i.interfaces.api.config import Limits, ServeConfig, parse_auth

    limits = Limits(max_size=args.max_size, min_size=args.min_size, max_steps=args.max_steps,
                    max_images=args.max_images, max_script_images=args.max_script_images,
                    max_prompt_chars=args.max_prompt_chars, max_upload_pixels=args.max_upload_pixels,
                    max_upload_bytes=int(args.max_upload_mb * 2**20))
    return ServeConfig(
        host=args.host, port=args.port, api_auth=parse_auth(args.api_auth or os.environ.get(AUTH_ENV)),
        cors_allow_origins=_split(args.cors_allow_origins), cors_allow_origin_regex=args.cors_allow_origin_regex,
        allowed_hosts=_split(args.allowed_hosts), outdir=args.outdir, queue_db=args.queue_db,
        queue_size=args.queue_size, keep_results=args.keep_results, devices=_split(args.device) or (None,),
        model=args.model, ckpt_dirs=tuple(args.ckpt_dir), vae_dirs=tuple(args.vae_dir), lora_dirs=tuple(args.lora_dir),
        embedding_dirs=tuple(args.embeddings_dir), upscaler_dirs=tuple(args.upscaler_dir),
        sr_model_dirs=tuple(args.sr_model_dir), face_restorer=args.face_restorer, safety_checker=args.safety_checker,
        styles_file=args.styles_file, precision=args.precision, threads=args.threads, max_models=args.max_models,
        limits=limits, api_log=args.api_log, shutdown_grace_s=args.shutdown_grace)


def run_serve(args) -> None:
    config = config_from_args(args)
    config.check()  # before fastapi and torch load: a refused bind answers at once
    if config.model and not Path(config.model).exists():
        raise FileNotFoundError(f"--model {config.model} does not exist")
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    on_cpu = all(device == "cpu" or (device is None and not torch.cuda.is_available()) for device in config.devices)
    if on_cpu and getattr(args, "own_process", False):
        from t2i.cpu_allocator import reuse_freed_memory

        reuse_freed_memory()  # before the workers' threads start: they then share the main heap
    from t2i.interfaces.api.logs import setup_logging
    from t2i.interfaces.api.server import serve

    setup_logging(config.api_log)

    def ready(port: int) -> None:
        host = f"[{config.host}]" if ":" in config.host else config.host
        print(f"t2i serve: listening on http://{host}:{port} (API docs at /docs)", flush=True)

    serve(config, on_ready=ready)
    sys.stdout.flush()
