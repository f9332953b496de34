"""`t2i watermark detect IMAGE` and `t2i watermark add IMAGE TEXT`: the invisible watermark
(invisible-watermark's dwtDctSvd) that `--watermark TEXT` puts in generated images."""
from __future__ import annotations

from pathlib import Path

from t2i.errors import ParamError


def add_watermark_commands(sub) -> None:
    p = sub.add_parser("watermark", help="read or add an invisible watermark (dwtDctSvd)",
                       description="Invisible watermarks as the CompVis scripts put them (invisible-watermark's "
                                   "dwtDctSvd). Images must be at least 256x256.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    detect = actions.add_parser("detect", help="read the watermark of an image")
    detect.add_argument("image", type=Path)
    what = detect.add_mutually_exclusive_group(required=True)
    what.add_argument("--length", type=int, help="the watermark text's length in bytes (the payload has no header)")
    what.add_argument("--expect", metavar="TEXT", help="the text expected: prints it if found and the fraction of "
                      "its bits read back (0.5 = chance: no such watermark); exit status 1 when under 0.9")
    detect.set_defaults(run=_run_detect)
    add = actions.add_parser("add", help="put a watermark in an image")
    add.add_argument("image", type=Path)
    add.add_argument("text")
    add.add_argument("-o", "--output", type=Path, required=True, help="the watermarked image (PNG keeps it best)")
    add.set_defaults(run=_run_add)


def _run_detect(args) -> None:
    from t2i.interfaces.cli.common import open_image
    from t2i.pipelines.watermark import bit_accuracy, read_watermark

    image = open_image(args.image)
    if args.expect is not None:
        accuracy = bit_accuracy(image, args.expect)
        found = accuracy >= 0.9
        print(f"{'found' if found else 'not found'}: {args.expect!r}, bit accuracy {accuracy:.3f}")
        if not found:
            raise SystemExit(1)
        return
    if args.length < 1:
        raise ParamError("--length must be at least 1 byte")
    data = read_watermark(image, args.length)
    print(data.decode("utf-8", errors="replace"))


def _run_add(args) -> None:
    from t2i.interfaces.cli.common import open_image
    from t2i.metadata import read_infotext, write_image
    from t2i.pipelines.watermark import put_watermark

    marked = put_watermark(open_image(args.image), args.text)
    print(write_image(marked, args.output, read_infotext(args.image) or ""))  # the image's infotext kept
