"""Test-only helpers: import open_clip without torchvision (its CUDA-only wheel cannot load next to the
CPU torch). A stub torchvision with the few names open_clip imports at module level is put into
sys.modules for the import and removed right after, so transformers/diffusers never see it."""

import importlib.machinery
import sys
import types

import torch


def _stub():
    def mod(name, pkg=False):
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=pkg)
        if pkg:
            m.__path__ = []
        sys.modules[name] = m
        return m

    tv, ops, misc = mod("torchvision", True), mod("torchvision.ops", True), mod("torchvision.ops.misc")
    tr, fn = mod("torchvision.transforms", True), mod("torchvision.transforms.functional")
    tv.ops, ops.misc, tv.transforms, tr.functional = ops, misc, tr, fn

    class Unavailable(torch.nn.Module):
        def __init__(self, *a, **k):
            raise RuntimeError("torchvision stub: not available in minedit's tests")

    misc.FrozenBatchNorm2d = Unavailable
    tr.InterpolationMode = types.SimpleNamespace(NEAREST="nearest", BILINEAR="bilinear", BICUBIC="bicubic")
    for n in ("Normalize", "Compose", "RandomResizedCrop", "ToTensor", "Resize", "CenterCrop", "ColorJitter", "Grayscale"):
        setattr(tr, n, Unavailable)


def import_open_clip():
    """open_clip, imported with a temporary torchvision stub (only create_model / tokenizers work)."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    for name in ("transformers", "diffusers"):  # settle their "is torchvision available" probe first
        try:
            __import__(name).utils.is_torchvision_available()
        except Exception:
            pass
    _stub()
    try:
        import open_clip
    finally:
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]
    return open_clip
