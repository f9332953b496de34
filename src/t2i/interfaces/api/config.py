"""What `t2i serve` was started with: typed, made once by the CLI (or a test), read everywhere.

Nothing here touches the network or torch, nor the disk but for `queue_path`'s look for an old
database; `ServeConfig.check()` says what is wrong with a configuration before the server starts
(a non-loopback bind without credentials first).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from t2i.errors import ConfigError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
QUEUE_DIR, QUEUE_NAME = ".t2i", "queue.sqlite3"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Every bound is configurable (`t2i serve --max-...`)."""

    max_size: int = 2048  # width, height and every size a run makes (hires fix, X/Y/Z axes)
    min_size: int = 64
    size_multiple: int = 8
    max_steps: int = 150
    max_images: int = 16  # batch_size x n_iter
    max_script_images: int = 64  # images a script run makes (X/Y/Z cells, matrix prompts, loops) x batch
    max_prompt_chars: int = 10_000
    max_upload_pixels: int = 4096 * 4096
    max_upload_bytes: int = 20 * 1024 * 1024  # decoded bytes of one uploaded image

    @property
    def max_body_bytes(self) -> int:
        """A request body: an image and its mask in base64 (4/3 of their bytes), plus the JSON."""
        return 2 * (self.max_upload_bytes * 4 // 3 + 4) + 1024 * 1024


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 7860
    api_auth: tuple[tuple[str, str], ...] = ()  # (user, password) pairs; empty: no authentication
    cors_allow_origins: tuple[str, ...] = ()  # empty: no CORS headers (browsers refuse cross-origin reads)
    cors_allow_origin_regex: str | None = None
    allowed_hosts: tuple[str, ...] = ()  # Host headers accepted; empty: loopback names on a loopback bind, else any
    outdir: Path = Path("outputs")
    queue_db: Path | None = None  # default: outdir / ".t2i" / "queue.sqlite3" (see queue_path)
    queue_size: int = 64  # jobs waiting (not running) before a submission answers 429
    keep_results: int = 1000  # finished jobs kept in the queue database (their answers), oldest out first
    devices: tuple[str | None, ...] = (None,)  # one worker per device; None: cuda if available, else cpu
    model: str | None = None  # the model at start (a path, or None for the bundled one)
    ckpt_dirs: tuple[Path, ...] = ()
    vae_dirs: tuple[Path, ...] = ()
    lora_dirs: tuple[Path, ...] = ()
    embedding_dirs: tuple[Path, ...] = ()
    upscaler_dirs: tuple[Path, ...] = ()  # upscaler weight files (ESRGAN, ...; spandrel), by file stem
    sr_model_dirs: tuple[Path, ...] = ()  # t2i super-resolution diffusion models, for the extras
    face_restorer: str | None = None  # restore_faces: a GFPGAN/CodeFormer file or its name (LoadSettings)
    safety_checker: str | None = None  # a folder with the safety checker (LoadSettings); off by default
    styles_file: Path | None = None
    precision: str = "auto"
    threads: int | None = None
    max_models: int = 2  # models each worker keeps loaded
    limits: Limits = field(default_factory=Limits)
    api_log: Path | None = None  # JSON lines, besides stderr
    shutdown_grace_s: float = 10.0  # a running job gets this long to finish on SIGTERM, then it is interrupted

    @property
    def queue_path(self) -> Path:
        """`queue_db`, or by default OUTDIR/.t2i/queue.sqlite3: a hidden folder that no route serves
        (the outputs route serves images in txt2img/, img2img/, extras/ only, and never a dot name).
        A database that an earlier version left at OUTDIR/queue.sqlite3 goes on being used, so its
        queued jobs and answers are not lost (this reads the disk: the one place config does)."""
        if self.queue_db is not None:
            return self.queue_db
        default, legacy = self.outdir / QUEUE_DIR / QUEUE_NAME, self.outdir / QUEUE_NAME
        return legacy if legacy.is_file() and not default.exists() else default

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.host)

    def host_names(self) -> tuple[str, ...] | None:
        """Host headers the server answers (None: any). A loopback server answers loopback names
        only, so a web page cannot reach it through DNS rebinding."""
        if self.allowed_hosts:
            return self.allowed_hosts
        return LOOPBACK_NAMES if self.is_loopback else None

    def check(self) -> None:
        """ConfigError for a configuration the server must not start with."""
        if not self.is_loopback and not self.api_auth:
            raise ConfigError(
                f"refusing to listen on {self.host}: any address other than 127.0.0.1 / localhost lets other "
                f"machines use this server, so it needs credentials: add --api-auth USER:PASSWORD (or bind "
                f"--host 127.0.0.1)")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0..65535, got {self.port}")
        if self.queue_size < 1:
            raise ConfigError(f"--queue-size must be at least 1, got {self.queue_size}")
        if self.keep_results < 1:
            raise ConfigError(f"--keep-results must be at least 1, got {self.keep_results}")
        if not self.devices:
            raise ConfigError("--device needs at least one device")
        for user, password in self.api_auth:
            if not user or not password:
                raise ConfigError("--api-auth takes USER:PASSWORD pairs, both non-empty, separated by commas")
        lim = self.limits
        if lim.min_size < 8 or lim.max_size < lim.min_size or lim.size_multiple < 1:
            raise ConfigError(f"size limits must satisfy 8 <= min ({lim.min_size}) <= max ({lim.max_size})")
        for name in ("max_steps", "max_images", "max_script_images", "max_prompt_chars", "max_upload_pixels",
                     "max_upload_bytes"):
            if getattr(lim, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_auth(text: str | None) -> tuple[tuple[str, str], ...]:
    """'alice:secret,bob:other' -> (("alice", "secret"), ("bob", "other")), as the web UI's --api-auth."""
    if not text:
        return ()
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise ConfigError("--api-auth takes USER:PASSWORD pairs separated by commas, e.g. alice:secret")
        pairs.append((user, password))
    return tuple(pairs)
