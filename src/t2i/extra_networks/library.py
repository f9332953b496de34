"""Where a loaded model's extra networks come from, and their use for one generation.

`ExtraNetworks` (one per LoadedModel, `loaded.extra_networks`) holds the folders searched for
LoRA files and textual-inversion embeddings, the separate VAE's name and hash, and caches of
parsed files and hashes. `activate_extra_networks(loaded, params)` wraps one generation: it
merges the LoRAs that the prompt's `<lora:name:weight>` tags and `params.loras` ask for into the
weights, finds the embeddings the prompts name, and restores the exact original weights on exit,
even after an error. Infotexts record what was used as the web UI does:
`Lora hashes: "name: 0123456789ab"`, `TI hashes: "name: 0123456789ab"`.

    with activate_extra_networks(loaded, params) as active:
        encoder = PromptEncoder.from_model(loaded.model, embeddings=active.embeddings)
        ...   # sample
"""
from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from t2i.checkpoints.registry import file_hash
from t2i.checkpoints.safe_load import sniff_format
from t2i.errors import ParamError
from t2i.extra_networks import DEFAULT_EMBEDDING_DIRS, DEFAULT_HYPERNETWORK_DIRS, DEFAULT_LORA_DIRS
from t2i.extra_networks.embeddings import EMBEDDING_SUFFIXES, Embedding, load_embedding
from t2i.extra_networks.lora import LORA_SUFFIXES, LoraFile, LoraTargets, merge_loras, read_lora, restore_weights
from t2i.extra_networks.vae import vae_state_dict, vae_weights_file
from t2i.prompts import extract_extra_networks

log = logging.getLogger("t2i")

LORAS_IN_MEMORY = 8  # parsed LoRA files kept for the next generation


@dataclass(frozen=True)
class LoraRequest:
    """One LoRA for one generation: a name (file stem in the LoRA folders) or a path, and the
    multipliers of its text-encoder and UNet layers."""

    name: str
    te: float = 1.0
    unet: float = 1.0

    @property
    def alias(self) -> str:
        """The name as infotexts write it (the web UI drops ':' and ',')."""
        stem = Path(self.name).stem if _looks_like_path(self.name) else self.name
        return stem.replace(":", "").replace(",", "")


def _looks_like_path(name: str) -> bool:
    return "/" in name or "\\" in name or name.lower().endswith(LORA_SUFFIXES)


def _number(value: str, what: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ParamError(f"{what}: {value!r} is not a number") from None


def lora_requests(prompt: str, loras=None) -> list[LoraRequest]:
    """The LoRAs of a generation: `<lora:name>`, `<lora:name:w>` (both multipliers),
    `<lora:name:te:unet>` or `<lora:name:te=w:unet=w>` tags of the prompt, then `loras`
    ({name or path: weight or (te, unet)}). `<hypernet:...>` tags are t2i.extra_networks.hypernetwork's;
    `<lyco:...>` is an old spelling of `<lora:...>` (LyCORIS files load as LoRAs). Any other tag kind
    is an error, as an unknown LoRA is: a typo must not silently change the image."""
    found = []
    for kind, name, args in extract_extra_networks(prompt)[1]:
        tag = f"<{kind}:{name}{''.join(':' + a for a in args)}>"
        if kind.lower() == "hypernet":
            continue
        if kind.lower() not in ("lora", "lyco"):
            raise ParamError(f"{tag}: unknown extra network kind {kind!r}; t2i applies <lora:name:weight> (also "
                             f"<lyco:...>) and <hypernet:name:weight> tags")
        positional = [a for a in args if "=" not in a]
        named = dict(a.split("=", 1) for a in args if "=" in a)
        unknown = set(named) - {"te", "unet"}
        if unknown or len(positional) > 2:
            raise ParamError(f"{tag}: expected <lora:name>, <lora:name:weight>, <lora:name:te_weight:unet_weight> or "
                             f"te=/unet= weights; {'unknown ' + ', '.join(sorted(unknown)) if unknown else 'too many values'}")
        te = _number(named.get("te", positional[0] if positional else "1"), tag)
        unet = _number(named.get("unet", positional[1] if len(positional) > 1 else str(te)), tag)
        found.append(LoraRequest(name.strip(), te, unet))
    if loras:
        if not isinstance(loras, dict):
            raise ParamError(f"loras must be a dictionary {{name or path: weight}}, got {type(loras).__name__}")
        for name, weight in loras.items():
            te, unet = weight if isinstance(weight, (tuple, list)) and len(weight) == 2 else (weight, weight)
            if not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in (te, unet)):
                raise ParamError(f"loras[{name!r}] must be a weight or a (text encoder, UNet) pair of weights, "
                                 f"got {weight!r}")
            found.append(LoraRequest(str(name), float(te), float(unet)))
    return found


def lora_short_hash(path: Path) -> str:
    """The web UI's LoRA hash (12 hex digits): sha256 of a safetensors file's tensor data (after
    its header, so editing metadata keeps the hash), of the whole file otherwise."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if sniff_format(path) == "safetensors":
            f.seek(8 + int.from_bytes(f.read(8), "little"))
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@dataclass
class ActiveNetworks:
    """What one generation uses: LoRAs as (alias, short hash) and the embeddings its prompts name."""

    loras: list[tuple[str, str]] = field(default_factory=list)
    embeddings: list[Embedding] = field(default_factory=list)

    def infotext(self) -> dict:
        return {
            "Lora hashes": ", ".join(f"{alias}: {short}" for alias, short in self.loras) or None,
            "TI hashes": ", ".join(f"{e.name.replace(':', '').replace(',', '')}: {e.hash}"
                                   for e in self.embeddings if e.hash) or None,
        }


@dataclass(eq=False)
class ExtraNetworks:
    """A loaded model's LoRA and embedding folders, its separate VAE, and caches."""

    lora_dirs: tuple[Path, ...] = tuple(Path(d) for d in DEFAULT_LORA_DIRS)
    embedding_dirs: tuple[Path, ...] = tuple(Path(d) for d in DEFAULT_EMBEDDING_DIRS)
    hypernetwork_dirs: tuple[Path, ...] = tuple(Path(d) for d in DEFAULT_HYPERNETWORK_DIRS)
    _hypernetworks: dict = field(default_factory=dict, repr=False)  # path -> (stamp, Hypernetwork)
    vae_name: str | None = None  # file name of a separate VAE (--vae), for infotexts
    vae_hash: str | None = None
    _loras: OrderedDict = field(default_factory=OrderedDict, repr=False)  # path -> (stamp, LoraFile)
    _embeddings: dict = field(default_factory=dict, repr=False)  # path -> (stamp, Embedding)
    _hashes: dict = field(default_factory=dict, repr=False)  # path -> (stamp, short hash)
    _targets: tuple | None = field(default=None, repr=False)  # (model, LoraTargets)
    _last: tuple | None = field(default=None, repr=False)  # (request key, ActiveNetworks)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _active_key: tuple | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ LoRA files

    def find_lora(self, name: str) -> Path:
        """A LoRA file by path, or by name in the LoRA folders (`name.safetensors`, `.pt`, `.ckpt`,
        `.bin`, also in subfolders); ParamError saying where it looked."""
        if _looks_like_path(name):
            path = Path(name).expanduser()
            if path.is_file():
                return path
            if "/" in name or "\\" in name:
                raise ParamError(f"LoRA file {path} does not exist")
        for folder in self.lora_dirs:
            for suffix in LORA_SUFFIXES:
                if (folder / (name + suffix)).is_file():
                    return folder / (name + suffix)
        for folder in self.lora_dirs:
            if folder.is_dir():
                for path in sorted(folder.rglob("*")):
                    if path.stem == name and path.suffix.lower() in LORA_SUFFIXES and path.is_file():
                        return path
        where = ", ".join(str(d) for d in self.lora_dirs) or "(no LoRA folders)"
        raise ParamError(f"LoRA {name!r} not found: looked for {name}{'|'.join(LORA_SUFFIXES)} in {where}; "
                         f"put the file there, give its folder with --lora-dir, or give its path")

    def lora(self, path: Path) -> LoraFile:
        """The parsed file, cached (while unchanged on disk) for the next generations."""
        stamp = _stamp(path)
        cached = self._loras.get(path)
        if cached is None or cached[0] != stamp:
            cached = self._loras[path] = (stamp, read_lora(path))
        self._loras.move_to_end(path)
        while len(self._loras) > LORAS_IN_MEMORY:
            self._loras.popitem(last=False)
        return cached[1]

    def lora_hash(self, path: Path) -> str:
        stamp = _stamp(path)
        cached = self._hashes.get(path)
        if cached is None or cached[0] != stamp:
            cached = self._hashes[path] = (stamp, lora_short_hash(path))
        return cached[1]

    def targets(self, model) -> LoraTargets:
        if self._targets is None or self._targets[0] is not model:
            self._targets = (model, LoraTargets(model))
        return self._targets[1]

    # ------------------------------------------------------------------ embeddings

    def embedding(self, path: Path) -> Embedding:
        stamp = _stamp(path)
        cached = self._embeddings.get(path)
        if cached is None or cached[0] != stamp:
            cached = self._embeddings[path] = (stamp, load_embedding(path))
        return cached[1]

    def embedding_files(self) -> dict[str, Path]:
        """{name: file} of every embedding in the folders (subfolders too); of two files with one
        name the one nearer the folder's top wins, with a warning unless both hold the same
        vectors (a fine-tuning run writes NAME.safetensors and diffusers/learned_embeds.safetensors)."""
        found: dict[str, Path] = {}
        for folder in self.embedding_dirs:
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*"), key=lambda p: (len(p.relative_to(folder).parts), p)):
                if path.suffix.lower() not in EMBEDDING_SUFFIXES or not path.is_file():
                    continue
                # a diffusers learned_embeds file is named by its token: read it (it is small)
                name = self.embedding(path).name if path.stem == "learned_embeds" else path.stem
                if name in found:
                    if not self._same_vectors(path, found[name]):
                        log.warning("embedding %r: %s is shadowed by %s", name, path, found[name])
                    continue
                found[name] = path
        return found

    def _same_vectors(self, shadowed: Path, winner: Path) -> bool:
        """Whether every vector set of `shadowed` is one of `winner`'s (a copy in another format)."""
        import torch

        kept = list(self.embedding(winner).vectors.values())
        return all(any(v.shape == w.shape and torch.equal(v, w) for w in kept)
                   for v in self.embedding(shadowed).vectors.values())

    # ------------------------------------------------------------------ hypernetworks

    def hypernetworks(self, prompt: str) -> list[tuple]:
        """(Hypernetwork, multiplier) of each `<hypernet:name:m>` tag of `prompt` (files cached)."""
        from t2i.extra_networks.hypernetwork import find_hypernetwork, hypernetwork_requests, load_hypernetwork

        out = []
        for name, multiplier in hypernetwork_requests(prompt):
            path = find_hypernetwork(name, self.hypernetwork_dirs + self.lora_dirs)
            stamp = _stamp(path)
            cached = self._hypernetworks.get(path)
            if cached is None or cached[0] != stamp:
                cached = self._hypernetworks[path] = (stamp, load_hypernetwork(path))
            out.append((cached[1], multiplier))
        return out

    def embeddings_named_in(self, texts: list[str], widths: list[int]) -> list[Embedding]:
        """The embeddings whose names appear as words in `texts` (case-insensitive, as CLIP's
        tokenizer lowercases) and that fit text encoders of `widths`; others are warned about."""
        if not any(folder.is_dir() for folder in self.embedding_dirs):
            return []
        joined = "\n".join(texts)
        used = []
        for name, path in self.embedding_files().items():
            if not re.search(rf"(?<!\w){re.escape(name)}(?!\w)", joined, re.IGNORECASE):
                continue
            embedding = self.embedding(path)
            misfit = [w for w in widths if embedding.for_width(w) is None]
            if misfit:
                have = sorted({int(v.shape[-1]) for v in embedding.vectors.values()})
                log.warning("embedding %r (%s) has vectors of width %s, but this model's text encoder takes %s; "
                            "it was made for another model and is not used", name, path.name, have, misfit)
                continue
            used.append(embedding)
        return used

    # ------------------------------------------------------------------ one generation

    def describe(self, model, params, requests: list[LoraRequest] | None = None) -> ActiveNetworks:
        """What a generation with `params` uses (LoRA files found and hashed, embeddings found),
        without changing the model."""
        if requests is None:
            requests = lora_requests(params.prompt, getattr(params, "loras", None))
        loras = [(request.alias, self.lora_hash(self.find_lora(request.name))) for request in requests]
        widths = [encoder.get_input_embeddings().embedding_dim for encoder in _text_encoders(model)]
        texts = [extract_extra_networks(text)[0] for text in (params.prompt, params.negative_prompt)]  # as encoded
        embeddings = self.embeddings_named_in(texts, widths) if widths else []
        return ActiveNetworks(loras, embeddings)

    @contextmanager
    def activate(self, model, params) -> Iterator[ActiveNetworks]:
        """Merge the requested LoRAs into `model` for the duration; yields the ActiveNetworks."""
        key = _request_key(params)
        with self._lock:  # one generation at a time may change this model's weights
            if self._active_key is not None:  # nested use inside a generation (e.g. a pipeline calling another)
                if self._active_key != key:
                    raise RuntimeError("this model is generating with other LoRAs; finish that generation first")
                yield self._last[1]
                return
            requests = lora_requests(params.prompt, getattr(params, "loras", None))
            paths = [self.find_lora(request.name) for request in requests]
            files = [(self.lora(path), request.te, request.unet) for path, request in zip(paths, requests)]
            active = self.describe(model, params, requests)
            hypernetworks = self.hypernetworks(params.prompt)
            backups = merge_loras(self.targets(model), files) if files else []
            self._active_key, self._last = key, (key, active)
            try:
                from t2i.extra_networks.hypernetwork import applying_hypernetworks

                with applying_hypernetworks(model.unet, hypernetworks):  # its attention processors, restored after
                    yield active
            finally:
                self._active_key = None
                restore_weights(backups)

    def infotext(self, model, params) -> dict:
        """Infotext entries of a generation with `params` (the last activation's, if it matches)."""
        key = _request_key(params)
        if self._last is not None and self._last[0] == key:
            return self._last[1].infotext()
        return self.describe(model, params).infotext()


def _text_encoders(model) -> list:
    return [e for e in (getattr(model, "text_encoder", None), getattr(model, "text_encoder_2", None)) if e is not None]


def _request_key(params) -> tuple:
    return params.prompt, params.negative_prompt, repr(getattr(params, "loras", None))


# ----------------------------------------------------------------------------- per loaded model


def extra_networks_of(loaded) -> ExtraNetworks:
    """The loaded model's ExtraNetworks, made with the default folders on first use."""
    networks = getattr(loaded, "extra_networks", None)
    if networks is None:
        networks = ExtraNetworks()
        loaded.extra_networks = networks
    return networks


@contextmanager
def activate_extra_networks(loaded, params) -> Iterator[ActiveNetworks]:
    """One generation's LoRAs merged and embeddings found (see ExtraNetworks.activate)."""
    with extra_networks_of(loaded).activate(loaded.model, params) as active:
        yield active


def network_infotext(loaded, params) -> dict:
    """`Lora hashes` and `TI hashes` of a generation's infotext (absent when none were used)."""
    if getattr(loaded, "extra_networks", None) is None and "<" not in params.prompt and not getattr(params, "loras", None) \
            and not any(Path(d).is_dir() for d in DEFAULT_EMBEDDING_DIRS):
        return {}  # nothing configured and nothing asked for: no file system walk per image
    return extra_networks_of(loaded).infotext(loaded.model, params)


def vae_infotext(loaded) -> dict:
    """`VAE hash` and `VAE` of a separate VAE file (--vae), else nothing."""
    networks = getattr(loaded, "extra_networks", None)
    if networks is None or networks.vae_name is None:
        return {}
    return {"VAE hash": networks.vae_hash, "VAE": networks.vae_name}


def configure_extra_networks(loaded, *, vae=None, lora_dirs=None, embedding_dirs=None) -> ExtraNetworks:
    """Set a loaded model's LoRA and embedding folders (None: keep the defaults) and load a
    separate VAE file or folder into it."""
    networks = extra_networks_of(loaded)
    if lora_dirs is not None:
        networks.lora_dirs = tuple(Path(d).expanduser() for d in ([lora_dirs] if isinstance(lora_dirs, (str, Path)) else lora_dirs))
    if embedding_dirs is not None:
        dirs = [embedding_dirs] if isinstance(embedding_dirs, (str, Path)) else embedding_dirs
        networks.embedding_dirs = tuple(Path(d).expanduser() for d in dirs)
    if vae is not None:
        use_vae(loaded, vae)
    return networks


def use_vae(loaded, path: str | Path) -> None:
    """Load the VAE file or folder `path` into `loaded.model.vae` (in place: device and dtype
    stay) and record its name and hash for infotexts (`VAE hash`, `VAE`); the file is read by
    t2i.extra_networks.vae."""
    vae = loaded.model.vae
    state = vae_state_dict(vae, path)
    vae.load_state_dict(state, strict=True)  # copies into the existing parameters
    file = vae_weights_file(path)
    networks = extra_networks_of(loaded)
    networks.vae_name = file.name if Path(path).is_file() else Path(path).name
    networks.vae_hash = file_hash(file)
