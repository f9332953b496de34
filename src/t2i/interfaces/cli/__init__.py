"""The `t2i` command line. Thin: every command parses flags (from the schema) and calls a Session,
a trainer or a tool, then writes what it got.

Commands are registered lazily: `t2i --help` and a mistyped command build only the command list,
and `t2i generate ...` builds only generate's flags, so neither loads torch (that happens when a
command runs). User errors (bad parameters, missing files, invalid configs, unwritable outputs)
print one `t2i COMMAND: error:` line and exit with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

EXIT_USER_ERROR = 2

# command -> (module under t2i.interfaces.cli, function that adds its parser, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "generate": ("generate", "add_generate_command", "generate images from a prompt (txt2img)"),
    "img2img": ("images", "add_img2img_command", "change an image with a prompt (img2img)"),
    "inpaint": ("images", "add_inpaint_command", "repaint the white area of a mask"),
    "outpaint": ("images", "add_outpaint_command", "extend an image's canvas and paint the new area"),
    "upscale": ("upscale", "add_upscale_command", "upscale images with a super-resolution model or a classic resize"),
    "xyz": ("scripts", "add_xyz_command", "X/Y/Z plot: a labelled grid over up to three parameters"),
    "prompt-matrix": ("scripts", "add_prompt_matrix_command",
                      "every combination of a prompt's |-separated parts, in a grid"),
    "loopback": ("scripts", "add_loopback_command", "img2img repeated, each loop on the previous output"),
    "sd-upscale": ("scripts", "add_sd_upscale_command", "upscale, then redraw the image with img2img tile by tile"),
    "img2img-alt": ("scripts", "add_img2img_alt_command",
                    "img2img alternative test: invert the image to noise, sample a new prompt from it"),
    "png-info": ("generate", "add_png_info_command", "print the generation parameters stored in an image"),
    "watermark": ("watermark", "add_watermark_commands", "read or add an invisible watermark (dwtDctSvd)"),
    "train": ("data_train", "add_train_command", "train a model from a YAML config (e.g. configs/shapes-ldm.yaml)"),
    "finetune": ("finetune", "add_finetune_commands",
                 "fine-tune a model on your pictures: LoRA, DreamBooth, textual inversion, hypernetwork, full"),
    "sample": ("families", "add_sample_command",
               "sample a grid from a GAN, VAE, pixel DDPM or VQGAN + AR transformer"),
    "interpolate": ("families", "add_interpolate_command",
                    "a strip of frames between two images through a VAE's latent space"),
    "evaluate": ("evaluate", "add_evaluate_commands", "evaluate models: reconstruction metrics, FID"),
    "rdm": ("rdm", "add_rdm_commands", "retrieval-augmented diffusion: build a retrieval database of CLIP embeddings"),
    "interrogate": ("interrogate", "add_interrogate_command", "caption images by ranking candidates with a CLIP"),
    "convert": ("models", "add_convert_command", "write a model as an original-layout single file or a diffusers "
                                                "folder"),
    "merge": ("models", "add_merge_command", "merge checkpoints: weighted sum of two, or add difference of three"),
    "data": ("data_train", "add_data_command", "dataset tools"),
    "serve": ("serve", "add_serve_commands", "serve the web UI's REST API (/sdapi/v1) on a job queue"),
}


def _available(name: str) -> bool:
    """A command whose module is not part of this install (yet) is left out of the list."""
    return importlib.util.find_spec(f"t2i.interfaces.cli.{COMMANDS[name][0]}") is not None


def build_parser(only: str | None = "*") -> argparse.ArgumentParser:
    """The parser with every command's flags (`only="*"`, the default), or with only the flags of
    command `only` (None: none), the other commands listed by name and help."""
    parser = argparse.ArgumentParser(prog="t2i", description="Text-to-image: train and generate, offline.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, function, help_text) in COMMANDS.items():
        if not _available(name):
            continue
        if only == "*" or only == name:
            getattr(importlib.import_module(f"t2i.interfaces.cli.{module}"), function)(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _command_of(argv: list[str]) -> str | None:
    return next((arg for arg in argv if not arg.startswith("-")), None)


def program() -> int:
    """The `t2i` program (console script, `python -m t2i.interfaces.cli`): main() in a process of its
    own, which may therefore tune process-wide settings such as the CPU allocator."""
    return main(own_process=True)


def main(argv: list[str] | None = None, own_process: bool = False) -> int:
    """Run one command. Called from Python (tests, scripts) it leaves process-wide settings alone."""
    from t2i.errors import T2IError

    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(argv)
    args = build_parser(only=command if command in COMMANDS else None).parse_args(argv)
    args.own_process = own_process
    if own_process and args.command != "serve":  # serve decides by its devices, before its workers start
        from t2i.cpu_allocator import reuse_freed_memory

        reuse_freed_memory()
    try:
        args.run(args)
    except (T2IError, ValueError, OSError) as err:
        print(f"t2i {args.command}: error: {_message(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        resumable = args.command in ("train", "finetune")  # their checkpoints are written atomically, so kept whole
        print("interrupted" + ("; the last checkpoint written is kept: run the same command with --resume to "
                               "continue from it" if resumable else ""), file=sys.stderr)
        return 130
    finally:
        from t2i.checkpoints.preload import discard_all

        discard_all()  # weights cast for a model the command never loaded (it failed first) go now
    return 0


def _message(err: BaseException) -> str:
    """One line: the error's own message, or for a bare OSError what failed and on which path."""
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.strerror}: {err.filename}"
    return str(err) or type(err).__name__
