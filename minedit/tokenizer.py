"""
CLIP's tokenizer: byte-level BPE over OpenAI's 49,152-token vocabulary, with ftfy + html cleaning.
It follows OpenAI CLIP's simple_tokenizer.py and gives the same ids as open_clip's tokenizer
(tests/test_tokenizer.py checks this on thousands of generated strings).

The vocabulary file bpe_simple_vocab_16e6.txt.gz is OpenAI's (MIT licence, from openai/CLIP).

    >>> tokenize(["a photo of a cat"])[0, :7].tolist()
    [49406, 320, 1125, 539, 320, 2368, 49407]
"""

import gzip
import html
import warnings
from functools import lru_cache
from pathlib import Path

import ftfy
import regex
import torch

VOCAB_FILE = Path(__file__).resolve().parent / "bpe_simple_vocab_16e6.txt.gz"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"


@lru_cache()
def bytes_to_unicode():
    """A reversible map from the 256 byte values to printable unicode characters, so BPE can work on
    strings: printable Latin-1 bytes map to themselves, the others to code points from 256 up."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in keep}  # insertion order matters: it is the order of the first 256 ids
    rest = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(rest)})
    return table


def clean(text):
    """ftfy repair, html unescape (twice, for doubly escaped text), whitespace collapse, lower case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class Tokenizer:
    """Byte-level BPE. `encode` maps text to ids without start/end tokens; `decode` inverts it."""

    def __init__(self, vocab_file=VOCAB_FILE):
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        lines = gzip.open(vocab_file).read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]  # 48,894 merges
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {SOT: SOT, EOT: EOT}
        self.base_pattern = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
        self.pattern = regex.compile(self.base_pattern, regex.IGNORECASE)
        self.added = []
        self.sot, self.eot = self.encoder[SOT], self.encoder[EOT]

    def add_tokens(self, tokens):
        """Add whole tokens after the vocabulary (textual inversion's placeholders, e.g. "<s*>"); they
        are matched before BPE, so they are never split. Returns their ids (49408 up)."""
        ids = []
        for t in tokens:
            t = clean(t)
            if t not in self.encoder:
                i = len(self.decoder)
                self.encoder[t], self.decoder[i], self.cache[t] = i, t + "</w>", t
                self.added.append(t)
            ids.append(self.encoder[t])
        longest_first = sorted(self.added, key=len, reverse=True)  # "<s*>_1" before "<s*>"
        self.pattern = regex.compile("|".join(map(regex.escape, longest_first)) + "|" + self.base_pattern, regex.IGNORECASE)
        return ids

    def bpe(self, word):
        """Merge the symbols of one pre-token, lowest-ranked pair first; returns space-separated symbols."""
        if word in self.cache:
            return self.cache[word]
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        out = " ".join(symbols)
        self.cache[word] = out
        return out

    def encode(self, text):
        ids = []
        for piece in self.pattern.findall(clean(text)):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(piece).split(" "))
        return ids

    def decode(self, ids):
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ").strip()


@lru_cache()
def default_tokenizer():
    return Tokenizer()


def tokenize(texts, context_length=77, tokenizer=None):
    """str or list of str -> LongTensor (N, context_length): [SOT] ids [EOT] then zeros. Text that does
    not fit is truncated, keeping EOT last, with a warning (never an exception)."""
    tok = tokenizer or default_tokenizer()
    if isinstance(texts, str):
        texts = [texts]
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [tok.sot] + tok.encode(t) + [tok.eot]
        if len(ids) > context_length:
            warnings.warn(f"text truncated to {context_length} tokens: {t[:40]!r}...", stacklevel=2)
            ids = ids[:context_length - 1] + [tok.eot]
        out[i, :len(ids)] = torch.tensor(ids)
    return out
