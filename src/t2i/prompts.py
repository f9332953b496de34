"""Prompt syntax of the most used Stable Diffusion web UI (AUTOMATIC1111), in pure Python.

A pipeline applies the pieces in the web UI's order:

1. ``extract_extra_networks``: remove ``<lora:name:0.8>``-style tags, keep them aside.
2. ``split_and``: cut a composable prompt on ``AND`` into (sub-prompt, weight) pairs.
3. ``schedule``: per sub-prompt, which text applies at which sampling step
   (prompt editing ``[from:to:when]`` and alternation ``[a|b]``).
4. ``parse_attention``: per scheduled text, (text, weight) chunks for the text encoder,
   with ``("BREAK", -1.0)`` markers where the encoder must start a new 75-token chunk.

``has_syntax(prompt)`` is False for a plain prompt, which can then skip all four.
Everything here is plain string work: no torch, no tokenizer, no state.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "parse_attention",
    "schedule",
    "has_schedule",
    "split_and",
    "has_syntax",
    "extract_extra_networks",
]

ROUND_MULTIPLIER = 1.1  # each (...) multiplies attention by 1.1
SQUARE_MULTIPLIER = 1 / 1.1  # each [...] divides it by 1.1
BREAK_WEIGHT = -1.0  # the weight that marks a BREAK chunk

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)"  # 1  1.  1.5  .5  with an optional sign

# --------------------------------------------------------------------------- attention

_ATTENTION_TOKEN = re.compile(
    r"""
      (?P<escape>\\[()\[\]\\])                      # \( \) \[ \] \\  -> the character itself
    | (?P<backslash>\\)                             # any other backslash is dropped
    | (?P<weight>:\s*(?P<number>""" + _NUMBER + r""")\s*\))  # ':1.5)' closes a ( with a weight
    | (?P<open>[(\[])
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+|:)
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into (text, weight) chunks by the web UI's emphasis rules.

    - ``(word)`` multiplies the weight of ``word`` by 1.1, ``((word))`` by 1.1**2 = 1.21.
    - ``(word:1.5)`` multiplies it by 1.5 (any number, signs allowed: ``(word:-0.5)``).
    - ``[word]`` divides it by 1.1. ``[word:1.5]`` has no weight form: the text is ``word:1.5``.
    - Brackets nest and multiply: ``((a:1.3))`` is 1.3 * 1.1.
    - ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` stand for the literal character; a backslash
      before anything else is dropped.
    - An unclosed ``(`` or ``[`` applies its multiplier to all the text after it.
    - A closing bracket with nothing open to close is kept as literal text, weight 1.0
      (times any bracket around it); so is ``:1.5)`` when no ``(`` is open.
    - ``BREAK`` (a whole word, upper case, with the spaces around it) becomes the chunk
      ``("BREAK", -1.0)``. Unlike the web UI, brackets around it do not change that weight.
    - Adjacent chunks of equal weight are merged; empty chunks are dropped; an empty result
      is ``[("", 1.0)]``.

    >>> parse_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    chunks: list[list] = []  # [text, weight]; weight None marks a BREAK
    round_open: list[int] = []  # chunk index where each open ( started
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for chunk in chunks[start:]:
            if chunk[1] is not None:
                chunk[1] *= factor

    def add_text(piece: str) -> None:
        for i, part in enumerate(_BREAK.split(piece)):
            if i > 0:
                chunks.append(["BREAK", None])
            chunks.append([part, 1.0])

    for m in _ATTENTION_TOKEN.finditer(text):
        kind, token = m.lastgroup, m.group()
        if kind == "escape":
            chunks.append([token[1], 1.0])
        elif kind == "backslash":
            continue
        elif kind == "open":
            (round_open if token == "(" else square_open).append(len(chunks))
        elif kind == "weight" and round_open:
            scale(round_open.pop(), float(m.group("number")))
        elif token == ")" and round_open:
            scale(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            scale(square_open.pop(), SQUARE_MULTIPLIER)
        else:  # plain text, ':', a stray closer, or a weight with no ( to close
            add_text(token)
    for start in round_open:
        scale(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale(start, SQUARE_MULTIPLIER)

    merged: list[tuple[str, float]] = []
    for piece, weight in chunks:
        if weight is None:
            merged.append(("BREAK", BREAK_WEIGHT))
        elif not piece:
            continue
        elif merged and merged[-1][1] == weight and merged[-1] != ("BREAK", BREAK_WEIGHT):
            merged[-1] = (merged[-1][0] + piece, weight)
        else:
            merged.append((piece, weight))
    return merged or [("", 1.0)]


# --------------------------------------------------------------------------- scheduling


@dataclass(frozen=True)
class _Edit:
    """``[before:after:when]``: ``before`` up to step ``when``, ``after`` from then on."""

    before: tuple
    after: tuple
    when: float  # as written: < 1 is a fraction of the steps, else a step number


@dataclass(frozen=True)
class _Alternate:
    """``[a|b|c]``: option ``(step - 1) % len(options)`` at each step."""

    options: tuple


_WHEN = re.compile(r"\s*(" + _NUMBER + r"(?:[eE][+-]?\d+)?)\s*")


def schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """The texts that ``prompt`` stands for over ``steps`` sampling steps (counted from 1).

    Returns (last step this text applies to, text) pairs in step order; the last pair
    ends at ``steps``; consecutive equal texts are merged into one pair.

    - ``[from:to:when]``: ``from`` for steps 1..``when``, then ``to``. ``[to:when]`` has
      an empty ``from``, ``[from::when]`` an empty ``to``. ``when`` < 1 is a fraction of
      ``steps`` (``0.5`` of 25 -> step 12, rounded down), else a step number (1.5 -> 1);
      it is capped at ``steps``. Whitespace around ``when`` is ignored; whitespace in the
      texts is kept.
    - ``[a|b|c]`` alternates: step 1 uses ``a``, step 2 ``b``, ... An empty option is "".
    - Both nest: ``a[b:[c:d:2]:1]e`` -> ``[(1, 'abe'), (2, 'ace'), (10, 'ade')]`` for 10 steps.
    - Round brackets are attention syntax: their ``:`` is never an edit separator and
      they stay in the text, e.g. ``[(a:1.2):3]`` -> ``(a:1.2)`` from step 4. So do
      ``[word]`` groups that are neither edit nor alternation.
    - ``\\[`` and other backslash escapes are kept as written (for ``parse_attention``).
    - Malformed groups stay literal text: an unclosed ``[``, an unbalanced bracket inside
      (``[a:b):3]``), ``[a:b]`` (no number), ``[a:b:c:3]`` (three colons), ``[a|b:3]``
      (both ``|`` and ``:``). Where the web UI takes the whole prompt literally (such a
      group nested in another, a ``|`` outside square brackets, a trailing lone
      backslash), the well-formed groups here still apply.

    >>> schedule("a [cat:dog:0.5]", 10)
    [(5, 'a cat'), (10, 'a dog')]
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if "[" not in prompt:
        return [(steps, prompt)]
    nodes = _parse(prompt, 0, len(prompt), _match_brackets(prompt))
    if all(isinstance(node, str) for node in nodes):
        return [(steps, prompt)]
    boundaries = {steps}
    _collect_boundaries(nodes, steps, boundaries)
    result: list[tuple[int, str]] = []
    for step in sorted(boundaries):
        text = _render(nodes, step, steps)
        if result and result[-1][1] == text:
            result[-1] = (step, text)
        else:
            result.append((step, text))
    return result


def has_schedule(prompt: str) -> bool:
    """True when ``prompt`` holds a well-formed editing or alternation group, so ``schedule``
    may give different texts at different steps; False means one text for any step count."""
    if "[" not in prompt:
        return False
    nodes = _parse(prompt, 0, len(prompt), _match_brackets(prompt))
    return not all(isinstance(node, str) for node in nodes)


def _match_brackets(text: str) -> dict[int, int]:
    """Index of each matched ``[`` or ``(`` -> index of its closer; escaped ones are skipped.

    A closer that does not match the innermost open bracket is left unmatched (literal).
    """
    pairs: dict[int, int] = {}
    stack: list[int] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c in "[(":
            stack.append(i)
        elif c in "])" and stack and text[stack[-1]] == ("[" if c == "]" else "("):
            pairs[stack.pop()] = i
        i += 1
    return pairs


def _parse(text: str, start: int, end: int, pairs: dict[int, int]) -> tuple:
    """Parse ``text[start:end]`` into a tuple of str, _Edit and _Alternate nodes."""
    nodes: list = []
    literal_start = i = start
    while i < end:
        if text[i] == "\\":
            i += 2
            continue
        group = None
        if text[i] == "[" and i in pairs:
            group = _parse_group(text, i + 1, pairs[i], pairs)
        if group is None:  # anything else, including [word] and (word), is literal text
            i += 1
            continue
        if literal_start < i:
            nodes.append(text[literal_start:i])
        nodes.append(group)
        i = literal_start = pairs[i] + 1
    if literal_start < end:
        nodes.append(text[literal_start:end])
    return tuple(nodes)


def _parse_group(text: str, start: int, end: int, pairs: dict[int, int]):
    """The inside of ``[...]`` as an _Edit or _Alternate, or None when it is neither."""
    colons: list[int] = []
    pipes: list[int] = []
    i = start
    while i < end:  # find the separators at this level, skipping nested brackets
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if i in pairs:
            i = pairs[i] + 1
            continue
        if c in "[]()":  # an unbalanced bracket inside: the group is malformed
            return None
        if c == ":":
            colons.append(i)
        elif c == "|":
            pipes.append(i)
        i += 1
    if pipes and not colons:
        bounds = [start - 1, *pipes, end]
        return _Alternate(tuple(_parse(text, a + 1, b, pairs) for a, b in zip(bounds, bounds[1:])))
    if pipes or not 1 <= len(colons) <= 2:
        return None
    when = _WHEN.fullmatch(text, colons[-1] + 1, end)
    if when is None:
        return None
    if len(colons) == 2:
        before = _parse(text, start, colons[0], pairs)
        after = _parse(text, colons[0] + 1, colons[1], pairs)
    else:
        before, after = (), _parse(text, start, colons[0], pairs)
    return _Edit(before, after, float(when.group(1)))


def _edit_step(when: float, steps: int) -> int:
    """The last step of an edit's ``from`` text: a fraction below 1, else a step number."""
    return min(steps, int(when * steps if when < 1 else when))


def _collect_boundaries(nodes: tuple, steps: int, into: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Edit):
            step = _edit_step(node.when, steps)
            if step >= 1:
                into.add(step)
            _collect_boundaries(node.before, steps, into)
            _collect_boundaries(node.after, steps, into)
        elif isinstance(node, _Alternate):
            into.update(range(1, steps + 1))
            for option in node.options:
                _collect_boundaries(option, steps, into)


def _render(nodes: tuple, step: int, steps: int) -> str:
    parts = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, _Edit):
            chosen = node.before if step <= _edit_step(node.when, steps) else node.after
            parts.append(_render(chosen, step, steps))
        else:
            chosen = node.options[(step - 1) % len(node.options)]
            parts.append(_render(chosen, step, steps))
    return "".join(parts)


# --------------------------------------------------------------------------- AND, tags, check

_AND = re.compile(r"\bAND\b")
_TRAILING_WEIGHT = re.compile(r"\s*:\s*(" + _NUMBER + r")\s*$")
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_SYNTAX = re.compile(
    r"[()\[\]\\]"  # attention, editing, alternation, escapes
    r"|\b(?:AND|BREAK)\b"
    r"|<\w+:[^>]+>"  # extra networks
    r"|" + _TRAILING_WEIGHT.pattern  # a weight after a single prompt scales its guidance
)


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Split a composable prompt on ``AND`` (a whole word, upper case) into (text, weight).

    Each part may end in ``:weight`` (spaces allowed around the colon); without one its
    weight is 1.0. Texts are stripped of surrounding whitespace. As in the web UI, a single
    prompt that ends in ``:number`` gets that weight too (``"ratio 16:9"`` -> weight 9.0),
    while ``(word:1.2)`` is attention, not a part weight.

    >>> split_and("a cat :1.2 AND a dog")
    [('a cat', 1.2), ('a dog', 1.0)]
    """
    parts = []
    for part in _AND.split(prompt):
        m = _TRAILING_WEIGHT.search(part)
        if m is None:
            parts.append((part.strip(), 1.0))
        else:
            parts.append((part[: m.start()].strip(), float(m.group(1))))
    return parts


def extract_extra_networks(prompt: str) -> tuple[str, list[tuple[str, str, list[str]]]]:
    """Remove ``<kind:name:arg:...>`` tags; return the rest and (kind, name, args) per tag.

    ``kind`` is a word (``lora``, ``hypernet``, ...), the rest splits on ``:``; args stay
    strings (``"0.8"``, ``"te=0.5"``) for the network's loader to read. Tags are removed
    without touching the text around them, as the web UI does.

    >>> extract_extra_networks("a cat <lora:ink:0.8>")
    ('a cat ', [('lora', 'ink', ['0.8'])])
    """
    found: list[tuple[str, str, list[str]]] = []

    def take(m: re.Match) -> str:
        name, *args = m.group(2).split(":")
        found.append((m.group(1), name, args))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt), found


def has_syntax(prompt: str) -> bool:
    """True when any syntax above may apply; False means ``prompt`` is used as it is.

    It may say True for text that turns out literal (``a (b``), never False for syntax.
    """
    return _SYNTAX.search(prompt) is not None
