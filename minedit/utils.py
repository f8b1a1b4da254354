"""Small helpers shared by minedit's modules and scripts: atomic writes, checkpoints, devices, seeds."""

import contextlib
import functools
import hashlib
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the same folder as `path`; rename it over `path` only on success."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_image_atomic(image, path, pnginfo=None):
    """Save a PIL image as PNG via a temp file and a rename."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=pnginfo)


def file_hash(path):
    """The first 16 hex digits of a file's sha256 (recorded next to outputs and in checkpoints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def save_checkpoint(obj, path):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path, kind=None):
    """torch.load with weights_only=True; checks the checkpoint's `kind` when given."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if kind is not None and (not isinstance(ckpt, dict) or ckpt.get("kind") != kind):
        found = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a minedit {kind} checkpoint (found kind {found!r})")
    return ckpt


def from_image(a):
    """uint8 (H, W, 3) or (B, H, W, 3), numpy or tensor -> float tensor (3, H, W) or (B, 3, H, W) in [-1, 1]
    (the inverse of to_image)."""
    return torch.as_tensor(np.ascontiguousarray(a)).movedim(-1, -3).float() / 127.5 - 1


def to_image(x):
    """(3, H, W) or (B, 3, H, W) tensor in [-1, 1] -> uint8 numpy (H, W, 3) or (B, H, W, 3)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def image_grid(images, cols):
    """uint8 numpy (B, H, W, 3) -> one PIL image with `cols` columns and a 2 px white gutter."""
    from PIL import Image
    b, h, w, _ = images.shape
    rows = (b + cols - 1) // cols
    out = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = im
    return Image.fromarray(out)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def pick_device(name="auto"):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


@functools.cache
def cpu_bf16_is_fast():
    """Whether this CPU computes bf16 in hardware (AVX-512 or AMX, oneDNN's own test). Without it oneDNN
    emulates bf16: a decoder training step ran 20x slower than in fp32 on an AVX2-only EPYC (21.8 s
    against 1.1 s at batch 32), so autocast then stays off and says so once."""
    try:
        fast = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private op: judge by the SIMD level where it is gone
        fast = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    if not fast:
        print("bf16 autocast is off: this CPU has neither AVX-512 nor AMX (bf16 would be emulated, ~20x slower); fp32 instead")
    return fast


def autocast(device, enabled=True):
    """bf16 autocast on CUDA, and on CPUs that compute bf16 in hardware (never fp16: it is ~100x slower on
    CPUs without AVX512_FP16)."""
    if not enabled or device.type not in ("cpu", "cuda") or (device.type == "cpu" and not cpu_bf16_is_fast()):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
