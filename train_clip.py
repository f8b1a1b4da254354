"""
Train a small CLIP from scratch on toy-world (image, caption) pairs with the symmetric contrastive loss
(Radford et al. 2021). Scenes are rendered on the fly (about 20k per second, so never the bottleneck)
and captions are paraphrased afresh at every step.

Random batches can be told apart by colour, background and style alone, so a plain CLIP learns little
about shape and position. Two kinds of hard negatives fix that (as in NegCLIP, Yuksekgonul et al. 2023):
half of each batch is the other half with one attribute edited (mostly shape or position), and each
image also meets an extra caption of its own scene with one attribute changed. No negative ever
contains a held-out test combination.

    python train_clip.py                          # the shipped checkpoints/clip.pt (about 15 min on 2 cores)
    python train_clip.py --steps 50 --out /tmp/clip.pt
    python train_clip.py --resume checkpoints/clip.pt --steps 4000   # continue to 4000 steps in total
"""

import argparse
import random
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from minedit import toyworld as tw
from minedit import training
from minedit.clip import CLIP, CLIPConfig, checkpoint, expand, normalize
from minedit.tokenizer import tokenize
from minedit.utils import CHECKPOINTS, autocast, load_checkpoint, pick_device, save_checkpoint, seed_everything


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
    save_every: int = 500


EDITS = ("reshape", "move", "reshape", "move", "resize", "recolor", "background", "style")


def edited(rng, scene):
    """The scene with one attribute changed, staying in the training split."""
    for _ in range(20):
        out = tw._apply(rng, scene, rng.choice(EDITS))[1]
        if tw.split_of(out) == "train":
            return out
    return None


def batch(step, tc, context_length):
    rng = random.Random(f"clip-batch:{tc.seed}:{step}")
    n = tc.batch_size // 2 if tc.hard_negatives else tc.batch_size
    scenes = [tw.sample_scene(tc.seed, "train", i) for i in range(step * n, (step + 1) * n)]
    if tc.hard_negatives:  # the second half: each scene of the first half with one attribute edited
        pairs = [edited(rng, s) for s in scenes]
        scenes = scenes + [p or tw.sample_scene(tc.seed + 1, "train", step * n + i) for i, p in enumerate(pairs)]
    texts = [tw.caption(s, rng) for s in scenes]
    if tc.hard_negatives:  # an extra negative caption per image: its own scene, edited
        texts += [tw.caption(edited(rng, s) or tw.sample_scene(tc.seed + 2, "train", step * len(scenes) + i), rng)
                  for i, s in enumerate(scenes)]
    return tw.render_batch(scenes, tc.res), tokenize(texts, context_length)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    training.add_dataclass_flags(p, TrainConfig, CLIPConfig)
    p.add_argument("--out", default=str(CHECKPOINTS / "clip.pt"), help="checkpoint path (default: %(default)s)")
    p.add_argument("--resume", default=None, help="a checkpoint to continue from (model, optimizer, step)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (default: %(default)s)")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32")
    p.add_argument("--no-hard-negatives", action="store_true", help="plain CLIP loss, no edited-caption negatives")
    args = vars(p.parse_args())

    ckpt = load_checkpoint(args["resume"], kind="clip") if args["resume"] else None
    mc = training.override(CLIPConfig(**ckpt["config"]) if ckpt else CLIPConfig(), args)
    tc = training.override(TrainConfig(**ckpt["train_config"]) if ckpt else TrainConfig(), args)
    tc.bf16 = tc.bf16 and not args["no_bf16"]
    tc.hard_negatives = tc.hard_negatives and not args["no_hard_negatives"]
    device = pick_device(args["device"])
    seed_everything(tc.seed)
    model = CLIP(mc).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=tc.weight_decay)
    start = 0
    if ckpt:
        model.load_state_dict({k: v.float() for k, v in expand(ckpt["model"]).items()}, strict=True)
        if "optimizer" in ckpt:  # final checkpoints carry no optimizer state: continue with a fresh one
            opt.load_state_dict(ckpt["optimizer"])
        start = ckpt["step"]
    keep = {i for t in tokenize(tw.vocabulary_texts(), mc.context_length) for i in t.tolist()}
    print(f"CLIP: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; {len(keep)} toy-world tokens; "
          f"seed {tc.seed}; device {device}; steps {start} -> {tc.steps}")

    def save(step):
        extra = {"train_config": asdict(tc), "step": step, "optimizer": opt.state_dict() if step < tc.steps else None}
        if extra["optimizer"] is None:
            extra.pop("optimizer")
        save_checkpoint(checkpoint(model, keep, **extra), args["out"])

    t0, pbar = time.time(), tqdm(range(start, tc.steps), desc="clip", mininterval=2)
    for step in pbar:
        x, text = batch(step, tc, mc.context_length)
        x, text = normalize(x).to(device), text.to(device)
        for g in opt.param_groups:
            g["lr"] = training.lr_at(step, tc.lr, tc.warmup, tc.steps, floor=0.0)
        with autocast(device, tc.bf16):
            logits, _ = model(x, text)  # (B, B) or (B, 2B) with the hard negatives
        logits, B = logits.float(), len(x)
        labels = torch.arange(B, device=device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits[:, :B].t(), labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)  # temperature at most 100, as in CLIP
        pbar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{(step + 1 - start) * tc.batch_size / (time.time() - t0):.0f}")
        if (step + 1) % tc.save_every == 0 and step + 1 < tc.steps:
            save(step + 1)
    if ckpt is None or start < tc.steps:
        save(tc.steps)
    print(f"trained to step {tc.steps} in {(time.time() - t0) / 60:.1f} min; wrote {args['out']}")


if __name__ == "__main__":
    main()
