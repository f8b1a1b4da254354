"""
The attribute reader: minedit's referee. Given images, it returns the toy-world attributes of the scene
(background, style, and per grid cell the object's shape, colour and size), so every quality claim
(edit success, prior accuracy, textual inversion) is measured against exact ground truth.

It is a small CNN trained on renders of all three splits (different seeds from those the benchmarks
use), with pixel noise and blur as augmentation so it tolerates the artefacts of generated images.
Known failure modes (see bench/toyworld.py for figures): it reads one object per cell, so two objects
overlapping one cell are not representable; it has never seen half-drawn or blended shapes, so for a
generated image it returns the nearest clean attribute rather than "unsure"; colours under the night
and neon styles are read from small, dark patches and are its weakest attribute on noisy input.

    python -m minedit.reader      # trains checkpoints/reader.pt (a few minutes on 2 cores)
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from minedit import toyworld as tw
from minedit.utils import CHECKPOINTS, autocast, load_checkpoint, save_checkpoint

N_CELLS, N_SHAPES, N_COLORS = len(tw.POSITIONS), len(tw.ALL_SHAPES) + 1, len(tw.COLORS)  # shape class 0 = empty
HEADS = {"background": len(tw.BACKGROUNDS), "style": len(tw.STYLES), "shape": N_CELLS * N_SHAPES,
         "color": N_CELLS * N_COLORS, "size": N_CELLS * 2}


def targets(scenes):
    """Scenes -> dict of LongTensors: background (B,), style (B,), shape/color/size (B, 9); color and
    size are -100 (ignored) in empty cells."""
    B = len(scenes)
    t = {"background": torch.tensor([list(tw.BACKGROUNDS).index(s.background) for s in scenes]),
         "style": torch.tensor([tw.STYLES.index(s.style) for s in scenes]),
         "shape": torch.zeros(B, N_CELLS, dtype=torch.long),
         "color": torch.full((B, N_CELLS), -100), "size": torch.full((B, N_CELLS), -100)}
    for b, s in enumerate(scenes):
        for o in s.objects:
            c = tw.POSITIONS.index(o.pos)
            t["shape"][b, c] = 1 + tw.ALL_SHAPES.index(o.shape)
            t["color"][b, c] = list(tw.COLORS).index(o.color)
            t["size"][b, c] = tw.SIZES.index(o.size)
    return t


class Reader(nn.Module):
    """(B, 3, H, W) in [-1, 1], any H = W >= 32 (resized to 32) -> dict of logits."""

    def __init__(self, width=32):
        super().__init__()
        w = width
        block = lambda i, o, s: nn.Sequential(nn.Conv2d(i, o, 3, s, 1), nn.BatchNorm2d(o), nn.GELU())
        self.features = nn.Sequential(block(3, w, 1), block(w, 2 * w, 2), block(2 * w, 2 * w, 1),
                                      block(2 * w, 4 * w, 2), block(4 * w, 4 * w, 1))  # (B, 4w, 8, 8)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 64, 512), nn.GELU(), nn.Dropout(0.1))
        self.heads = nn.ModuleDict({k: nn.Linear(512, n) for k, n in HEADS.items()})

    def forward(self, x):
        if x.shape[-1] != 32:
            x = F.interpolate(x, size=(32, 32), mode="area")
        h = self.fc(self.features(x))
        out = {k: head(h) for k, head in self.heads.items()}
        B = x.shape[0]
        out["shape"] = out["shape"].view(B, N_CELLS, N_SHAPES)
        out["color"] = out["color"].view(B, N_CELLS, N_COLORS)
        out["size"] = out["size"].view(B, N_CELLS, 2)
        return out


def loss_fn(out, t):
    return sum(F.cross_entropy(out[k].reshape(-1, out[k].shape[-1]), t[k].reshape(-1), ignore_index=-100)
               for k in HEADS)


@torch.no_grad()
def read(reader, images, batch_size=256):
    """Images (B, 3, H, W) in [-1, 1] -> list of Scenes, as the reader sees them."""
    reader.eval()
    scenes = []
    for i in range(0, len(images), batch_size):
        out = reader(images[i:i + batch_size].float())
        bg, st = out["background"].argmax(-1), out["style"].argmax(-1)
        sh, co, sz = out["shape"].argmax(-1), out["color"].argmax(-1), out["size"].argmax(-1)
        for b in range(len(bg)):
            objs = tuple(tw.Obj(tw.ALL_SHAPES[sh[b, c] - 1], list(tw.COLORS)[co[b, c]], tw.SIZES[sz[b, c]],
                                tw.POSITIONS[c]) for c in range(N_CELLS) if sh[b, c] > 0)
            scenes.append(tw.Scene(list(tw.BACKGROUNDS)[bg[b]], objs, tw.STYLES[st[b]]))
    return scenes


def attributes(scene):
    """Flat attribute dict of a scene: background, style, and per occupied cell shape/color/size."""
    d = {"background": scene.background, "style": scene.style}
    for o in scene.objects:
        d.update({f"{o.pos}/shape": o.shape, f"{o.pos}/color": o.color, f"{o.pos}/size": o.size})
    return d


def compare(true, pred):
    """Per-attribute correctness of one reading: background, style, objects (the set of occupied cells),
    and shape/color/size of each true object (False where the reader missed the object)."""
    pa = {o.pos: o for o in pred.objects}
    res = {"background": true.background == pred.background, "style": true.style == pred.style,
           "objects": {o.pos for o in true.objects} == set(pa), "shape": [], "color": [], "size": []}
    for o in true.objects:
        p = pa.get(o.pos)
        for k in ("shape", "color", "size"):
            res[k].append(p is not None and getattr(p, k) == getattr(o, k))
    return res


def accuracy(reader, scenes, res=32, noise=0.0):
    """Per-attribute accuracy of the reader on renders of `scenes` (optionally with Gaussian noise)."""
    x = tw.render_batch(scenes, res)
    if noise:
        x = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    tot = {k: [0, 0] for k in ("background", "style", "objects", "shape", "color", "size")}
    for t, p in zip(scenes, read(reader, x)):
        for k, v in compare(t, p).items():
            for ok in (v if isinstance(v, list) else [v]):
                tot[k][0] += ok
                tot[k][1] += 1
    return {k: a / max(n, 1) for k, (a, n) in tot.items()}


def whole_scenes_right(reader, scenes, res=32):
    """Per scene, whether the reader reads every attribute of its exact render right: what an edit's
    success needs, so the edit benchmark's ceiling."""
    return [attributes(p) == attributes(s) for s, p in zip(scenes, read(reader, tw.render_batch(scenes, res)))]


def load_reader(path=None):
    ckpt = load_checkpoint(path or CHECKPOINTS / "reader.pt", kind="reader")
    reader = Reader(**ckpt["config"])
    reader.load_state_dict({k: v.float() for k, v in ckpt["model"].items()}, strict=True)
    return reader.eval()


def train(steps=9000, batch_size=128, lr=2e-3, width=32, seed=1000, out=None):
    from tqdm import tqdm
    torch.manual_seed(seed)
    reader = Reader(width)
    opt = torch.optim.AdamW(reader.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    t0, pbar = time.time(), tqdm(range(steps), desc="reader", mininterval=2)
    for step in pbar:
        # scenes from all splits, seeds disjoint from the benchmarks' seed 0
        scenes = [tw.sample_scene(seed, tw.SPLITS[i % 3], step * batch_size + i) for i in range(batch_size)]
        x = tw.render_batch(scenes, 32)
        noise = torch.rand(batch_size, 1, 1, 1, generator=g) * 0.15 * (torch.rand(batch_size, 1, 1, 1, generator=g) < 0.5)
        x = x + noise * torch.randn(x.shape, generator=g)
        if step % 4 == 0:  # some blur, as generated images are soft
            x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1) * 0.5 + x * 0.5
        reader.train()
        with autocast(torch.device("cpu")):
            loss = loss_fn(reader(x), targets(scenes))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        pbar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{(step + 1) * batch_size / (time.time() - t0):.0f}")
    ckpt = {"kind": "reader", "config": {"width": width}, "seed": seed, "steps": steps,
            "model": {k: v.half() if v.is_floating_point() else v for k, v in reader.state_dict().items()}}
    save_checkpoint(ckpt, out or CHECKPOINTS / "reader.pt")
    print(f"trained {steps} steps in {time.time() - t0:.0f} s; wrote {out or CHECKPOINTS / 'reader.pt'}")
    return reader.eval()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Train the toy-world attribute reader (the defaults made checkpoints/reader.pt).")
    p.add_argument("--steps", type=int, default=9000, help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=2e-3, help="peak of the one-cycle schedule (default: %(default)s)")
    p.add_argument("--width", type=int, default=32, help="channels of the first conv (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1000, help="world seed of the training scenes (default: %(default)s)")
    p.add_argument("--out", default=None, help="default: checkpoints/reader.pt")
    a = p.parse_args()
    if min(a.steps, a.batch_size, a.width) < 1 or a.lr <= 0:
        p.exit(2, "error: --steps, --batch-size, --width and --lr must be positive\n")
    from minedit.training import check_out
    check_out(a.out or CHECKPOINTS / "reader.pt")
    reader = train(a.steps, a.batch_size, a.lr, a.width, a.seed, a.out)
    scenes = [tw.sample_scene(0, "test", i) for i in range(2000)]
    print({k: round(v, 4) for k, v in accuracy(reader, scenes).items()})
