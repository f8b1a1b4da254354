"""CLIP quality on the held-out test split (unseen shape-colour combinations): zero-shot attribute
accuracy by caption templates, text->image retrieval R@1 among 100 test images, and a linear probe of
the image embedding (how much shape, colour and position it carries at all; and, on every scene, background
and style), and attribute binding in
two-object scenes (does the embedding know which object has which colour, shape or size); with
--object-probe, an MLP probe of each object's attributes in two-object scenes (what a decoder could draw).

Zero-shot: for each test scene, the caption of the true scene competes with the captions of the same
scene with one attribute of its first object (or its style) changed; correct if the true one scores highest.
With --paraphrases K each candidate's text embedding is the mean of its canonical caption and K paraphrases
(the same K for every candidate of a scene): the CLIP paper's prompt ensembling.

    python bench/clip.py [--clip checkpoints/clip.pt]     # prints JSON
"""
import argparse
import json
import random
from dataclasses import replace

import torch
import torch.nn.functional as F

from minedit import toyworld as tw
from minedit.clip import load, normalize
from minedit.tokenizer import tokenize


@torch.no_grad()
def embed_texts(model, texts):
    return torch.cat([F.normalize(model.encode_text(tokenize(texts[i:i + 512], model.config.context_length)), dim=-1)
                      for i in range(0, len(texts), 512)])


@torch.no_grad()
def embed_images(model, scenes):
    out = []
    for i in range(0, len(scenes), 512):  # rendered at the toy world's resolution, as in training (normalize resizes)
        x = normalize(tw.render_batch(scenes[i:i + 512], 32), model.config.image_resolution)
        out.append(F.normalize(model.encode_image(x), dim=-1))
    return torch.cat(out)


def candidates(scene, attr):
    o, others = scene.objects[0], scene.objects[1:]
    if attr == "style":
        return [replace(scene, style=s) for s in tw.STYLES]
    if attr == "color":
        values = [c for c in tw.COLORS if c != scene.background]
    elif attr == "shape":
        values = [s for s in tw.SHAPES if all(s != p.shape for p in others)]
    elif attr == "pos":
        values = [p for p in tw.POSITIONS if all(p != q.pos for q in others)]
    else:
        values = list(tw.SIZES)
    return [replace(scene, objects=(replace(o, **{attr: v}),) + others) for v in values]


def zero_shot(model, scenes, paraphrases=0):
    out = {}
    zi = embed_images(model, scenes)
    for attr in ("color", "shape", "size", "pos", "style"):
        correct = total = 0
        for i, (s, z) in enumerate(zip(scenes, zi)):
            if attr == "shape" and s.objects[0].shape == tw.CONCEPT:
                continue  # the concept has no name to classify by
            cands = candidates(s, attr)
            seeds = [None] + [f"paraphrase:{i}:{k}" for k in range(paraphrases)]  # None: the canonical caption
            # a fresh generator per candidate, so that every candidate gets the same paraphrases
            zt = embed_texts(model, [tw.caption(c, sd and random.Random(sd)) for c in cands for sd in seeds])
            zt = F.normalize(zt.view(len(cands), paraphrases + 1, -1).mean(1), dim=-1)
            correct += cands[int((zt @ z).argmax())] == s
            total += 1
        out[{"pos": "position"}.get(attr, attr)] = round(correct / total, 4)
    return out


def _probe(x, y, x_test, y_test, classes, steps):
    """Train a linear classifier on unit-norm embeddings x (labels y); accuracy on train and test."""
    probe = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(probe.parameters(), 1e-2)
    for _ in range(steps):
        b = torch.randint(0, len(x), (512,))
        loss = F.cross_entropy(probe(x[b] * 10), y[b])  # x10: unit-norm inputs, a usable logit scale
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = lambda inputs, labels: round((probe(inputs * 10).argmax(1) == labels).float().mean().item(), 4)
        return {"train": acc(x, y), "test": acc(x_test, y_test)}


def linear_probe(model, n_train=8000, n_test=1000, steps=1500):
    """How much of each attribute the image embedding carries, whatever the text tower does: a linear
    classifier on unit-norm image embeddings of one-object train scenes, scored on one-object test
    scenes. The test scenes hold unseen shape-colour pairs, so a probe that reads shape through colour fails."""
    torch.manual_seed(0)
    train = [s for s in (tw.sample_scene(0, "train", i) for i in range(n_train)) if len(s.objects) == 1]
    test = [s for s in (tw.sample_scene(0, "test", i) for i in range(n_test)) if len(s.objects) == 1]
    x, x_test = embed_images(model, train), embed_images(model, test)
    out = {}
    for attr, values in (("shape", tw.ALL_SHAPES), ("color", list(tw.COLORS)), ("pos", tw.POSITIONS)):
        label = lambda scenes: torch.tensor([values.index(getattr(s.objects[0], attr)) for s in scenes])
        out[{"pos": "position"}.get(attr, attr)] = _probe(x, label(train), x_test, label(test), len(values), steps)
    return out


def scene_probe(model, n_train=8000, n_test=1000, steps=1500):
    """The same linear probe for the scene's own attributes, background and style, on every scene (one
    or two objects): what a decoder needs to paint the rest of the picture."""
    torch.manual_seed(0)
    train = [tw.sample_scene(0, "train", i) for i in range(n_train)]
    test = [tw.sample_scene(0, "test", i) for i in range(n_test)]
    x, x_test = embed_images(model, train), embed_images(model, test)
    out = {}
    for attr, values in (("background", list(tw.BACKGROUNDS)), ("style", list(tw.STYLES))):
        label = lambda scenes: torch.tensor([values.index(getattr(s, attr)) for s in scenes])
        out[attr] = _probe(x, label(train), x_test, label(test), len(values), steps)
    return out


def object_probe(model, n_train=50000, n_eval=3000, steps=6000, seed=0):
    """What a decoder could draw from the embedding of a two-object scene: an MLP (two hidden layers of
    1024, dropout 0.5) reads each object's shape, colour and size, objects in reading order, from the
    unit-norm image embedding. Trained on the two-object scenes among n_train train scenes (the decoder's
    own training draw), scored on those among n_eval val scenes (seen shape-colour pairs) and test
    scenes (unseen pairs, as bench/decoder.py uses). Per attribute: "both", both objects right; "bag",
    the two values right in either order; "bound", among scenes whose objects differ in it and whose
    bag is right, the fraction with each value on the right object (binding proper)."""
    torch.manual_seed(seed)
    attrs = {"shape": tw.ALL_SHAPES, "color": list(tw.COLORS), "size": tw.SIZES}

    def data(split, n):
        scenes = [s for s in (tw.sample_scene(0, split, i) for i in range(n)) if len(s.objects) == 2]
        ordered = [tw.reading_order(s) for s in scenes]
        y = torch.tensor([[list(v).index(getattr(o, k)) for k, v in attrs.items() for o in objs] for objs in ordered])
        return embed_images(model, scenes).float() * model.config.embed_dim ** 0.5, y  # unit variance per entry

    (x, y), evals = data("train", n_train), {split: data(split, n_eval) for split in ("val", "test")}
    sizes = [len(v) for v in attrs.values() for _ in range(2)]
    mlp = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 1024), torch.nn.GELU(), torch.nn.Dropout(0.5),
                              torch.nn.Linear(1024, 1024), torch.nn.GELU(), torch.nn.Dropout(0.5),
                              torch.nn.Linear(1024, sum(sizes)))
    opt = torch.optim.AdamW(mlp.parameters(), 1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps)
    for _ in range(steps):
        b = torch.randint(0, len(x), (256,))
        loss = sum(F.cross_entropy(logits, y[b, j]) for j, logits in enumerate(mlp(x[b]).split(sizes, dim=1)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    mlp.eval()
    out = {"n_train": len(x)}
    with torch.no_grad():
        for split, (xe, ye) in evals.items():
            pred = torch.stack([logits.argmax(1) for logits in mlp(xe).split(sizes, dim=1)], dim=1)
            right = pred == ye
            res = {"n": len(ye)}
            for a, k in enumerate(attrs):
                p, t, r = pred[:, 2 * a:2 * a + 2], ye[:, 2 * a:2 * a + 2], right[:, 2 * a:2 * a + 2]
                both = r.all(1)
                bag = both | ((p[:, 0] == t[:, 1]) & (p[:, 1] == t[:, 0]))
                differ = t[:, 0] != t[:, 1]
                res[k] = {"both": round(both.float().mean().item(), 4), "bag": round(bag.float().mean().item(), 4),
                          "bound": round((both & differ).sum().item() / max(1, (bag & differ).sum().item()), 4)}
            res["all_three_both"] = round(right.all(1).float().mean().item(), 4)
            out[split] = res
    return out


@torch.no_grad()
def text_separation(model):
    """Mean cosine between the text embeddings of captions that differ only in the object's shape (or
    only in its colour), over 8 colours (shapes) x 9 places: near 1, the text tower cannot tell them
    apart and no image tower can score zero-shot on that attribute."""
    out = {}
    for attr, values in (("shape", tw.SHAPES), ("color", list(tw.COLORS))):
        sims = []
        for other in (list(tw.COLORS) if attr == "shape" else tw.SHAPES):
            for pos in tw.POSITIONS:
                pairs = [(v, other) if attr == "shape" else (other, v) for v in values]  # (shape, colour)
                objs = [tw.Obj(shape, color, "big", pos) for shape, color in pairs]
                z = embed_texts(model, [tw.caption(tw.Scene("black", (o,), "plain")) for o in objs])
                sims.append((z @ z.T)[~torch.eye(len(values), dtype=torch.bool)].mean())
        out[attr] = round(torch.stack(sims).mean().item(), 4)
    return out


@torch.no_grad()
def binding(model, n_scenes=2000, n=300):
    """Attribute binding: two-object test scenes whose objects differ in an attribute, against the same
    scene with that attribute swapped between the objects (a red circle and a blue star -> a blue circle
    and a red star). Both have the same bag of words, so only binding tells them apart; chance is 0.5.
    Also the mean cosine between the two images' embeddings (about 0 for two random test scenes)."""
    two = [s for s in (tw.sample_scene(0, "test", i) for i in range(n_scenes)) if len(s.objects) == 2]
    out = {}
    for attr in ("color", "shape", "size"):
        scenes = [s for s in two if getattr(s.objects[0], attr) != getattr(s.objects[1], attr)][:n]
        swapped = [tw.swap_attribute(s, attr) for s in scenes]
        zi, zi_swap = embed_images(model, scenes), embed_images(model, swapped)
        zt, zt_swap = embed_texts(model, [tw.caption(s) for s in scenes]), embed_texts(model, [tw.caption(s) for s in swapped])
        rate = lambda a, b: round((a > b).float().mean().item(), 4)
        out[attr] = {"n": len(scenes),
                     "caption_prefers_its_image": rate((zt * zi).sum(-1), (zt * zi_swap).sum(-1)),
                     "image_prefers_its_caption": rate((zi * zt).sum(-1), (zi * zt_swap).sum(-1)),
                     "image_cosine_to_swapped": round((zi * zi_swap).sum(-1).mean().item(), 4)}
    return out


def retrieval(model, scenes):
    zi, zt = embed_images(model, scenes), embed_texts(model, [tw.caption(s) for s in scenes])
    sim = zt @ zi.t()
    target = torch.arange(len(scenes))
    return {"text_to_image_R@1": round((sim.argmax(1) == target).float().mean().item(), 4),
            "image_to_text_R@1": round((sim.argmax(0) == target).float().mean().item(), 4)}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="checkpoints/clip.pt", help="any CLIP clip.load reads (default: %(default)s)")
    p.add_argument("--n", type=int, default=1000, help="test scenes for zero-shot (default %(default)s)")
    p.add_argument("--paraphrases", type=int, default=0,
                   help="zero-shot: average each candidate's text embedding over K paraphrases too "
                        "(default %(default)s)")
    p.add_argument("--object-probe", action="store_true",
                   help="also train the two-object probe (object_probe: about 4 more minutes here)")
    a = p.parse_args()
    torch.set_num_threads(2)
    model, _ = load(a.clip)
    scenes = [tw.sample_scene(0, "test", i) for i in range(a.n)]
    result = {"zero_shot_test": zero_shot(model, scenes, a.paraphrases), "n_zero_shot": a.n,
              "paraphrases": a.paraphrases}
    for seed in range(3):
        result[f"retrieval_100_seed{seed}"] = retrieval(model, [tw.sample_scene(100 + seed, "test", i) for i in range(100)])
    result["linear_probe_one_object"] = linear_probe(model)
    result["linear_probe_scene"] = scene_probe(model)
    result["text_cosine_between_captions_differing_in"] = text_separation(model)
    result["binding_two_objects"] = binding(model)
    if a.object_probe:
        result["object_probe_two_objects"] = object_probe(model)
    result["text_to_image_R@1_mean"] = round(sum(result[f"retrieval_100_seed{s}"]["text_to_image_R@1"] for s in range(3)) / 3, 4)
    print(json.dumps(result, indent=1))
