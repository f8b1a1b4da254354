import random
import re

import numpy as np
import pytest
import torch

from minedit import toyworld as tw
from minedit.tokenizer import tokenize


def scenes(split, n, seed=0):
    return [tw.sample_scene(seed, split, i) for i in range(n)]


def test_rendering_is_deterministic_and_seeded():
    a = tw.render(tw.sample_scene(3, "train", 17))
    tw._masks.cache_clear()
    b = tw.render(tw.sample_scene(3, "train", 17))
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
    assert np.array_equal(a, b)
    assert [tw.sample_scene(0, "train", i) for i in range(50)] != [tw.sample_scene(1, "train", i) for i in range(50)]


@pytest.mark.parametrize("res", [32, 64])
def test_render_resolutions_draw_the_object_where_it_is(res):
    for pos in tw.POSITIONS:
        s = tw.Scene("black", (tw.Obj("square", "white", "big", pos),))
        img = tw.render(s, res).astype(float).mean(-1)
        row, col = divmod(tw.POSITIONS.index(pos), 3)
        cy, cx = int((row + 0.5) * res / 3), int((col + 0.5) * res / 3)
        assert img[cy, cx] > 200  # white object at its cell's centre
        assert img[0, 0] < 30 or pos == "top left"  # black background elsewhere
        # anti-aliasing: some edge pixels are partially covered
        assert ((img > 30) & (img < 220)).any()


def test_every_style_renders_differently_and_neon_is_dark():
    base = tw.Scene("blue", (tw.Obj("star", "yellow", "big", "center"),))
    imgs = {st: tw.render(tw.Scene(base.background, base.objects, st)).astype(float) for st in tw.STYLES}
    for a in tw.STYLES:
        for b in tw.STYLES:
            if a < b:
                assert np.abs(imgs[a] - imgs[b]).mean() > 5, (a, b)
    assert imgs["in neon lights"][0, 0].mean() < imgs["plain"][0, 0].mean() * 0.5  # dark background


def test_all_shapes_are_distinct():
    masks = {s: tw._masks(s, "big", "center", 32)[0] for s in tw.ALL_SHAPES}
    for a in tw.ALL_SHAPES:
        for b in tw.ALL_SHAPES:
            if a < b:
                assert np.abs(masks[a] - masks[b]).sum() > 8, (a, b)


def test_splits_are_disjoint_and_test_holds_out_combinations():
    sets = {sp: set(scenes(sp, 600)) for sp in tw.SPLITS}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    pairs = lambda ss: {(o.shape, o.color) for s in ss for o in s.objects}
    assert not pairs(sets["train"]) & tw.HELD_OUT and not pairs(sets["val"]) & tw.HELD_OUT
    assert all(any((o.shape, o.color) in tw.HELD_OUT for o in s.objects) for s in sets["test"])
    for sp, ss in sets.items():
        assert all(tw.split_of(s) == sp for s in ss)


def test_captions_mention_the_true_attributes():
    rng = random.Random(0)
    for s in scenes("train", 300):
        for text in (tw.caption(s), tw.caption(s, rng)):
            assert s.background in text
            for o in s.objects:
                assert o.color in text and tw.noun(o.shape) in text
                assert any(a in text for a in tw.AT[o.pos]) and any(w in text for w in tw.SIZE_WORDS[o.size])
            assert (s.style in text) == (s.style != "plain")
            assert " a a" not in text and not re.search(r"\ba [aeiou]", text)  # articles agree


def test_concept_is_drawn_but_never_named():
    ss = scenes("train", 3000)
    assert any(o.shape == tw.CONCEPT for s in ss for o in s.objects)  # it does appear in training images
    texts = [tw.caption(s) for s in ss] + tw.vocabulary_texts(1500)
    assert not any(re.search(tw.CONCEPT + "|moon", t) for t in texts)
    imgs = tw.concept_images(5)
    assert imgs.shape == (5, 3, 32, 32) and imgs.min() >= -1 and imgs.max() <= 1
    assert all(s.objects[0].shape == tw.CONCEPT for s in tw.concept_scenes(5))


def changed(a, b):
    """Which attributes differ between two scenes, by object cell."""
    out = set()
    if a.background != b.background:
        out.add("background")
    if a.style != b.style:
        out.add("style")
    pa, pb = {o.pos: o for o in a.objects}, {o.pos: o for o in b.objects}
    for pos in set(pa) | set(pb):
        if pos not in pa or pos not in pb:
            out.add("presence")
        else:
            out |= {k for k in ("shape", "color", "size") if getattr(pa[pos], k) != getattr(pb[pos], k)}
    return out


EXPECTED = {"recolor": {"color"}, "reshape": {"shape"}, "move": {"presence"}, "resize": {"size"},
            "background": {"background"}, "style": {"style"}, "add": {"presence"}, "remove": {"presence"},
            "noop": set()}


@pytest.mark.parametrize("kind", tw.EDIT_KINDS)
def test_each_edit_changes_exactly_what_it_says(kind):
    phrasings = set()
    for i in range(120):
        e = tw.sample_edit(0, "train", i, kind=kind)
        assert e.kind == kind
        assert changed(e.source, e.target) == EXPECTED[kind], (e.instruction, e.source, e.target)
        src, tgt = tw.render(e.source), tw.render(e.target)
        assert np.array_equal(src, tgt) == (kind == "noop")
        if kind == "move":  # the same object, somewhere else
            (a,), (b,) = set(e.source.objects) - set(e.target.objects), set(e.target.objects) - set(e.source.objects)
            assert (a.shape, a.color, a.size) == (b.shape, b.color, b.size) and a.pos != b.pos
        if kind == "add":
            assert len(e.target.objects) == len(e.source.objects) + 1
        if kind == "remove":
            assert len(e.target.objects) == len(e.source.objects) - 1
        phrasings.add(re.sub(r"\b(" + "|".join(list(tw.COLORS) + list(tw.BACKGROUNDS) + list(tw.SHAPES)) + r")\b", "X", e.instruction))
    assert len(phrasings) >= 3, phrasings


def test_bare_style_phrases_are_instructions():
    texts = {tw.sample_edit(0, "train", i, kind="style").instruction for i in range(300)}
    assert "in neon lights" in texts and "at night" in texts


def test_edit_splits():
    for i in range(200):
        e = tw.sample_edit(0, "train", i)
        assert tw.split_of(e.source) == tw.split_of(e.target) == "train"
        e = tw.sample_edit(0, "test", i)
        assert "test" in (tw.split_of(e.source), tw.split_of(e.target))


def test_captions_tokenize_sensibly():
    ids = tokenize(tw.vocabulary_texts(300), 40)
    assert (ids[:, 0] == 49406).all()
    assert ((ids == 49407).sum(1) == 1).all()  # nothing truncated within 40 tokens
    from minedit.tokenizer import default_tokenizer
    tok = default_tokenizer()
    for word in list(tw.COLORS) + list(tw.BACKGROUNDS) + list(tw.SHAPES):
        assert len(tok.encode(word)) == 1, word  # every attribute word is one token


def test_datasets_cached_equals_on_the_fly(tmp_path):
    live = tw.SceneDataset("val", n=20, seed=5)
    cached = tw.SceneDataset("val", n=20, seed=5, cache=tmp_path)
    again = tw.SceneDataset("val", n=20, seed=5, cache=tmp_path)  # read back from the .npz
    for i in (0, 7, 19):
        assert torch.equal(live[i][0], cached[i][0]) and torch.equal(live[i][0], again[i][0])
        assert live[i][1] == cached[i][1]
    assert len(tw.SceneDataset("train")) > 10 ** 9
    edits = tw.EditDataset("test", n=10, seed=1, cache=tmp_path)
    item = edits[3]
    assert item["source"].shape == (3, 32, 32) and isinstance(item["instruction"], str)
    assert torch.equal(item["target"], tw.EditDataset("test", n=10, seed=1)[3]["target"])


def test_edit_dataset_kinds_cycle_and_weigh(tmp_path):
    mix = ("style", "style", "noop")
    d = tw.EditDataset("train", n=9, seed=2, kinds=mix, cache=tmp_path)
    assert [d.edit(i).kind for i in range(6)] == list(mix) * 2
    assert torch.equal(d[4]["target"], tw.EditDataset("train", n=9, seed=2, kinds=mix)[4]["target"])
    plain = tw.EditDataset("train", n=9, seed=2, cache=tmp_path)  # its own cache file, the uniform mix
    assert [plain.edit(i) for i in range(9)] == [tw.sample_edit(2, "train", i) for i in range(9)]
    assert not np.array_equal(plain.images, d.images)  # a mix never reads another mix's cache
    with pytest.raises(ValueError, match="kinds"):
        tw.EditDataset("train", kinds=("style", "repaint"))


def test_grid_command_writes_a_png(tmp_path):
    from PIL import Image
    out = tmp_path / "grid.png"
    tw.main(["--out", str(out), "--scenes", "8", "--edits", "3", "--res", "32"])
    assert Image.open(out).size[0] > 100
