"""
The toy world: a procedural world of shapes, colours, positions and styles, where every caption and
every edit is exact. minedit trains every component on it and measures every quality claim against it.

A Scene is a background colour, one or two objects on a 3x3 grid, and a style. Rendering is pure numpy,
anti-aliased by 4x4 supersampling, and deterministic; shape masks are cached per (shape, size, cell,
resolution), so a 32 px scene is a handful of array blends. Scenes, captions and edit triplets are
drawn deterministically from (seed, split, index).

Splits are disjoint by construction: `test` scenes contain a held-out (shape, colour) pair that never
appears in `train` or `val`; `val` and `train` divide the remaining scenes by a hash of the scene.
One extra shape, CONCEPT, appears in images but is never named in any text (captions call it
"object"): it is the unnamed concept that textual inversion learns.

    python -m minedit.toyworld --out toyworld.png    # a grid of scenes and of edit triplets
"""

import hashlib
import random
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch

from minedit.utils import from_image

# -----------------------------------------------------------------------------
# the vocabulary of the world

SHAPES = ("circle", "square", "triangle", "star", "heart", "ring", "cross", "diamond")
CONCEPT = "crescent"            # drawn in images, never written in any caption or instruction
CONCEPT_WORD = "object"         # what captions call it
ALL_SHAPES = SHAPES + (CONCEPT,)
COLORS = {  # object colours, RGB in [0, 1]
    "red": (0.86, 0.14, 0.14), "orange": (0.97, 0.55, 0.08), "yellow": (0.95, 0.87, 0.16),
    "green": (0.16, 0.66, 0.24), "blue": (0.16, 0.32, 0.88), "purple": (0.56, 0.22, 0.76),
    "pink": (0.98, 0.52, 0.76), "white": (0.96, 0.96, 0.96),
}
BACKGROUNDS = dict(COLORS, black=(0.06, 0.06, 0.06), gray=(0.5, 0.5, 0.5))
SIZES = ("small", "big")
RADIUS = {"small": 0.115, "big": 0.165}  # as a fraction of the image side
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
STYLES = ("plain", "in neon lights", "at night", "as a pencil sketch", "in pastel colours")
EDIT_KINDS = ("recolor", "reshape", "move", "resize", "background", "style", "add", "remove", "noop")
SPLITS = ("train", "val", "test")
# test holds out one colour per shape (and one shape per colour): these pairs never occur in train/val
HELD_OUT = frozenset((s, list(COLORS)[(3 * i + 1) % len(COLORS)]) for i, s in enumerate(SHAPES))


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    pos: str


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple  # of Obj, one or two, in different cells
    style: str = "plain"

    def to_dict(self):
        return {"background": self.background, "style": self.style,
                "objects": [vars(o).copy() for o in self.objects]}

    @staticmethod
    def from_dict(d):
        return Scene(d["background"], tuple(Obj(**o) for o in d["objects"]), d["style"])


@dataclass(frozen=True)
class Edit:
    source: Scene
    instruction: str
    target: Scene
    kind: str  # one of EDIT_KINDS


def split_of(scene):
    """The split a scene belongs to: a pure function of the scene, so the splits cannot overlap."""
    if any((o.shape, o.color) in HELD_OUT for o in scene.objects):
        return "test"
    h = int(hashlib.md5(repr(scene).encode()).hexdigest()[:8], 16)
    return "val" if h % 10 == 0 else "train"


def reading_order(scene):
    """The scene's objects sorted by their cell, top left first (the order of POSITIONS)."""
    return sorted(scene.objects, key=lambda o: POSITIONS.index(o.pos))


def swap_attribute(scene, attr):
    """A two-object scene with `attr` (color, shape or size) exchanged between its objects: the same
    words in its caption, bound the other way (a test of binding, and a hard negative for it)."""
    a, b = scene.objects
    return replace(scene, objects=(replace(a, **{attr: getattr(b, attr)}), replace(b, **{attr: getattr(a, attr)})))

# -----------------------------------------------------------------------------
# rendering


def _inside(shape, u, v):
    """Boolean mask of `shape` in unit coordinates (u right, v down, radius 1)."""
    r2 = u * u + v * v
    if shape == "circle":
        return r2 <= 1.0
    if shape == "square":
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.05
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.5 ** 2)
    if shape == "cross":
        return ((np.abs(u) <= 0.32) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.32) & (np.abs(u) <= 0.95))
    if shape == "heart":
        x, y = u * 1.25, -(v * 1.25 + 0.15)
        return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
    if shape == "crescent":
        return (r2 <= 1.0) & ((u - 0.45) ** 2 + (v + 0.1) ** 2 >= 0.8 ** 2)
    if shape == "triangle":
        pts = [(0.0, -1.0), (0.95, 0.75), (-0.95, 0.75)]
    elif shape == "star":
        pts = [(np.sin(k * np.pi / 5) * (1.0 if k % 2 == 0 else 0.45),
                -np.cos(k * np.pi / 5) * (1.0 if k % 2 == 0 else 0.45)) for k in range(10)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    inside = np.zeros(u.shape, dtype=bool)  # even-odd rule over the polygon's edges
    for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]):
        crosses = (y0 > v) != (y1 > v)
        xcross = x0 + (v - y0) * (x1 - x0) / (y1 - y0 + 1e-12)
        inside ^= crosses & (u < xcross)
    return inside


def _blur(a, sigma):
    """Separable Gaussian blur of a 2D array (numpy; only used while building cached masks)."""
    k = np.arange(-int(3 * sigma) - 1, int(3 * sigma) + 2)
    w = np.exp(-0.5 * (k / sigma) ** 2)
    w /= w.sum()
    a = np.apply_along_axis(lambda r: np.convolve(r, w, mode="same"), 0, a)
    return np.apply_along_axis(lambda r: np.convolve(r, w, mode="same"), 1, a)


@lru_cache(maxsize=4096)
def _masks(shape, size, pos, res):
    """(fill, outline, glow) coverage masks of one object, each float32 (res, res) in [0, 1]."""
    ss = 4  # supersampling factor: anti-aliasing by averaging ss x ss samples per pixel
    row, col = divmod(POSITIONS.index(pos), 3)
    cx, cy, r = (col + 0.5) / 3 * res, (row + 0.5) / 3 * res, RADIUS[size] * res
    t = (np.arange(res * ss) + 0.5) / ss
    u, v = np.meshgrid((t - cx) / r, (t - cy) / r)  # (res*ss, res*ss) each
    hi = _inside(shape, u, v)
    eroded = hi.copy()
    for _ in range(max(1, round(ss * res / 32))):  # erode by about one output pixel at 32 px
        e = eroded.copy()
        e[1:] &= eroded[:-1]; e[:-1] &= eroded[1:]; e[:, 1:] &= eroded[:, :-1]; e[:, :-1] &= eroded[:, 1:]
        eroded = e
    down = lambda m: m.reshape(res, ss, res, ss).mean(axis=(1, 3)).astype(np.float32)
    fill, outline = down(hi), down(hi & ~eroded)
    glow = _blur(outline, 1.3 * res / 32)
    glow = np.clip(glow / max(glow.max(), 1e-6), 0, 1).astype(np.float32)
    return fill, outline, glow


@lru_cache(maxsize=8)
def _hatch(res):
    y, x = np.mgrid[0:res, 0:res]
    return (((x + y) * 32 // res) % 3 == 0).astype(np.float32)


def render(scene, res=32):
    """Render a Scene to a uint8 array (res, res, 3)."""
    bg = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    style = scene.style
    if style == "in neon lights":
        canvas = np.broadcast_to(0.3 * bg, (res, res, 3)).copy()
    elif style == "as a pencil sketch":
        canvas = np.broadcast_to(0.75 + 0.25 * bg, (res, res, 3)).copy()
    else:
        canvas = np.broadcast_to(bg, (res, res, 3)).copy()
    for o in scene.objects:
        fill, outline, glow = _masks(o.shape, o.size, o.pos, res)
        c = np.array(COLORS[o.color], dtype=np.float32)
        if style == "in neon lights":  # a glowing, saturated outline, its core nearly white
            canvas += 0.9 * glow[..., None] * c
            a = outline[..., None]
            canvas = canvas * (1 - a) + (0.55 * c + 0.45) * a
        elif style == "as a pencil sketch":  # a dark outline and diagonal hatching in the object's colour
            h = (fill * _hatch(res) * (1 - outline) * 0.7)[..., None]
            canvas = canvas * (1 - h) + c * h
            a = outline[..., None]
            canvas = canvas * (1 - a) + 0.6 * c * a
        else:
            a = fill[..., None]
            canvas = canvas * (1 - a) + c * a
    if style == "at night":
        canvas = canvas * np.array([0.32, 0.36, 0.55], dtype=np.float32) + np.array([0.0, 0.01, 0.05], np.float32)
    elif style == "in pastel colours":
        canvas = 0.5 * canvas + 0.5
    return (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)


def render_batch(scenes, res=32):
    """Render scenes to a float tensor (B, 3, res, res) in [-1, 1], the range models use."""
    return from_image(np.stack([render(s, res) for s in scenes]))

# -----------------------------------------------------------------------------
# captions

SIZE_WORDS = {"small": ("small", "little"), "big": ("big", "large")}
AT = {  # where an object is
    "top left": ("in the top left corner", "at the top left"), "top": ("at the top", "near the top"),
    "top right": ("in the top right corner", "at the top right"), "left": ("on the left", "at the left"),
    "center": ("in the center", "in the middle"), "right": ("on the right", "at the right"),
    "bottom left": ("in the bottom left corner", "at the bottom left"), "bottom": ("at the bottom", "near the bottom"),
    "bottom right": ("in the bottom right corner", "at the bottom right"),
}
TO = {p: "the " + ("middle" if p == "center" else p + (" corner" if " " in p else "")) for p in POSITIONS}
SCENE_TEMPLATES = ("{objs} on {a} {bg} background{style}", "a picture of {objs} on {a} {bg} background{style}",
                   "{objs}, {bg} background{style}", "{A} {bg} background with {objs}{style}",
                   "there is {objs} on {a} {bg} background{style}")


def article(word):
    return "an" if word[0] in "aeiou" else "a"


def noun(shape):
    return CONCEPT_WORD if shape == CONCEPT else shape


def describe(o, rng=None):
    """'a big red star on the left' (canonical when rng is None, a paraphrase otherwise)."""
    pick = (lambda xs: xs[0]) if rng is None else rng.choice
    size = pick(SIZE_WORDS[o.size])
    return f"{article(size)} {size} {o.color} {noun(o.shape)} {pick(AT[o.pos])}"


def caption(scene, rng=None):
    """English caption of a scene: the canonical one when rng is None, else a random paraphrase."""
    pick = (lambda xs: xs[0]) if rng is None else rng.choice
    objs = " and ".join(describe(o, rng) for o in scene.objects)
    style = "" if scene.style == "plain" else " " + scene.style
    a = article(scene.background)
    return pick(SCENE_TEMPLATES).format(objs=objs, bg=scene.background, style=style, a=a, A=a.capitalize())

# -----------------------------------------------------------------------------
# sampling scenes


def _rng(seed, split, index, what):
    return random.Random(f"{what}:{seed}:{split}:{index}")  # str seeds are hashed with sha512: stable


def _random_obj(rng, taken_pos=(), taken_shapes=(), bg=None, concept_ok=True):
    shapes = [s for s in SHAPES if s not in taken_shapes]
    shape = CONCEPT if concept_ok and rng.random() < 0.06 else rng.choice(shapes)
    color = rng.choice([c for c in COLORS if c != bg])
    pos = rng.choice([p for p in POSITIONS if p not in taken_pos])
    return Obj(shape, color, rng.choice(SIZES), pos)


def _random_scene(rng, force_held_out=False):
    style = rng.choice(STYLES) if rng.random() < 0.6 else "plain"
    bg = rng.choice(list(BACKGROUNDS))
    if force_held_out:
        shape, color = rng.choice(sorted(HELD_OUT))
        while color == bg:
            bg = rng.choice(list(BACKGROUNDS))
        first = Obj(shape, color, rng.choice(SIZES), rng.choice(POSITIONS))
    else:
        first = _random_obj(rng, bg=bg)
    objects = [first]
    if first.shape != CONCEPT and rng.random() < 0.45:  # the concept only appears alone
        objects.append(_random_obj(rng, (first.pos,), (first.shape,), bg, concept_ok=False))
        rng.shuffle(objects)
    return Scene(bg, tuple(objects), style)


def sample_scene(seed, split, index):
    """The index-th scene of a split, deterministic in (seed, split, index)."""
    rng = _rng(seed, split, index, "scene")
    while True:
        s = _random_scene(rng, force_held_out=(split == "test"))
        if split_of(s) == split:
            return s

# -----------------------------------------------------------------------------
# edits

RECOLOR = ("make the {s} {c}", "turn the {s} {c}", "change the colour of the {s} to {c}", "paint the {s} {c}")
RESHAPE = ("turn the {s} into {an} {n}", "replace the {s} with {an} {n}", "make the {s} {an} {n}",
           "change the {s} into {an} {n}")
MOVE = ("move the {s} to {to}", "put the {s} {at}", "place the {s} {at}", "shift the {s} to {to}")
BIGGER = ("make the {s} bigger", "enlarge the {s}", "make the {s} larger", "make the {s} big")
SMALLER = ("make the {s} smaller", "shrink the {s}", "make the {s} small", "reduce the size of the {s}")
BACKGROUND = ("make the background {c}", "change the background to {c}", "on {a} {c} background",
              "use {a} {c} background")
STYLE = {
    "in neon lights": ("in neon lights", "make it neon", "show it in neon lights", "turn it into neon lights"),
    "at night": ("at night", "make it night", "show it at night", "turn day into night"),
    "as a pencil sketch": ("as a pencil sketch", "make it a pencil sketch", "draw it as a pencil sketch",
                           "turn it into a sketch"),
    "in pastel colours": ("in pastel colours", "make it pastel", "use pastel colours", "in pastel colors"),
    "plain": ("make it plain", "remove the style", "as a plain picture", "back to a plain picture"),
}
ADD = ("add {an} {size} {c} {n} {at}", "put {an} {size} {c} {n} {at}", "draw {an} {size} {c} {n} {at}")
REMOVE = ("remove the {s}", "delete the {s}", "take away the {s}", "erase the {s}")


def _apply(rng, src, kind):
    """One edit of `kind` on `src`: (instruction, target). A no-op edit picks a kind and changes nothing."""
    objs, bg = list(src.objects), src.background
    i = rng.randrange(len(objs))
    o = objs[i]
    s = noun(o.shape)
    others = [p for j, p in enumerate(objs) if j != i]
    put = lambda new: replace(src, objects=tuple(new if j == i else p for j, p in enumerate(objs)))
    if kind == "recolor":
        c = rng.choice([c for c in COLORS if c not in (o.color, bg)])
        return rng.choice(RECOLOR).format(s=s, c=c), put(replace(o, color=c))
    if kind == "reshape":
        n = rng.choice([x for x in SHAPES if x != o.shape and all(x != p.shape for p in others)])
        return rng.choice(RESHAPE).format(s=s, an=article(n), n=n), put(replace(o, shape=n))
    if kind == "move":
        p = rng.choice([p for p in POSITIONS if p != o.pos and all(p != q.pos for q in others)])
        return rng.choice(MOVE).format(s=s, to=TO[p], at=rng.choice(AT[p])), put(replace(o, pos=p))
    if kind == "resize":
        bigger = o.size == "small"
        return rng.choice(BIGGER if bigger else SMALLER).format(s=s), put(replace(o, size="big" if bigger else "small"))
    if kind == "background":
        c = rng.choice([c for c in BACKGROUNDS if c != bg and all(c != p.color for p in objs)])
        return rng.choice(BACKGROUND).format(c=c, a=article(c)), replace(src, background=c)
    if kind == "style":
        st = rng.choice([st for st in STYLES if st != src.style])
        return rng.choice(STYLE[st]), replace(src, style=st)
    if kind == "add":
        assert len(objs) == 1 and o.shape != CONCEPT
        new = _random_obj(rng, (o.pos,), (o.shape,), bg, concept_ok=False)
        text = rng.choice(ADD).format(an=article(new.size), size=new.size, c=new.color, n=new.shape,
                                      at=rng.choice(AT[new.pos]))
        return text, replace(src, objects=(o, new))
    if kind == "remove":
        assert len(objs) == 2
        return rng.choice(REMOVE).format(s=s), replace(src, objects=tuple(others))
    if kind == "noop":  # an instruction that is already true, or that names something absent
        how = rng.choice(("recolor", "move", "resize", "background", "style", "remove"))
        if how == "recolor":
            text = rng.choice(RECOLOR).format(s=s, c=o.color)
        elif how == "move":
            text = rng.choice(MOVE).format(s=s, to=TO[o.pos], at=rng.choice(AT[o.pos]))
        elif how == "resize":
            text = rng.choice(BIGGER[-1:] if o.size == "big" else SMALLER[2:3]).format(s=s)
        elif how == "background":
            text = rng.choice(BACKGROUND).format(c=bg, a=article(bg))
        elif how == "style":
            text = rng.choice(STYLE[src.style])
        else:
            absent = rng.choice([x for x in SHAPES if all(x != p.shape for p in objs)])
            text = rng.choice(REMOVE).format(s=absent)
        return text, src
    raise ValueError(f"unknown edit kind {kind!r}")


def _allowed(scene, kind):
    if kind == "add":
        return len(scene.objects) == 1 and scene.objects[0].shape != CONCEPT
    if kind == "remove":
        return len(scene.objects) == 2
    return True


def sample_edit(seed, split, index, kind=None):
    """The index-th edit triplet of a split. Train and val triplets have both scenes in their split;
    a test triplet has a held-out pair in its source or its target."""
    rng = _rng(seed, split, index, "edit")
    while True:
        src = _random_scene(rng, force_held_out=(split == "test" and rng.random() < 0.5))
        k = kind or rng.choice(EDIT_KINDS)
        if not _allowed(src, k):
            continue
        text, tgt = _apply(rng, src, k)
        a, b = split_of(src), split_of(tgt)
        ok = {"train": a == b == "train", "val": a == "val" and b != "test", "test": "test" in (a, b)}[split]
        if ok:
            return Edit(src, text, tgt, k)


def vocabulary_texts(n=4000, seed=0):
    """A deterministic sample of every kind of text the toy world writes (captions, paraphrases and
    instructions of every edit kind), used to list the tokens a toy model needs."""
    texts = []
    for i in range(n):
        s = sample_scene(seed, SPLITS[i % 3], i)
        texts += [caption(s), caption(s, _rng(seed, "vocab", i, "caption"))]
        texts.append(sample_edit(seed, SPLITS[i % 3], i, kind=EDIT_KINDS[i % len(EDIT_KINDS)]).instruction)
    return texts


def concept_scenes(n, seed=0):
    """n plain scenes of the held-out concept, alone, in varied colours, sizes and places."""
    rng = random.Random(f"concept:{seed}")
    out = []
    for _ in range(n):
        bg = rng.choice(list(BACKGROUNDS))
        color = rng.choice([c for c in COLORS if c != bg])
        out.append(Scene(bg, (Obj(CONCEPT, color, rng.choice(SIZES), rng.choice(POSITIONS)),), "plain"))
    return out


def concept_images(n, seed=0, res=32):
    """n images (n, 3, res, res) in [-1, 1] of the held-out concept."""
    return render_batch(concept_scenes(n, seed), res)

# -----------------------------------------------------------------------------
# datasets


class SceneDataset(torch.utils.data.Dataset):
    """(image (3, res, res) in [-1, 1], caption) pairs of one split. With n=None the dataset is
    effectively infinite and renders on the fly; with `cache` a fixed range [0, n) is rendered once and
    kept in a compressed .npz. Captions are paraphrased (deterministically per index) unless
    paraphrase=False."""

    def __init__(self, split="train", n=None, seed=0, res=32, paraphrase=True, cache=None):
        assert split in SPLITS, split
        self.split, self.seed, self.res, self.paraphrase = split, seed, res, paraphrase
        self.n = n if n is not None else 2 ** 31 - 1
        self.images = None
        if cache is not None:
            assert n is not None, "a cached dataset needs a fixed size n"
            self.images = _cached(cache, "scenes", split, n, seed, res,
                                  lambda: np.stack([render(self.scene(i), res) for i in range(n)]))

    def __len__(self):
        return self.n

    def scene(self, i):
        return sample_scene(self.seed, self.split, i)

    def caption(self, i):
        return caption(self.scene(i), _rng(self.seed, self.split, i, "caption") if self.paraphrase else None)

    def __getitem__(self, i):
        img = self.images[i] if self.images is not None else render(self.scene(i), self.res)
        return from_image(img), self.caption(i)


class EditDataset(torch.utils.data.Dataset):
    """Edit triplets as dicts: source, target (3, res, res) in [-1, 1], instruction, kind,
    source_caption, target_caption. Infinite (n=None) or cached, as SceneDataset.

    kinds: None draws every edit kind uniformly (sample_edit's own mix); a sequence of EDIT_KINDS names
    gives triplet i the kind kinds[i % len(kinds)], so a repeated name weighs that kind more."""

    def __init__(self, split="train", n=None, seed=0, res=32, cache=None, kinds=None):
        assert split in SPLITS, split
        if kinds is not None and (not kinds or set(kinds) - set(EDIT_KINDS)):
            raise ValueError(f"kinds must name some of {', '.join(EDIT_KINDS)}, got {kinds!r}")
        self.split, self.seed, self.res = split, seed, res
        self.kinds = tuple(kinds) if kinds is not None else None
        self.mix = "-" + "+".join(self.kinds) if self.kinds else ""  # names a mix's cache files ("" for uniform)
        self.n = n if n is not None else 2 ** 31 - 1
        self.images = None
        if cache is not None:
            assert n is not None, "a cached dataset needs a fixed size n"
            self.images = _cached(cache, "edits" + self.mix, split, n, seed, res, lambda: np.stack(
                [np.stack([render(e.source, res), render(e.target, res)]) for e in map(self.edit, range(n))]))

    def __len__(self):
        return self.n

    def edit(self, i):
        return sample_edit(self.seed, self.split, i, kind=self.kinds[i % len(self.kinds)] if self.kinds else None)

    def __getitem__(self, i):
        e = self.edit(i)
        pair = self.images[i] if self.images is not None else np.stack([render(e.source, self.res), render(e.target, self.res)])
        x = from_image(pair)
        return {"source": x[0], "target": x[1], "instruction": e.instruction, "kind": e.kind,
                "source_caption": caption(e.source), "target_caption": caption(e.target)}


def _cached(folder, what, split, n, seed, res, build):
    import os
    from minedit.utils import atomic_path
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{what}-{split}-n{n}-seed{seed}-{res}px.npz")
    if os.path.exists(path):
        return np.load(path)["images"]
    images = build()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, images=images)
    return images

# -----------------------------------------------------------------------------
# a picture of the world


def grid_image(n_scenes=24, n_edits=8, res=64, seed=0, split="train"):
    """A PIL image: a grid of scenes with their captions' gist, then edit triplets source | target
    with the instruction written beside them."""
    from PIL import Image, ImageDraw
    cols, pad, label_w = 8, 4, 3 * res
    rows = (n_scenes + cols - 1) // cols
    width = cols * (res + pad) + pad
    height = rows * (res + pad) + pad + n_edits * (res + pad) + pad
    canvas = Image.new("RGB", (max(width, 2 * (res + pad) + label_w + pad), height), "white")
    for i in range(n_scenes):
        r, c = divmod(i, cols)
        canvas.paste(Image.fromarray(render(sample_scene(seed, split, i), res)), (pad + c * (res + pad), pad + r * (res + pad)))
    draw, y0 = ImageDraw.Draw(canvas), rows * (res + pad) + pad
    for j in range(n_edits):
        e = sample_edit(seed, split, j, kind=EDIT_KINDS[j % len(EDIT_KINDS)])
        y = y0 + j * (res + pad)
        canvas.paste(Image.fromarray(render(e.source, res)), (pad, y))
        canvas.paste(Image.fromarray(render(e.target, res)), (2 * pad + res, y))
        draw.text((3 * pad + 2 * res, y + res // 2 - 6), f"{e.kind}: \"{e.instruction}\"", fill="black")
    return canvas


def main(argv=None):
    import argparse
    from minedit.utils import save_image_atomic
    p = argparse.ArgumentParser(description="Write a grid PNG of toy-world scenes and edit triplets "
                                "(source | target, instruction beside them).")
    p.add_argument("--out", default="toyworld.png", help="output PNG (default: %(default)s)")
    p.add_argument("--scenes", type=int, default=24, help="number of scenes (default: %(default)s)")
    p.add_argument("--edits", type=int, default=9, help="number of edit triplets (default: %(default)s)")
    p.add_argument("--res", type=int, default=64, help="pixels per image (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default: %(default)s)")
    p.add_argument("--split", default="train", choices=SPLITS)
    args = p.parse_args(argv)
    if args.scenes < 0 or args.edits < 0 or not 8 <= args.res <= 512:
        p.exit(2, "error: --scenes/--edits must be >= 0 and --res between 8 and 512\n")
    from minedit.training import check_out
    check_out(args.out)
    save_image_atomic(grid_image(args.scenes, args.edits, args.res, args.seed, args.split), args.out)
    print(f"wrote {args.out}: {args.scenes} scenes and {args.edits} edits at {args.res} px (seed {args.seed})")


if __name__ == "__main__":
    main()
