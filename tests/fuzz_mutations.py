"""Mutated safetensors files for the loader fuzz test: from one valid file, N damaged or hostile
variants, deterministic for a seed.

Mutations come in three groups:
* bytes: bit flips (anywhere, or in the header), truncations (also below 8 bytes), appended
  garbage, a rewritten header length field;
* header edits that break the file: sizes, offsets, dtypes, shapes of the wrong type or range,
  overlapping or out-of-file spans, unknown dtypes, huge entry counts, deep nesting, invalid
  UTF-8, a header that is not an object, metadata that is not strings;
* edits that keep a *valid* safetensors file whose content is wrong for the loader: a dtype
  relabelled to another of the same size (F16 -> I16), a shape permuted, a tensor renamed,
  removed or added, metadata values replaced. The library accepts these, so the loaders' own
  checks must catch them.

    for kind, data in mutations(seed_bytes, count=200, seed=0): ...
"""
from __future__ import annotations

import json
import random
import re
import struct

SAME_SIZE = {"F16": ["I16", "BF16", "U16"], "BF16": ["F16", "I16"], "F32": ["I32", "U32", "F64"], "I64": ["F64", "U64"],
             "U8": ["I8", "BOOL", "F8_E4M3"], "I32": ["F32"], "F64": ["I64"], "BOOL": ["U8"]}
ALL_DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "F8_E8M0",
              "C64", "U16", "U32", "U64", "F4"]
ODD_VALUES = [-1, 2**31, 2**63, 2**64 + 1, 1.5, "8", None, [], {}, True, -(2**63)]


def split(data: bytes) -> tuple[list[tuple[str, str, list, bytes]], dict | None]:
    """([(name, dtype, shape, raw bytes)] in file order, metadata) of a valid file."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    metadata = header.pop("__metadata__", None)
    body = data[8 + n:]
    entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    return [(k, e["dtype"], list(e["shape"]), body[e["data_offsets"][0]:e["data_offsets"][1]])
            for k, e in entries], metadata


def build(tensors: list[tuple[str, str, list, bytes]], metadata: dict | None) -> bytes:
    """A valid safetensors file (as far as offsets go) of these tensors."""
    header, offset = {}, 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    if metadata is not None:
        header["__metadata__"] = metadata
    return with_header(json.dumps(header).encode(), b"".join(t[3] for t in tensors))


def with_header(text: bytes, body: bytes, pad: bool = True) -> bytes:
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _parts(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


# ----------------------------------------------------------------------------- byte level


def bit_flips(data: bytes, rng: random.Random, header_only: bool = False) -> bytes:
    out = bytearray(data)
    (n,) = struct.unpack("<Q", data[:8])
    end = min(len(out), 8 + n) if header_only else len(out)
    for _ in range(rng.choice([1, 1, 2, 4, 8, 32])):
        i = rng.randrange(end)
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.choice([0, 1, 7, 8, 9, rng.randrange(len(data)), len(data) - 1])]


def append_garbage(data: bytes, rng: random.Random) -> bytes:
    return data + bytes(rng.randrange(256) for _ in range(rng.choice([1, 8, 100])))


def length_field(data: bytes, rng: random.Random) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    value = rng.choice([0, 1, n - 1, n + 1, n + 8, n - 8, len(data), 100_000_001, 2**32, 2**63, 2**64 - 1])
    return struct.pack("<Q", max(0, value) % 2**64) + data[8:]


# ----------------------------------------------------------------------------- header edits (invalid)


def _edit(data: bytes, rng: random.Random, change) -> bytes:
    header, body = _parts(data)
    names = [k for k in header if k != "__metadata__"]
    change(header, rng.choice(names), rng)
    return with_header(json.dumps(header).encode(), body)


def _set_field(field: str, values):
    def change(header, name, rng):
        header[name][field] = rng.choice(values) if isinstance(values, list) else values(header[name], rng)
    return change


def _shape_edit(entry, rng):
    shape = list(entry["shape"]) or [1]
    kind = rng.randrange(6)
    if kind == 0:
        shape[rng.randrange(len(shape))] *= rng.choice([2, 3, 1000, 2**40])
    elif kind == 1:
        shape[rng.randrange(len(shape))] = rng.choice(ODD_VALUES)
    elif kind == 2:
        shape = shape + [rng.choice([0, 2, 2**62])]
    elif kind == 3:
        shape = [2**32, 2**32, 2**32]
    elif kind == 4:
        shape = [[d] for d in shape]
    else:
        shape = rng.choice(ODD_VALUES)
    return shape


def _offsets_edit(entry, rng):
    begin, end = entry["data_offsets"]
    return rng.choice([[end, begin], [begin, end + 1], [begin - 1, end], [0, end], [begin, 2**63], [-8, end],
                       [begin], [begin, end, end], [str(begin), end], [begin, end * 1000], [2**64, 2**64 + 4], None])


def _drop_entry(header, name, rng):
    del header[name]


def _duplicate_span(header, name, rng):
    other = rng.choice([k for k in header if k != "__metadata__"])
    header[name]["data_offsets"] = list(header[other]["data_offsets"])


def _metadata_values(header, name, rng):
    header["__metadata__"] = rng.choice([{"a": 1}, {"a": {"b": "c"}}, ["x"], "text", 7, {"a": None}])


def _not_an_object(data, rng):
    return with_header(rng.choice([b"[]", b"[1, 2]", b'"text"', b"17", b"null", b"{"]), b"")


def _many_entries(data: bytes, rng: random.Random) -> bytes:
    """A header of 50,001 to 300,000 zero-size tensors (only the entry count is wrong)."""
    count = rng.choice([50_001, 300_000])
    entries = ",".join(f'"t{i}":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}' for i in range(count))
    return with_header(("{" + entries + "}").encode(), b"")


def _deep_nesting(data: bytes, rng: random.Random) -> bytes:
    depth = rng.choice([5, 64, 200, 100_000])
    inner = b"[" * depth + b"]" * depth
    where = rng.randrange(3)
    if where == 0:
        return with_header(b'{"a":' + inner + b"}", b"")
    header, body = _parts(data)
    name = next(k for k in header if k != "__metadata__")
    text = json.dumps(header).encode()
    key = b'"' + name.encode() + b'": {'
    if where == 1:
        text = text.replace(key, key + b'"extra": ' + inner + b", ", 1)
    else:
        text = text.replace(b'"shape": [', b'"shape": [' + inner + b", ", 1)
    return with_header(text, body)


def _invalid_utf8(data: bytes, rng: random.Random) -> bytes:
    header, body = _parts(data)
    text = json.dumps(header).encode()
    i = text.index(b'"', 2) - 1  # inside the first key
    return with_header(text[:i] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80"]) + text[i:], body)


def _duplicate_key(data: bytes, rng: random.Random) -> bytes:
    header, body = _parts(data)
    name = next(k for k in header if k != "__metadata__")
    text = json.dumps(header).encode()
    entry = json.dumps({name: header[name]}).encode()[1:-1]
    return with_header(text[:-1] + b", " + entry + b"}", body)


# ----------------------------------------------------------------------------- valid files, wrong content


def _relabel(data: bytes, rng: random.Random) -> bytes:
    tensors, metadata = split(data)
    i = rng.randrange(len(tensors))
    name, dtype, shape, raw = tensors[i]
    if dtype in SAME_SIZE:
        tensors[i] = (name, rng.choice(SAME_SIZE[dtype]), shape, raw)
    return build(tensors, metadata)


def _reshape(data: bytes, rng: random.Random) -> bytes:
    tensors, metadata = split(data)
    i = rng.randrange(len(tensors))
    name, dtype, shape, raw = tensors[i]
    numel = 1
    for d in shape:
        numel *= d
    tensors[i] = (name, dtype, rng.choice([[numel], shape[::-1], [1, numel], [numel, 1, 1, 1], [1] * 9 + [numel]])
                  if numel else [0, 5], raw)
    return build(tensors, metadata)


def _rename(data: bytes, rng: random.Random) -> bytes:
    tensors, metadata = split(data)
    i = rng.randrange(len(tensors))
    name = tensors[i][0]
    new = rng.choice([name + "x", name.replace(".", "_"), name.rsplit(".", 1)[0], "", " ", "state_dict", "a" * 300,
                      name.replace("weight", "bias"), "../" + name, "\u00e9" + name])
    tensors[i] = (new, *tensors[i][1:])
    return build(tensors, metadata)


def _remove(data: bytes, rng: random.Random) -> bytes:
    tensors, metadata = split(data)
    del tensors[rng.randrange(len(tensors))]
    return build(tensors, metadata)


def _add(data: bytes, rng: random.Random) -> bytes:
    tensors, metadata = split(data)
    name, dtype, shape, raw = rng.choice(tensors)
    layer = re.sub(r"\.(lora_\w+|hada_\w+|lokr_\w+)(\.weight)?$", "", name)
    extra = rng.choice([(name + ".extra", dtype, shape, raw), ("alpha", "F32", [], b"\0\0\x80?"),
                        (name, "F32", [0], b""), ("zero", "F16", [0, 3], b""),
                        (layer + ".alpha", "F32", [2], bytes(8)), (layer + ".alpha", "F32", [], b"\0\0\xc0\x7f"),
                        (layer + ".alpha", "I64", [], bytes(8))])
    tensors.insert(rng.randrange(len(tensors) + 1), extra)
    return build(tensors, metadata)


def _metadata(data: bytes, rng: random.Random) -> bytes:
    tensors, metadata = split(data)
    metadata = dict(metadata or {})
    key = rng.choice(list(metadata) or ["format"])
    metadata[key] = rng.choice(["", "{", "[]", "null", '{"a": 1}', "x" * 10_000, "[" * 5000 + "]" * 5000,
                                '{"config": {}}', "gan", "ar", "vqgan", "\u0000", "1e999", '"quoted"',
                                '{"unet.alpha_pattern": {"(a+)+$": 1}}', '{"unet.alpha_pattern": {"[": 1}}',
                                '{"unet.lora_alpha": "x"}', '{"unet.alpha_pattern": 5}', '{"unet.lora_alpha": 1e999}',
                                '{"unet.alpha_pattern": {"proj_out": "x"}}', '{"unet.use_rslora": true}'])
    if rng.random() < 0.2:
        metadata = {}
    return build(tensors, metadata)


MUTATORS = {
    "bit-flip": bit_flips, "header-bit-flip": lambda d, r: bit_flips(d, r, header_only=True),
    "truncate": truncate, "append-garbage": append_garbage, "length-field": length_field,
    "dtype": lambda d, r: _edit(d, r, _set_field("dtype", ALL_DTYPES + ["F128", "", "f32", 7, None, ["F32"]])),
    "shape": lambda d, r: _edit(d, r, _set_field("shape", _shape_edit)),
    "offsets": lambda d, r: _edit(d, r, _set_field("data_offsets", _offsets_edit)),
    "drop-entry": lambda d, r: _edit(d, r, _drop_entry), "overlap": lambda d, r: _edit(d, r, _duplicate_span),
    "metadata-type": lambda d, r: _edit(d, r, _metadata_values),
    "not-an-object": _not_an_object, "many-entries": _many_entries, "deep-nesting": _deep_nesting,
    "invalid-utf8": _invalid_utf8, "duplicate-key": _duplicate_key,
    "relabel-dtype": _relabel, "reshape": _reshape, "rename": _rename, "remove-tensor": _remove,
    "add-tensor": _add, "metadata-value": _metadata,
}
# How often each kind is drawn: the cheap-to-make and the content-level ones most.
WEIGHTS = {"many-entries": 0.02, "deep-nesting": 0.5, "not-an-object": 0.3, "invalid-utf8": 0.5, "duplicate-key": 0.5,
           "relabel-dtype": 3, "reshape": 2, "rename": 2, "remove-tensor": 2, "add-tensor": 2, "metadata-value": 2,
           "bit-flip": 3, "header-bit-flip": 3}


def mutations(seed_data: bytes, count: int, seed: int):
    """`count` (kind, bytes) variants of a valid safetensors file, the same for the same seed."""
    rng = random.Random(seed)
    kinds = list(MUTATORS)
    weights = [WEIGHTS.get(k, 1) for k in kinds]
    for _ in range(count):
        kind = rng.choices(kinds, weights)[0]
        yield kind, MUTATORS[kind](seed_data, rng)
