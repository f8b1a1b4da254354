"""Parity of minedit's tokenizer with open_clip's (the same algorithm and vocabulary file)."""
import random
import warnings

import pytest
import torch
from hypothesis import given, settings, strategies as st

from minedit import toyworld as tw
from minedit.tokenizer import default_tokenizer, tokenize

PIECES = ["a photo of a cat", "  Hello,   WORLD!! ", "&amp;", "&lt;b&gt;bold&lt;/b&gt;", "&amp;amp;", "café", "naïve",
          "résumé", "Straße", "😀", "👍🏽", "🇫🇷", "東京", "مرحبا", "Привет", "\t", "\n\n", "   ", "don't", "we'll",
          "it's", "I'M", "12345", "3.14159", "½", "x²", "ﬁ", "“quotes”", "‘single’", "—", "…", "\u00a0", "\u200b",
          "Ã©", "e\u0301", "ＡＢＣ", "in neon lights", "!!!", "???", "#hashtag", "@user", "http://x.org/a?b=c", "C++",
          "a-b_c", "ALLCAPS", "camelCase", "\x00", "\x7f", "<b>", "🙂🙃", "zzzzzzzzzzzzzzzzzzzz", "¡Hola!"]


def nasty_strings(n, seed=0):
    rng = random.Random(seed)
    out = list(PIECES)
    while len(out) < n:
        k = rng.randint(1, 6)
        out.append(rng.choice(["", " ", "  ", "\t"]).join(rng.choice(PIECES) for _ in range(k)))
    return out


def test_known_ids():
    assert tokenize("a photo of a cat")[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenize("  Hello,   WORLD!! &amp; café  ")[0, :8].tolist() == [49406, 3306, 267, 1002, 748, 261, 15304, 49407]
    t = tokenize(["", "x"], context_length=10)
    assert t.dtype == torch.long and t.shape == (2, 10) and t[0, :3].tolist() == [49406, 49407, 0]


def test_parity_with_open_clip_on_nasty_strings(open_clip):
    texts = nasty_strings(1200) + tw.vocabulary_texts(100)
    ref = open_clip.get_tokenizer("ViT-B-32")
    assert torch.equal(tokenize(texts), ref(texts))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_parity_with_open_clip_on_random_unicode(text):
    from _compat import import_open_clip
    if "<|" in text:  # OpenAI (and minedit) read a literal <|endoftext|> as the special token; open_clip does not
        return
    ref = import_open_clip().get_tokenizer("ViT-B-32")
    assert torch.equal(tokenize([text]), ref([text]))


def test_truncation_keeps_end_token_and_warns():
    with pytest.warns(UserWarning, match="truncated"):
        t = tokenize(["word " * 100], context_length=16)
    assert t.shape == (1, 16) and t[0, -1] == 49407 and (t[0] != 0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenize(["short"], context_length=16)


def test_decode_round_trip():
    tok = default_tokenizer()
    assert tok.decode(tok.encode("a big red star on the left")) == "a big red star on the left"
