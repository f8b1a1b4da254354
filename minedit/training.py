"""Pieces shared by train_decoder.py and train_prior.py: distributed setup (torchrun + DDP, gloo on CPU,
nccl on GPU), EMA weights, the learning-rate schedule, flags from dataclasses, and cached CLIP embeddings
of toy-world scenes or of a folder of the user's images."""

import hashlib
import math
import os
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from minedit import toyworld as tw
from minedit.clip import load as load_clip

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def setup_distributed(device_name="auto"):
    """(rank, world_size, device). Under torchrun, joins the process group (nccl on CUDA, else gloo)."""
    from minedit.utils import pick_device
    if "RANK" not in os.environ:
        return 0, 1, pick_device(device_name)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


class EMA:
    """Exponential moving average of a model's parameters (and a copy of its buffers)."""

    def __init__(self, model, decay=0.999):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model, step):
        d = min(self.decay, (1 + step) / (10 + step))  # warm up: early weights are not averaged for long
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)


def lr_at(step, lr, warmup, total, floor=0.1):
    """Linear warmup, then cosine decay from lr to floor * lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return lr * (floor + (1 - floor) * cos)


def add_dataclass_flags(parser, *classes):
    """--kebab-case flags for every int/float/str/bool field (tuples are set in code)."""
    for cls in classes:
        for f in fields(cls):
            if f.type in (int, float, str, "int", "float", "str"):
                parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None,
                                    help=f"{cls.__name__}.{f.name} (default {f.default})")


def override(obj, args):
    """A copy of dataclass `obj` with the fields given on the command line replaced."""
    return type(obj)(**{**asdict(obj), **{f.name: args[f.name] for f in fields(obj) if args.get(f.name) is not None}})


def file_hash(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def folder_images(folder, res):
    """All images in a folder (sorted), as PIL RGB images and uint8 arrays (N, res, res, 3): short side
    resized to res, center crop."""
    from PIL import Image
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    pils, arrays = [], []
    for p in paths:
        im = Image.open(p).convert("RGB")
        w, h = im.size
        s = res / min(w, h)
        im_r = im.resize((max(res, round(w * s)), max(res, round(h * s))), Image.BICUBIC)
        left, top = (im_r.size[0] - res) // 2, (im_r.size[1] - res) // 2
        pils.append(im)
        arrays.append(np.asarray(im_r.crop((left, top, left + res, top + res))))
    return paths, pils, np.stack(arrays)


@torch.no_grad()
def clip_image_embeddings(clip_path, pils, cache=None, batch_size=256):
    """CLIP image embeddings (N, E), fp32, unit-normalized, of PIL images; cached in `cache` if given."""
    if cache is not None and os.path.exists(cache):
        return torch.load(cache, weights_only=True)
    model, preprocess = load_clip(clip_path)
    out = []
    for i in range(0, len(pils), batch_size):
        x = torch.stack([preprocess(p) for p in pils[i:i + batch_size]])
        out.append(torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1))
    emb = torch.cat(out)
    if cache is not None:
        from minedit.utils import atomic_path
        os.makedirs(os.path.dirname(cache) or ".", exist_ok=True)
        with atomic_path(cache) as tmp:
            torch.save(emb, tmp)
    return emb


def toy_training_set(clip_path, n, seed, res, cache_dir=".cache"):
    """uint8 images (n, res, res, 3) of train scenes, their scenes, and CLIP image embeddings (n, E)."""
    from PIL import Image
    data = tw.SceneDataset("train", n=n, seed=seed, res=res, cache=cache_dir)
    tag = f"{file_hash(clip_path)}-train-n{n}-seed{seed}-{res}px"
    pils = [Image.fromarray(im) for im in data.images]
    emb = clip_image_embeddings(clip_path, pils, os.path.join(cache_dir, f"clip-emb-{tag}.pt"))
    return data.images, data, emb
