"""Prompt syntax, written from the web UI's documented behaviour (pure string work)."""
import subprocess
import sys

import pytest

from t2i.prompts import extract_extra_networks, has_syntax, parse_attention, schedule, split_and


def approx_chunks(chunks):
    return [(text, pytest.approx(weight)) for text, weight in chunks]


# --------------------------------------------------------------------------- parse_attention


@pytest.mark.parametrize(
    "text, expected",
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("((word))", [("word", 1.21)]),
        ("(((word)))", [("word", 1.331)]),
        ("(word:1.5)", [("word", 1.5)]),
        ("(word: 1.5 )", [("word", 1.5)]),
        ("(word:.5)", [("word", 0.5)]),
        ("(word:-0.5)", [("word", -0.5)]),
        ("(word:+2)", [("word", 2.0)]),
        ("[word]", [("word", 1 / 1.1)]),
        ("[[word]]", [("word", 1 / 1.21)]),
        ("([word])", [("word", 1.0)]),
        ("((a:1.3))", [("a", 1.43)]),
        ("(a (b) c)", [("a ", 1.1), ("b", 1.21), (" c", 1.1)]),
        ("(a:1.2) (b:1.2)", [("a", 1.2), (" ", 1.0), ("b", 1.2)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        ("(a:2)(b)", [("a", 2.0), ("b", 1.1)]),
        ("(a:1.1)(b)", [("ab", 1.1)]),  # runs of equal weight merge
    ],
)
def test_attention_weights(text, expected):
    assert parse_attention(text) == approx_chunks(expected)


def test_attention_documented_example():
    assert parse_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).") == approx_chunks(
        [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1),
         ("hill", 0.55), (", sun, ", 1.1), ("sky", 1.4641), (".", 1.1)]
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"\(literal\]", [("(literal]", 1.0)]),
        (r"\[x\]", [("[x]", 1.0)]),
        (r"a \\ b", [("a \\ b", 1.0)]),
        (r"(a \(b\))", [("a (b)", 1.1)]),
        (r"\(a:1.5\)", [("(a:1.5)", 1.0)]),
        ("a\\b", [("ab", 1.0)]),  # a backslash before anything else is dropped
    ],
)
def test_attention_escapes(text, expected):
    assert parse_attention(text) == approx_chunks(expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("a (b c", [("a ", 1.0), ("b c", 1.1)]),
        ("a [b c", [("a ", 1.0), ("b c", 1 / 1.1)]),
        ("((a) b", [("a", 1.21), (" b", 1.1)]),
        ("a) b", [("a) b", 1.0)]),  # a stray closer is literal text
        ("a] b", [("a] b", 1.0)]),
        ("(a) b] c", [("a", 1.1), (" b] c", 1.0)]),
        ("(a]", [("a]", 1.1)]),  # ] closes no ( : literal inside the unclosed (
        ("x :1.5) y", [("x :1.5) y", 1.0)]),  # a weight with no ( open is text
        ("[a:1.5]", [("a:1.5", 1 / 1.1)]),  # square brackets take no weight
        ("(a:b)", [("a:b", 1.1)]),
        ("(a:1.2.3)", [("a:1.2.3", 1.1)]),
        ("a: b", [("a: b", 1.0)]),
    ],
)
def test_attention_unbalanced_and_odd(text, expected):
    assert parse_attention(text) == approx_chunks(expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("a   BREAK\nb", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("BREAK", [("BREAK", -1.0)]),
        ("a BREAK", [("a", 1.0), ("BREAK", -1.0)]),
        ("a BREAK BREAK b", [("a", 1.0), ("BREAK", -1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.0), ("b", 1.1)]),
        ("(a) BREAK (b)", [("a", 1.1), ("BREAK", -1.0), ("b", 1.1)]),
        ("a break b", [("a break b", 1.0)]),  # upper case only
        ("BREAKfast xBREAK", [("BREAKfast xBREAK", 1.0)]),  # whole word only
    ],
)
def test_attention_break(text, expected):
    assert parse_attention(text) == approx_chunks(expected)


@pytest.mark.parametrize("text", ["", "()", "[]", "(())", "\\"])
def test_attention_empty(text):
    assert parse_attention(text) == [("", 1.0)]


def test_attention_round_trip_of_plain_text_keeps_every_character():
    text = "a photo of a cat, 4k: sharp, high-detail; 50% off!"
    assert parse_attention(text) == [(text, 1.0)]


# --------------------------------------------------------------------------- schedule


@pytest.mark.parametrize(
    "prompt, steps, expected",
    [
        ("test", 10, [(10, "test")]),
        ("a [b:3]", 10, [(3, "a "), (10, "a b")]),
        ("a [b: 3]", 10, [(3, "a "), (10, "a b")]),
        ("a [b:3 ]", 10, [(3, "a "), (10, "a b")]),
        ("a [b::3]", 10, [(3, "a b"), (10, "a ")]),
        ("a [cat:dog:3]", 10, [(3, "a cat"), (10, "a dog")]),
        ("a [cat:dog:0.5]", 10, [(5, "a cat"), (10, "a dog")]),
        ("a [b:.5] c", 10, [(5, "a  c"), (10, "a b c")]),
        ("[cat:dog:0.5]", 25, [(12, "cat"), (25, "dog")]),  # 12.5 rounds down
        ("[cat:dog:1.5]", 10, [(1, "cat"), (10, "dog")]),  # >= 1 is a step number
        ("[cat:dog:1]", 10, [(1, "cat"), (10, "dog")]),
        ("[cat:dog:20]", 10, [(10, "cat")]),  # capped at steps
        ("[cat:dog:0]", 10, [(10, "dog")]),
        ("[cat:dog:-3]", 10, [(10, "dog")]),
        ("[cat:dog:0.05]", 10, [(10, "dog")]),  # 0.5 steps -> step 0: `to` throughout
        ("[cat:dog:1e0]", 10, [(1, "cat"), (10, "dog")]),
        ("a [b : c : 1] d", 10, [(1, "a b  d"), (10, "a  c  d")]),  # text whitespace kept
        ("a [[[b]]:2]", 10, [(2, "a "), (10, "a [[b]]")]),
        ("[(a:2):3]", 10, [(3, ""), (10, "(a:2)")]),
        ("[(a:1.2):(b:0.8):5]", 10, [(5, "(a:1.2)"), (10, "(b:0.8)")]),
        ("a[b:[c:d:2]:1]e", 10, [(1, "abe"), (2, "ace"), (10, "ade")]),
        ("[a:b:3] [c:d:6]", 10, [(3, "a c"), (6, "b c"), (10, "b d")]),
        ("[a:b:5] [c:d:5]", 10, [(5, "a c"), (10, "b d")]),
        ("[a:a:5]", 10, [(10, "a")]),  # equal consecutive texts merge
        ("(x [a:b:2])", 4, [(2, "(x a)"), (4, "(x b)")]),
        ("[\\[a\\]:b:2]", 4, [(2, "\\[a\\]"), (4, "b")]),  # escapes stay for parse_attention
        ("[a\\:b:2]", 4, [(2, ""), (4, "a\\:b")]),  # an escaped colon does not separate
    ],
)
def test_schedule_editing(prompt, steps, expected):
    assert schedule(prompt, steps) == expected


@pytest.mark.parametrize(
    "prompt, steps, expected",
    [
        ("[a|b]", 4, [(1, "a"), (2, "b"), (3, "a"), (4, "b")]),
        ("[a|(b:1.1)]", 3, [(1, "a"), (2, "(b:1.1)"), (3, "a")]),
        ("[fe|]male", 4, [(1, "female"), (2, "male"), (3, "female"), (4, "male")]),
        ("[fe|||]male", 6, [(1, "female"), (4, "male"), (5, "female"), (6, "male")]),
        ("[a|b|c] x", 5, [(1, "a x"), (2, "b x"), (3, "c x"), (4, "a x"), (5, "b x")]),
        ("[a|a]", 4, [(4, "a")]),
        ("[[a|b]:c:2]", 4, [(1, "a"), (2, "b"), (4, "c")]),
        ("[a|[b:c:2]]", 4, [(1, "a"), (2, "b"), (3, "a"), (4, "c")]),
    ],
)
def test_schedule_alternation(prompt, steps, expected):
    assert schedule(prompt, steps) == expected


@pytest.mark.parametrize(
    "prompt",
    [
        "a [unbalanced",
        "a [b:c]",  # no number
        "[a:b:c:3]",  # three colons
        "[a|b:3]",  # | and : at one level
        "[word]",
        "[]",
        "(a:1.2)",
        "((a:1.2))",
        "a] b",
        "\\[a:b:3\\]",  # escaped brackets
        "[a:b):3]",  # unbalanced bracket inside
        "[a:b:3",
        "a [{b|d{:.5] c",
    ],
)
def test_schedule_literal(prompt):
    assert schedule(prompt, 10) == [(10, prompt)]


def test_schedule_malformed_group_keeps_other_groups():
    assert schedule("((a][:b:c [d:3]", 10) == [(3, "((a][:b:c "), (10, "((a][:b:c d")]
    assert schedule("[x:y] [d:3]", 10) == [(3, "[x:y] "), (10, "[x:y] d")]


def test_schedule_does_not_touch_attention_weights():
    prompt = "(masterpiece:1.2), [cat:dog:0.5], (detailed:0.8)"
    assert schedule(prompt, 10) == [
        (5, "(masterpiece:1.2), cat, (detailed:0.8)"),
        (10, "(masterpiece:1.2), dog, (detailed:0.8)"),
    ]


def test_schedule_last_step_is_steps_and_covers_all():
    for steps in (1, 2, 7, 30):
        out = schedule("[a:[b|c]:0.3] [d::0.7]", steps)
        assert out[-1][0] == steps
        assert [s for s, _ in out] == sorted({s for s, _ in out})


def test_schedule_rejects_bad_steps():
    with pytest.raises(ValueError, match="steps"):
        schedule("a", 0)


def test_schedule_then_attention_compose():
    (step1, first), (step2, second) = schedule("a [(cat:1.5):dog:2]", 4)
    assert (step1, step2) == (2, 4)
    assert parse_attention(first) == [("a ", 1.0), ("cat", 1.5)]
    assert parse_attention(second) == [("a dog", 1.0)]


# --------------------------------------------------------------------------- split_and


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a cat :1.2 AND a dog", [("a cat", 1.2), ("a dog", 1.0)]),
        ("a cat", [("a cat", 1.0)]),
        ("a cat AND a dog AND a bird:0.5", [("a cat", 1.0), ("a dog", 1.0), ("a bird", 0.5)]),
        ("a:-1 AND b : 2.", [("a", -1.0), ("b", 2.0)]),
        ("a:.5", [("a", 0.5)]),
        ("(a:1.2) AND b", [("(a:1.2)", 1.0), ("b", 1.0)]),  # attention weight, not AND weight
        ("SAND AND ANDROID and", [("SAND", 1.0), ("ANDROID and", 1.0)]),  # whole word, upper
        ("a AND", [("a", 1.0), ("", 1.0)]),
        ("", [("", 1.0)]),
        ("ratio 16:9", [("ratio 16", 9.0)]),  # as the web UI: trailing :number is a weight
        ("[a:b:0.5] AND c", [("[a:b:0.5]", 1.0), ("c", 1.0)]),
    ],
)
def test_split_and(prompt, expected):
    assert split_and(prompt) == expected


# --------------------------------------------------------------------------- extra networks


def test_extract_extra_networks():
    text, nets = extract_extra_networks("a cat <lora:ink_style:0.8>, <hypernet:anime:1> dog")
    assert text == "a cat ,  dog"  # only the tags go; the text around them stays
    assert nets == [("lora", "ink_style", ["0.8"]), ("hypernet", "anime", ["1"])]


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("plain", ("plain", [])),
        ("<lora:x>", ("", [("lora", "x", [])])),
        ("<lora:x:0.5:te=1>", ("", [("lora", "x", ["0.5", "te=1"])])),
        ("a <3 b", ("a <3 b", [])),
        ("<:x:1> <lora:>", ("<:x:1> <lora:>", [])),
        ("(a:1.2) <lyco:y:0.3>", ("(a:1.2) ", [("lyco", "y", ["0.3"])])),
    ],
)
def test_extract_extra_networks_cases(prompt, expected):
    assert extract_extra_networks(prompt) == expected


# --------------------------------------------------------------------------- has_syntax


@pytest.mark.parametrize(
    "prompt",
    ["a (cat)", "a [cat]", "[a:b:3]", "[a|b]", "a\\(b", "a AND b", "a BREAK b",
     "x <lora:y:1>", "a cat:1.2", "(a:1.2)"],
)
def test_has_syntax_true(prompt):
    assert has_syntax(prompt)


@pytest.mark.parametrize(
    "prompt", ["", "a photo of a cat", "ratio 3:4 wide", "and break", "a <3 b", "ANDROID BREAKS"]
)
def test_has_syntax_false_for_plain_prompts(prompt):
    assert not has_syntax(prompt)


@pytest.mark.parametrize("prompt", ["", "a photo of a cat", "ratio 3:4 wide", "and break"])
def test_plain_prompts_pass_through_unchanged(prompt):
    assert extract_extra_networks(prompt) == (prompt, [])
    assert split_and(prompt) == [(prompt, 1.0)]
    assert schedule(prompt, 20) == [(20, prompt)]
    assert parse_attention(prompt) == [(prompt, 1.0)]


def test_import_needs_no_torch():
    code = "import sys, t2i.prompts; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
