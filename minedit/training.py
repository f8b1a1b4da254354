"""Pieces shared by the training scripts: checked command-line inputs, distributed setup (torchrun + DDP, gloo on CPU,
nccl on GPU), EMA weights, the learning-rate schedule, flags from dataclasses, and cached CLIP embeddings
of toy-world scenes or of a folder of the user's images."""

import argparse
import math
import os
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from tqdm import tqdm

from minedit import toyworld as tw
from minedit.clip import load as load_clip, normalize as clip_normalize
from minedit.utils import file_hash, from_image, load_checkpoint

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def fail(message):
    """A one-line error, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_paths(args, *flags):
    """fail() on the first of these flags that names a missing file or folder."""
    for flag in flags:
        if args.get(flag) and not os.path.exists(args[flag]):
            fail(f"--{flag.replace('_', '-')} {args[flag]}: no such file or folder")


def check_out(path, flag="out"):
    """fail() now, before any work, if `path` cannot be written: its folder is missing or it is a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        fail(f"--{flag} {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        fail(f"--{flag} {path}: is a folder; give a file name")


def checkpoint_arg(args, flag, kind):
    """The minedit checkpoint a flag names (None when not given); fail() when it is missing, unreadable
    or of another kind."""
    path = args.get(flag)
    if not path:
        return None
    check_paths(args, flag)
    try:
        return load_checkpoint(path, kind=kind)
    except Exception as e:  # torch.load raises many types for a bad file; the message names the problem
        fail(f"--{flag.replace('_', '-')} {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")


def _load_clip(clip_path):
    """clip.load for the --clip flag: fail() on a file it cannot read, naming it, without a traceback."""
    try:
        return load_clip(clip_path)
    except Exception as e:
        fail(f"--clip {clip_path}: not CLIP weights that clip.load reads ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")


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


def fit(net, loss_fn, tc, device, rank, world, ckpt, out, meta, desc, callback=None, unit="img"):
    """The training loop of train_decoder.py and train_prior.py. `net` is wrapped in DDP when world > 1;
    AdamW with linear warmup and cosine decay, bf16 autocast (tc.bf16), gradient clipping at 1.0, EMA
    weights, tqdm with the loss and samples/s. `loss_fn(model, step, generator)` returns one batch's mean
    loss. Every tc.save_every steps, a resumable checkpoint (meta + EMA weights in fp16 + raw weights +
    optimizer) goes to `out`; at the end the EMA weights only. `callback(step, ema)` runs after each
    step on rank 0 (sample grids). `ckpt` is a checkpoint to resume from, or None. Returns the EMA."""
    from minedit.utils import autocast, save_checkpoint
    start = 0
    if ckpt:
        net.load_state_dict({k: v.float() for k, v in ckpt.get("raw_model", ckpt["model"]).items()}, strict=True)
        start = ckpt["step"]
    ema = EMA(net, tc.ema_decay)
    if ckpt:
        ema.shadow = {k: v.to(device, torch.float32, copy=True) for k, v in ckpt["model"].items()}
    model = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    if ckpt and "optimizer" in ckpt:
        opt.load_state_dict(ckpt["optimizer"])

    def save(step, final):
        if rank != 0:
            return
        state = {**meta, "train_config": asdict(tc), "step": step,
                 "model": {k: v.half().cpu() for k, v in ema.shadow.items()}}
        if not final:
            state["raw_model"], state["optimizer"] = net.state_dict(), opt.state_dict()
        save_checkpoint(state, out)

    g = torch.Generator().manual_seed(tc.seed * 1000 + rank)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: let cuDNN pick its fastest kernels
    t0, seen = time.time(), 0
    pbar = tqdm(range(start, tc.steps), desc=desc, mininterval=2, disable=rank != 0)
    for step in pbar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc.lr, tc.warmup, tc.steps)
        with autocast(device, tc.bf16):
            loss = loss_fn(model, step, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema.update(net, step)
        seen += tc.batch_size * world
        pbar.set_postfix({"loss": f"{loss.item():.4f}", f"{unit}/s": f"{seen / (time.time() - t0):.0f}"})
        if rank == 0 and callback is not None:
            callback(step, ema)
        if tc.save_every and (step + 1) % tc.save_every == 0 and step + 1 < tc.steps:
            save(step + 1, final=False)
    save(tc.steps, final=True)
    if rank == 0:
        print(f"trained to step {tc.steps} in {(time.time() - t0) / 60:.1f} min; wrote {out}")
    return ema


def average_checkpoints(ckpts, names):
    """The tensor-by-tensor mean of the weights of several checkpoints of one model (a model soup; with a
    model and its own fine-tune, WiSE-FT's interpolation at 1/2: Wortsman et al. 2022). Each mean is taken
    in fp32 and stored in the dtype the first checkpoint stores; every other field comes from the last one,
    and `averaged_from` records `names` (e.g. the inputs' hashes). Raises ValueError when the checkpoints
    are not of one model: another kind or config, or other tensor names or shapes."""
    first = ckpts[0]
    for ckpt, name in zip(ckpts[1:], names[1:]):
        if ckpt.get("kind") != first.get("kind") or ckpt.get("config") != first.get("config"):
            raise ValueError(f"{name} is another model (kind or config differs from {names[0]})")
        if {k: v.shape for k, v in ckpt["model"].items()} != {k: v.shape for k, v in first["model"].items()}:
            raise ValueError(f"{name} holds other tensors than {names[0]}")
    model = {k: (sum(c["model"][k].float() for c in ckpts) / len(ckpts)).to(v.dtype) for k, v in first["model"].items()}
    out = {k: v for k, v in ckpts[-1].items() if k not in ("model", "raw_model", "optimizer")}
    return {**out, "model": model, "averaged_from": list(names)}


# fields that must be > 0 (a count, a size or a divisor; 0 crashed deep inside the model); every other number >= 0
POSITIVE = {"steps", "batch_size", "lr", "n_images", "timesteps", "res",
            "in_channels", "out_channels", "model_channels", "head_channels", "embed_tokens", "cond_width",  # UNet
            "width", "heads",  # prior
            "image_resolution", "vision_width", "vision_patch_size", "context_length", "vocab_size",  # CLIP
            "transformer_width", "transformer_heads", "transformer_layers"}
NONEMPTY = {"channel_mult"}  # tuple fields that need at least one entry


def _number(kind, name):
    def parse(text):
        v = kind(text)
        if v < 0 or (name in POSITIVE and v == 0):
            raise argparse.ArgumentTypeError(f"must be {'> 0' if name in POSITIVE else '>= 0'}, got {text}")
        return v
    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def _int_tuple(name):
    def parse(text):
        try:
            v = tuple(int(x) for x in text.split(",")) if text.strip() else ()
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be whole numbers separated by commas, got {text!r}") from None
        if any(x <= 0 for x in v) or (name in NONEMPTY and not v):
            raise argparse.ArgumentTypeError(f"must be {'one or more ' if name in NONEMPTY else ''}numbers > 0, got {text!r}")
        return v
    return parse


def add_dataclass_flags(parser, *classes):
    """--kebab-case flags for every int/float/str/bool field and every tuple of ints (given as 16,8);
    numbers are checked (>= 0, and > 0 for the fields in POSITIVE and in tuples)."""
    for cls in classes:
        for f in fields(cls):
            flag, doc = "--" + f.name.replace("_", "-"), f"{cls.__name__}.{f.name} (default {f.default!r})"
            if f.type in (int, float, str, "int", "float", "str"):
                kind = type(f.default)
                parser.add_argument(flag, type=kind if kind is str else _number(kind, f.name), default=None, help=doc)
            elif f.type in (tuple, "tuple"):
                parser.add_argument(flag, type=_int_tuple(f.name), default=None, metavar="N,N", help=doc)


def override(obj, args):
    """A copy of dataclass `obj` with the fields given on the command line replaced."""
    return type(obj)(**{**asdict(obj), **{f.name: args[f.name] for f in fields(obj) if args.get(f.name) is not None}})


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
def clip_image_embeddings(clip_path, images, cache=None, batch_size=256, device="cpu"):
    """CLIP image embeddings (N, E), fp32 on the CPU, unit-normalized, of PIL images (CLIP's
    preprocessing) or of a uint8 array (N, H, W, 3) (resized as `clip.normalize` does), computed on
    `device`; cached in `cache` if given."""
    if cache is not None and os.path.exists(cache):
        return torch.load(cache, weights_only=True)
    model, preprocess = _load_clip(clip_path)
    model.to(device)
    out = []
    for i in range(0, len(images), batch_size):
        if isinstance(images, np.ndarray):
            x = clip_normalize(from_image(images[i:i + batch_size]).to(device), model.config.image_resolution)
        else:
            x = torch.stack([preprocess(p) for p in images[i:i + batch_size]]).to(device)
        out.append(torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1).cpu())
    emb = torch.cat(out)
    if cache is not None:
        from minedit.utils import atomic_path
        os.makedirs(os.path.dirname(cache) or ".", exist_ok=True)
        with atomic_path(cache) as tmp:
            torch.save(emb, tmp)
    return emb


def toy_training_set(clip_path, n, seed, res, cache_dir=".cache", device="cpu"):
    """uint8 images (n, res, res, 3) of train scenes, their scenes, and CLIP image embeddings (n, E)."""
    data = tw.SceneDataset("train", n=n, seed=seed, res=res, cache=cache_dir)
    tag = f"{file_hash(clip_path)}-train-n{n}-seed{seed}-{res}px"
    emb = clip_image_embeddings(clip_path, data.images, os.path.join(cache_dir, f"clip-emb-{tag}.pt"), device=device)
    return data.images, data, emb


@torch.no_grad()
def clip_text_features(clip_path, texts, cache=None, batch_size=512, device="cpu"):
    """CLIP text features of a list of strings (pipeline.encode_texts, batched, on `device`), on the
    CPU: unit-norm embeddings (N, E) fp32, final token states (N, T, W) fp16 and their mask (N, T) bool,
    T the longest text's length; cached in `cache` if given. `texts` may be a function returning the
    list, called only when the cache misses."""
    if cache is not None and os.path.exists(cache):
        return torch.load(cache, weights_only=True)
    texts = texts() if callable(texts) else texts
    from minedit.pipeline import encode_texts
    model, _ = _load_clip(clip_path)
    model.to(device)
    parts = [{k: v.cpu() for k, v in encode_texts(model, texts[i:i + batch_size]).items()}
             for i in range(0, len(texts), batch_size)]
    T = max(p["states"].shape[1] for p in parts)
    pad = lambda x: F.pad(x, (0, 0, 0, T - x.shape[1])) if x.dim() == 3 else F.pad(x, (0, T - x.shape[1]))
    feats = {"emb": torch.cat([p["emb"] for p in parts]),
             "states": torch.cat([pad(p["states"]) for p in parts]).half(),
             "mask": torch.cat([pad(p["mask"]) for p in parts])}
    if cache is not None:
        from minedit.utils import atomic_path
        os.makedirs(os.path.dirname(cache) or ".", exist_ok=True)
        with atomic_path(cache) as tmp:
            torch.save(feats, tmp)
    return feats


def toy_captions(data):
    """One paraphrased caption per scene of a toyworld.SceneDataset."""
    return [data.caption(i) for i in range(len(data))]


def toy_caption_features(clip_path, data, cache_dir=".cache"):
    """clip_text_features of the captions of toy_training_set's scenes, cached (train_prior.py's data)."""
    tag = f"{file_hash(clip_path)}-{data.split}-n{len(data)}-seed{data.seed}"
    return clip_text_features(clip_path, toy_captions(data), os.path.join(cache_dir, f"clip-text-{tag}.pt"))


def folder_captions(paths):
    """The caption of each image: the text of the same-name .txt file next to it."""
    missing = [p for p in paths if not p.with_suffix(".txt").exists()]
    if missing:
        raise ValueError(f"{len(missing)} image(s) have no same-name .txt caption, e.g. {missing[0]}")
    return [p.with_suffix(".txt").read_text().strip() for p in paths]
