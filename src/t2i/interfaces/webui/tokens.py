"""The prompt's token counter (`12/75`), counted as the web UI counts it: extra-network tags
(<lora:...>) removed, each scheduled text (`[a:b:0.5]`) and each AND part tokenized with the
attention syntax parsed, the longest one shown; the total grows by one chunk at a time, as the
text encoder reads it (BREAK and comma backtracking included, t2i.diffusion.prompt_tokens).

The chunk is the model's text window less BOS and EOS: 75 for Stable Diffusion, 30 for the
bundled shapes model (its text encoder reads 32 tokens).
"""
from __future__ import annotations

import functools

STEPS_FOR_SCHEDULES = 20  # scheduled prompts are expanded over this many steps to find their texts


@functools.lru_cache(maxsize=4)
def _tokenizer(max_length: int):
    from t2i.models.text import load_tokenizer

    return load_tokenizer(max_length=max_length)


def count_tokens(prompt: str, chunk_length: int = 75) -> tuple[int, int]:
    """(tokens, capacity): tokens of the longest text `prompt` stands for, and the tokens its
    chunks hold (a multiple of `chunk_length`)."""
    from t2i.diffusion.prompt_tokens import chunk_tokens
    from t2i.prompts import extract_extra_networks, parse_attention, schedule, split_and

    tokenizer = _tokenizer(chunk_length + 2)
    text, _ = extract_extra_networks(prompt or "")
    best_tokens, best_chunks = 0, 1
    for _, scheduled in schedule(text, STEPS_FOR_SCHEDULES):
        for part, _ in split_and(scheduled):
            pieces = parse_attention(part)
            chunks = chunk_tokens(tokenizer, pieces, chunk_length=chunk_length)
            ids = tokenizer([t for t, w in pieces if t != "BREAK"], add_special_tokens=False, truncation=False,
                            verbose=False).input_ids
            tokens = sum(len(i) for i in ids)
            if (len(chunks), tokens) > (best_chunks, best_tokens):
                best_tokens, best_chunks = tokens, len(chunks)
    return best_tokens, best_chunks * chunk_length


def counter_text(prompt: str, chunk_length: int = 75) -> str:
    tokens, capacity = count_tokens(prompt, chunk_length)
    return f"{tokens}/{capacity}"
