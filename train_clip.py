"""
Train a small CLIP from scratch on toy-world (image, caption) pairs with the symmetric contrastive loss
(Radford et al. 2021). Scenes are rendered on the fly (about 20k per second, so never the bottleneck)
and captions are paraphrased afresh at every step.

Random batches can be told apart by colour, background and style alone, so a plain CLIP learns little
about shape and position. Two kinds of hard negatives push against that (as in NegCLIP, Yuksekgonul et
al. 2023): half of each batch is the other half with one attribute edited (mostly shape or position),
and each image also meets an extra caption of its own scene with one attribute changed. With
--swap-images N, the first N images of a step also pick their own caption among all its one-attribute
swaps (every shape, every free cell or every colour for one object). No negative ever contains a
held-out test combination.

Contrastive training alone barely learns shape here: captions that differ in one shape word start with
near-identical text embeddings, and neither tower gets a gradient to separate shapes (README, "CLIP").
--pretrain-steps N first teaches the image tower shape and colour by supervised classification of
one-object scenes (a linear head on the image embedding, thrown away afterwards), which breaks that
symmetry. The shipped recipe does so with a small ResNet image tower, the toy world's 32 px scenes
upsampled to 128 px (its stem divides by 4 before any block).

    python train_clip.py --vision-layers 1,1,1,1 --vision-width 16 --image-resolution 128 --pretrain-steps 500 \
        --steps 1000                              # the shipped checkpoints/clip.pt (see checkpoints/README.md)
    python train_clip.py --steps 50 --out /tmp/clip.pt    # a ViT image tower (the defaults), from scratch
    python train_clip.py --resume checkpoints/clip.pt --steps 2000   # continue to 2000 steps in total
    python train_clip.py --text-from checkpoints/clip.pt --freeze-text --swap-images 64 --out /tmp/clip_lt.pt
                                                  # a new image tower for the shipped text tower

--pretrain-objects makes the warm-up read each object of every scene (shape and colour of the first and the
second in reading order; --pretrain-one-object-steps N keeps its first N steps on one-object scenes, and
--pretrain-shape-loss L keeps them there until the first object's shape loss is below L), so
that the embedding carries both objects of a two-object scene for a decoder to draw (bench/clip.py
--object-probe measures that). --object-attrs sets what its heads read (any of shape, color, size, pos per
object, background and style of the scene); --aux-weight W keeps them on through contrastive training, their
loss at weight W beside the contrastive one, and --aux-attrs what they read there (e.g. the warm-up's objects
plus the scene's background and style).

--edits sets the hard negatives' edit kinds (repeats weigh them; "swap" exchanges an attribute between
the two objects of a scene, a binding negative), --swap-attrs what the swap sets vary (shape, pos, color,
style; repeats weigh them), --text-lr-scale the text tower's learning rate relative to the image tower's.
"""

import argparse
import random
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from tqdm import tqdm

from minedit import toyworld as tw
from minedit import training
from minedit.clip import CLIP, CLIPConfig, checkpoint, expand, normalize
from minedit.tokenizer import tokenize
from minedit.utils import CHECKPOINTS, autocast, pick_device, save_checkpoint, seed_everything


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.1
    seed: int = 0
    res: int = 32
    bf16: bool = True
    hard_negatives: bool = True  # edited-scene pairs in the batch and an edited caption per image
    swap_images: int = 0  # this many images per step also pick their caption among all one-attribute swaps of it
    swap_weight: float = 1.0
    swap_attrs: str = "shape,shape,pos,pos,color"  # what a swap set varies, drawn per image (repeats weigh)
    freeze_text: bool = False  # train the image tower only (the text tower, and every text embedding, stay as they are)
    save_every: int = 500
    text_lr_scale: float = 1.0  # the text tower's learning rate, relative to the image tower's
    edits: str = "reshape,move,reshape,move,resize,recolor,background,style"  # hard-negative edits, drawn uniformly
    pretrain_steps: int = 0  # supervised steps before the contrastive ones: the image tower learns shape and colour
    pretrain_all: str = ""  # 'shape,color', 'color' or 'shape': the warm-up heads that also see two-object scenes
                            # (the target split evenly between the objects); the others see one-object scenes only
    pretrain_objects: bool = False  # the warm-up reads every scene's objects one by one, in reading order: shape and
                                    # colour of the first and of the second ("none" in a one-object scene)
    pretrain_one_object_steps: int = 0  # with pretrain_objects: the warm-up's first N steps take one-object scenes only
    pretrain_shape_loss: float = 0.0  # with pretrain_one_object_steps: the one-object phase goes on until the first
                                      # object's shape loss (mean of 20 steps) is below this, up to pretrain_steps in
                                      # all; the two-object steps that follow stay pretrain_steps - one_object_steps
    object_attrs: str = "shape,color"  # with pretrain_objects: what its heads read of each object (shape, color, size,
                                       # pos) and of the scene (background, style)
    aux_weight: float = 0.0  # with pretrain_objects: the warm-up's heads stay on through contrastive training,
                             # their loss on the batch's images added at this weight
    aux_attrs: str = ""  # with aux_weight: what the heads read during contrastive training ("": object_attrs);
                         # a name the warm-up did not read gets a fresh head there


EDIT_KINDS = ("reshape", "move", "resize", "recolor", "background", "style", "swap")  # what --edits may name
PRETRAIN_HEADS = ("shape", "color")  # the warm-up's classifiers, in pretrain_batch's label order


def image_side(name):
    """Parameters that train with the image tower (and under --freeze-text): visual.* and the temperature."""
    return name.startswith("visual.") or name == "logit_scale"


def swapped(rng, scene):
    """A two-object scene with one attribute (colour, shape or size) exchanged between its objects: the
    same words in its caption, bound the other way. None if there is nothing to exchange."""
    if len(scene.objects) != 2:
        return None
    a, b = scene.objects
    attrs = [k for k in ("color", "shape", "size") if getattr(a, k) != getattr(b, k)
             and not (k == "shape" and tw.CONCEPT in (a.shape, b.shape))]
    if not attrs:
        return None
    return tw.swap_attribute(scene, rng.choice(attrs))


def edited(rng, scene, kinds):
    """The scene with one attribute changed (an edit kind drawn from `kinds`; "swap" exchanges one
    between two objects, a binding negative), staying in the training split."""
    for _ in range(20):
        kind = rng.choice(kinds)
        out = swapped(rng, scene) if kind == "swap" else tw._apply(rng, scene, kind)[1]
        if out is not None and tw.split_of(out) == "train":
            return out
    return None


SWAP_ATTRS = ("shape", "pos", "color", "style")  # what --swap-attrs may name


def swap_set(rng, scene, attrs):
    """`scene` with one attribute (drawn from `attrs`) of one object, or its style, set to every value it
    can take (the true one included), and the index of the true one. No variant is a test scene."""
    k, attr = rng.randrange(len(scene.objects)), rng.choice(attrs)
    o, others = scene.objects[k], scene.objects[:k] + scene.objects[k + 1:]
    if o.shape == tw.CONCEPT and attr == "shape":  # the unnamed concept is not among the shape words
        attr = "pos"
    if attr == "style":  # the one scene-level attribute here: the whole scene in every style
        variants = [replace(scene, style=v) for v in tw.STYLES]
    else:
        values = {"shape": tw.SHAPES, "pos": tw.POSITIONS, "color": [c for c in tw.COLORS if c != scene.background]}[attr]
        if attr != "color":  # shapes and cells are distinct within a scene; colours may repeat
            values = [v for v in values if all(v != getattr(q, attr) for q in others)]
        objs = lambda v: scene.objects[:k] + (replace(o, **{attr: v}),) + scene.objects[k + 1:]
        variants = [replace(scene, objects=objs(v)) for v in values]
    variants = [v for v in variants if v == scene or tw.split_of(v) != "test"]
    return variants, variants.index(scene)


def batch(step, tc, context_length):
    rng = random.Random(f"clip-batch:{tc.seed}:{step}")
    n = tc.batch_size // 2 if tc.hard_negatives else tc.batch_size
    kinds = tc.edits.split(",")
    scenes = [tw.sample_scene(tc.seed, "train", i) for i in range(step * n, (step + 1) * n)]
    if tc.hard_negatives:  # the second half: each scene of the first half with one attribute edited
        pairs = [edited(rng, s, kinds) for s in scenes]
        scenes = scenes + [p or tw.sample_scene(tc.seed + 1, "train", step * n + i) for i, p in enumerate(pairs)]
    texts = [tw.caption(s, rng) for s in scenes]
    if tc.hard_negatives:  # an extra negative caption per image: its own scene, edited
        texts += [tw.caption(edited(rng, s, kinds) or tw.sample_scene(tc.seed + 2, "train", step * len(scenes) + i), rng)
                  for i, s in enumerate(scenes)]
    swaps = []  # (captions of a swap set, all with the same paraphrase; index of the true one)
    for s in scenes[:tc.swap_images]:
        variants, j = swap_set(rng, s, tc.swap_attrs.split(","))
        seed = rng.random()
        swaps.append(([tw.caption(v, random.Random(seed)) for v in variants], j))
    swap_texts = tokenize([t for texts_i, _ in swaps for t in texts_i], context_length) if swaps else None
    labels = object_labels(scenes, tc.aux_attrs or tc.object_attrs) if tc.aux_weight else None  # for the kept heads
    return tw.render_batch(scenes, tc.res), tokenize(texts, context_length), swap_texts, swaps, labels


def swap_loss(model, z_img, swap_texts, swaps, grad_text):
    """Cross-entropy of each of the first len(swaps) images over its swap set's captions."""
    with torch.set_grad_enabled(grad_text):
        z_txt = F.normalize(model.encode_text(swap_texts).float(), dim=-1)
    n = max(len(t) for t, _ in swaps)
    logits = torch.full((len(swaps), n), float("-inf"), device=z_img.device)
    i = 0
    for row, (texts, _) in enumerate(swaps):
        logits[row, :len(texts)] = model.logit_scale.exp() * z_txt[i:i + len(texts)] @ z_img[row]
        i += len(texts)
    return F.cross_entropy(logits, torch.tensor([j for _, j in swaps], device=z_img.device))


OBJECT_ATTRS = {"shape": tw.ALL_SHAPES, "color": tuple(tw.COLORS), "size": tw.SIZES, "pos": tw.POSITIONS}
SCENE_ATTRS = {"background": tuple(tw.BACKGROUNDS), "style": tw.STYLES}  # what --object-attrs may name besides


def object_attrs(attrs):
    """An attribute list ("shape,color,style", as --object-attrs) split into the per-object attributes
    and the scene's, each in the order given."""
    names = attrs.split(",")
    return [a for a in names if a in OBJECT_ATTRS], [a for a in names if a in SCENE_ATTRS]


def head_names(attrs):
    """The per-object heads' names, in object_labels' column order: shape1, color1, shape2, color2, ..."""
    per, whole = object_attrs(attrs)
    return [f"{a}1" for a in per] + [f"{a}2" for a in per] + whole


def object_labels(scenes, attrs):
    """(len(scenes), K) class indices for the per-object heads: each per-object attribute of `attrs` for
    the first object in reading order, then for the second ("none", the last class, in a one-object
    scene), then each scene attribute. By default: shape, colour; shape, colour."""
    per, whole = object_attrs(attrs)
    labels = []
    for s in scenes:
        first, *second = tw.reading_order(s)
        row = [OBJECT_ATTRS[a].index(getattr(first, a)) for a in per]
        row += [OBJECT_ATTRS[a].index(getattr(second[0], a)) if second else len(OBJECT_ATTRS[a]) for a in per]
        labels.append(row + [SCENE_ATTRS[a].index(getattr(s, a)) for a in whole])
    return torch.tensor(labels)


def pretrain_batch(step, tc, one_object=None):
    """Training scenes and their shape and colour labels for the supervised warm-up: one-object scenes
    with class indices, or (tc.pretrain_all) every scene with target distributions spread evenly over the
    shapes and colours it holds (a one-object scene's is its class index, one-hot); pretrain() then trains
    a head not named in tc.pretrain_all on the batch's one-object scenes only. With tc.pretrain_objects,
    every scene (one-object scenes only for the first tc.pretrain_one_object_steps steps, or while
    `one_object` is true if given) with object_labels' class indices (by default the shape and colour of its
    first and its second object in reading order, the second "none" in a one-object scene)."""
    scenes, i = [], step * tc.batch_size * 2
    one_object = step < tc.pretrain_one_object_steps if one_object is None else one_object
    while len(scenes) < tc.batch_size:
        s = tw.sample_scene(tc.seed + 3, "train", i)
        i += 1
        if tc.pretrain_all or (tc.pretrain_objects and not one_object) or len(s.objects) == 1:
            scenes.append(s)
    shapes, colors = list(tw.ALL_SHAPES), list(tw.COLORS)
    if tc.pretrain_objects:
        return (tw.render_batch(scenes, tc.res), *object_labels(scenes, tc.object_attrs).unbind(1))
    if not tc.pretrain_all:
        return (tw.render_batch(scenes, tc.res), torch.tensor([shapes.index(s.objects[0].shape) for s in scenes]),
                torch.tensor([colors.index(s.objects[0].color) for s in scenes]))
    shape, color = torch.zeros(len(scenes), len(shapes)), torch.zeros(len(scenes), len(colors))
    for k, s in enumerate(scenes):
        for o in s.objects:
            shape[k, shapes.index(o.shape)] = color[k, colors.index(o.color)] = 1
    return tw.render_batch(scenes, tc.res), shape / shape.sum(1, keepdim=True), color / color.sum(1, keepdim=True)


def pretrain_heads(model, tc, device):
    """The warm-up's linear classifiers on the image embedding: shape and colour of the one object, or
    with tc.pretrain_objects a dict of them by head_names (the warm-up's, then any more that
    tc.aux_attrs names)."""
    linear = lambda n: torch.nn.Linear(model.config.embed_dim, n)
    if not tc.pretrain_objects:
        return torch.nn.ModuleList([linear(len(tw.ALL_SHAPES)), linear(len(tw.COLORS))]).to(device)
    names = head_names(tc.object_attrs)
    names += [n for n in head_names(tc.aux_attrs or tc.object_attrs) if n not in names]
    classes = lambda n: len(SCENE_ATTRS[n]) if n in SCENE_ATTRS else len(OBJECT_ATTRS[n[:-1]]) + (n[-1] == "2")
    return torch.nn.ModuleDict({n: linear(classes(n)) for n in names}).to(device)


def pretrain(model, tc, device, heads=None):
    """Teach the image tower shape and colour before it meets the text tower: a linear head on the image
    embedding classifies one-object scenes (cross-entropy), for tc.pretrain_steps steps. Contrastive
    training alone sits at a saddle where neither tower separates shapes (README, "CLIP"); an image tower
    that already does gives the text tower something to align with. Returns the heads (train_clip drops
    them unless tc.aux_weight keeps them on)."""
    heads = pretrain_heads(model, tc, device) if heads is None else heads
    one_object_only = set(PRETRAIN_HEADS) - set(tc.pretrain_all.split(",")) if tc.pretrain_all else set()
    warm = [heads[n] for n in head_names(tc.object_attrs)] if tc.pretrain_objects else heads  # the ones trained here
    params = list(model.visual.parameters()) + [p for h in warm for p in h.parameters()]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    names = [None] * len(warm) if tc.pretrain_objects else PRETRAIN_HEADS  # pretrain_all's heads, by name
    per, whole = object_attrs(tc.object_attrs)
    end = tc.pretrain_one_object_steps  # the one-object phase's end, which tc.pretrain_shape_loss may put off
    total = lambda: tc.pretrain_steps + end - tc.pretrain_one_object_steps
    pbar, step, shape_losses = tqdm(total=total(), desc="clip pretrain (image tower)", mininterval=2), 0, []
    shape1 = head_names(tc.object_attrs).index("shape1") if tc.pretrain_shape_loss else None  # in `losses`
    while step < total():
        x, *labels = pretrain_batch(step, tc, one_object=step < end)
        x = normalize(x, model.config.image_resolution).to(device)
        for g in opt.param_groups:
            g["lr"] = training.lr_at(step, tc.lr, 50, tc.pretrain_steps, floor=1.0)  # warmup, then constant
        with autocast(device, tc.bf16):
            z = model.encode_image(x).float()
            losses = []
            for head, y, name in zip(warm, labels, names, strict=True):
                zh = z
                if name in one_object_only and not tc.pretrain_objects:  # one object: the whole target on one class
                    keep = y.max(1).values == 1
                    zh, y = z[keep.to(device)], y[keep]
                losses.append(F.cross_entropy(head(zh), y.to(device)))
        opt.zero_grad(set_to_none=True)
        sum(losses).backward()
        opt.step()
        if tc.pretrain_objects:  # per attribute, summed over the heads that read it
            pbar.set_postfix({a: f"{sum(l.item() for l, b in zip(losses, per + per + whole) if b == a):.3f}" for a in per + whole})
        else:
            pbar.set_postfix(shape=f"{losses[0].item():.3f}", color=f"{losses[1].item():.3f}")
        if tc.pretrain_shape_loss and step < end:  # the one-object phase: is shape learned by its last planned step?
            shape_losses.append(losses[shape1].item())
            if step + 1 == end:
                recent = sum(shape_losses[-20:]) / len(shape_losses[-20:])
                if recent >= tc.pretrain_shape_loss and end < tc.pretrain_steps:
                    end += 1
                    pbar.total = total()
                else:
                    tqdm.write(f"the one-object warm-up phase ends at step {end} (shape loss, last 20 steps: {recent:.3f})")
        step += 1
        pbar.update(1)
    pbar.close()
    return heads


def vision_layers(s):
    """--vision-layers: "4" (a ViT of depth 4) or "1,1,1,1" (a ModifiedResNet)."""
    try:
        n = tuple(int(x) for x in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not one int or four comma-separated ints") from None
    if len(n) not in (1, 4) or min(n) < 1:
        raise argparse.ArgumentTypeError(f"{s!r}: give one int (ViT depth) or four (ResNet blocks per stage), each >= 1")
    return n[0] if len(n) == 1 else n


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    training.add_dataclass_flags(p, TrainConfig, CLIPConfig)
    p.add_argument("--out", default=str(CHECKPOINTS / "clip.pt"), help="checkpoint path (default: %(default)s)")
    p.add_argument("--resume", default=None, help="a checkpoint to continue from (model, optimizer, step)")
    p.add_argument("--text-from", default=None, help="take the text tower (and config) from this CLIP; the image tower starts "
                   "fresh (with --freeze-text: the text embeddings stay exactly as they are)")
    p.add_argument("--freeze-text", action="store_const", const=True, default=None, help="train the image tower only")
    p.add_argument("--pretrain-objects", action="store_const", const=True, default=None,
                   help="the warm-up (--pretrain-steps) reads each object of every scene: the shape and colour of the "
                   "first and of the second in reading order, so that the embedding carries both objects")
    p.add_argument("--vision-layers", type=vision_layers, default=None, help="the image tower: a ViT's depth (one int) or "
                   "a ModifiedResNet's blocks per stage (four ints, e.g. 1,1,1,1; OpenAI's RN50 is 3,4,6,3)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (default: %(default)s)")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32")
    p.add_argument("--no-hard-negatives", action="store_true", help="plain CLIP loss, no edited-caption negatives")
    args = vars(p.parse_args())
    if args["pretrain_all"] and args["pretrain_objects"]:
        p.error("--pretrain-all and --pretrain-objects are two different warm-ups: choose one")
    if args["pretrain_all"] and not set(args["pretrain_all"].split(",")) <= set(PRETRAIN_HEADS):
        p.error(f"--pretrain-all {args['pretrain_all']!r}: name the warm-up heads that see two-object scenes, "
                "shape,color or color or shape")

    training.check_out(args["out"])
    ckpt = training.checkpoint_arg(args, "resume", "clip")
    text_from = None if ckpt else training.checkpoint_arg(args, "text_from", "clip")
    base = ckpt or text_from
    mc = training.override(CLIPConfig(**base["config"]) if base else CLIPConfig(), args)
    tc = training.override(TrainConfig(**ckpt["train_config"]) if ckpt else TrainConfig(), args)
    tc.bf16 = tc.bf16 and not args["no_bf16"]
    tc.hard_negatives = tc.hard_negatives and not args["no_hard_negatives"]
    for flag, value in (("--object-attrs", tc.object_attrs), ("--aux-attrs", tc.aux_attrs or tc.object_attrs)):
        if bad := set(value.split(",")) - set(OBJECT_ATTRS) - set(SCENE_ATTRS):
            training.fail(f"{flag}: unknown attribute(s) {sorted(bad)}; use {', '.join([*OBJECT_ATTRS, *SCENE_ATTRS])}")
    if tc.aux_weight and not tc.pretrain_objects:
        p.error("--aux-weight keeps --pretrain-objects' heads on: give --pretrain-objects too")
    if tc.pretrain_shape_loss and not (tc.pretrain_objects and tc.pretrain_one_object_steps
                                       and "shape" in object_attrs(tc.object_attrs)[0]):
        p.error("--pretrain-shape-loss puts off the end of --pretrain-one-object-steps by the first object's shape "
                "loss: give --pretrain-objects and --pretrain-one-object-steps, with shape in --object-attrs")
    if tc.aux_attrs and not tc.aux_weight:
        p.error("--aux-attrs sets what --aux-weight's heads read: give --aux-weight too")
    if bad := set(tc.edits.split(",")) - set(EDIT_KINDS):
        training.fail(f"--edits: unknown edit kind(s) {sorted(bad)}; use {', '.join(EDIT_KINDS)}")
    if bad := set(tc.swap_attrs.split(",")) - set(SWAP_ATTRS):
        training.fail(f"--swap-attrs: unknown attribute(s) {sorted(bad)}; use {', '.join(SWAP_ATTRS)}")
    device = pick_device(args["device"])
    seed_everything(tc.seed)
    model = CLIP(mc).to(device)
    if text_from:  # an existing text tower (and logit scale) with a new image tower
        text = {k: v.float() for k, v in expand(text_from["model"]).items() if not k.startswith("visual.")}
        model.load_state_dict({**text, **{"visual." + k: v for k, v in model.visual.state_dict().items()}}, strict=True)
    if tc.freeze_text:
        for name, p in model.named_parameters():
            p.requires_grad = image_side(name)
    groups = [[p for n, p in model.named_parameters() if p.requires_grad and image_side(n) == image] for image in (True, False)]
    heads = pretrain_heads(model, tc, device) if tc.aux_weight else None  # trained with the image tower throughout
    aux_names = head_names(tc.aux_attrs or tc.object_attrs)  # the heads the contrastive steps train, in label order
    if heads is not None:
        groups[0] += list(heads.parameters())
    opt = torch.optim.AdamW([{"params": ps, "scale": scale} for ps, scale in zip(groups, (1.0, tc.text_lr_scale)) if ps],
                            lr=tc.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=tc.weight_decay)
    start = 0
    if ckpt:
        model.load_state_dict({k: v.float() for k, v in expand(ckpt["model"]).items()}, strict=True)
        if "optimizer" in ckpt:  # final checkpoints carry no optimizer state: continue with a fresh one
            opt.load_state_dict(ckpt["optimizer"])
        start = ckpt["step"]
        if heads is not None and "aux_heads" in ckpt:
            heads.load_state_dict(ckpt["aux_heads"], strict=True)
    keep = {i for t in tokenize(tw.vocabulary_texts(), mc.context_length) for i in t.tolist()}
    print(f"CLIP: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; {len(keep)} toy-world tokens; "
          f"seed {tc.seed}; device {device}; steps {start} -> {tc.steps}")

    def save(step):
        extra = {"train_config": asdict(tc), "step": step, "optimizer": opt.state_dict() if step < tc.steps else None}
        if extra["optimizer"] is None:
            extra.pop("optimizer")
        elif heads is not None:  # needed to resume; clip.load reads the model alone
            extra["aux_heads"] = heads.state_dict()
        save_checkpoint(checkpoint(model, keep, **extra), args["out"])

    t0 = time.time()
    if start == 0 and tc.pretrain_steps:
        pretrain(model, tc, device, heads)
    t1, pbar = time.time(), tqdm(range(start, tc.steps), desc="clip", mininterval=2)
    for step in pbar:
        x, text, swap_texts, swaps, objects = batch(step, tc, mc.context_length)
        x, text = normalize(x, mc.image_resolution).to(device), text.to(device)
        for g in opt.param_groups:
            g["lr"] = g["scale"] * training.lr_at(step, tc.lr, tc.warmup, tc.steps, floor=0.0)
        with autocast(device, tc.bf16):
            z_raw = model.encode_image(x).float()
            z_img = F.normalize(z_raw, dim=-1)
            with torch.set_grad_enabled(not tc.freeze_text):
                z_txt = F.normalize(model.encode_text(text).float(), dim=-1)
            logits, B = model.logit_scale.exp() * z_img @ z_txt.t(), len(x)  # (B, B) or (B, 2B) with the hard negatives
            labels = torch.arange(B, device=device)
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits[:, :B].t(), labels)) / 2
            if swaps:
                loss = loss + tc.swap_weight * swap_loss(model, z_img, swap_texts.to(device), swaps, not tc.freeze_text)
            if heads is not None:  # the warm-up's per-object heads, as in pretrain(), on every image of the batch
                loss = loss + tc.aux_weight * sum(F.cross_entropy(heads[n](z_raw), y.to(device))
                                                  for n, y in zip(aux_names, objects.unbind(1), strict=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)  # temperature at most 100, as in CLIP
        pbar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{(step + 1 - start) * tc.batch_size / (time.time() - t1):.0f}")
        if (step + 1) % tc.save_every == 0 and step + 1 < tc.steps:
            save(step + 1)
    if ckpt is None or start < tc.steps:
        save(tc.steps)
    print(f"trained to step {tc.steps} in {(time.time() - t0) / 60:.1f} min; wrote {args['out']}")


if __name__ == "__main__":
    main()
