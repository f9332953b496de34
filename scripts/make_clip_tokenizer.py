"""Derive CLIP's vocab.json and merges.txt (shipped in src/t2i/assets/clip_tokenizer/).

Input: bpe_simple_vocab_16e6.txt.gz from the open_clip_torch wheel on PyPI (MIT, see
LICENSE-open_clip.txt). The derivation is the one CLIP's own tokenizer does at start-up:
256 byte symbols, the same with the end-of-word mark, one symbol per merge, two specials.
Usage: python scripts/make_clip_tokenizer.py PATH/bpe_simple_vocab_16e6.txt.gz OUTDIR
"""
import gzip
import json
import sys
from pathlib import Path

N_MERGES = 49152 - 256 - 2


def bytes_to_unicode() -> dict[int, str]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def main(bpe_path: str, outdir: str) -> None:
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    print(f"{len(vocab)} tokens, {len(merges)} merges -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
