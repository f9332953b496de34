"""Extra networks on top of a loaded Stable Diffusion model, as the web UI offers them:

- LoRA (lora.py): kohya / web-UI and diffusers / peft files, several at once with weights, from
  the prompt (`<lora:name:0.8>`, files in `loras/` or `models/Lora/`) or the API
  (`t2i.generate(..., loras={"name or path": 0.8})`); merged into the weights for one generation
  and restored exactly afterwards. `save_kohya_lora` writes the kohya format. LyCORIS files
  (LoHa, LoKr, Tucker LoCon, full differences; lycoris.py) are applied the same way.
- Textual-inversion embeddings (embeddings.py): web-UI `.pt` / `.safetensors`, SDXL and
  diffusers files in `embeddings/`, used by writing their name in a prompt.
- Hypernetworks in the web UI's format (hypernetwork.py): `<hypernet:name:0.6>` in a prompt applies
  `name.pt` (from `hypernetworks/`, `models/hypernetworks/` or the LoRA folders) through the UNet's
  attention processors for one generation.
- A separate VAE (vae.py, `--vae FILE`).

library.py ties them to a LoadedModel (`loaded.extra_networks`) and to one generation
(`activate_extra_networks`); every file is read through t2i.checkpoints.safe_load, so no file
can run code.
"""

# Searched relative to the working directory, as the web UI does (no file is read at import).
DEFAULT_LORA_DIRS = ("loras", "models/Lora")
DEFAULT_EMBEDDING_DIRS = ("embeddings", "models/embeddings")
DEFAULT_HYPERNETWORK_DIRS = ("hypernetworks", "models/hypernetworks")  # the LoRA folders are searched too
