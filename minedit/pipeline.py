"""
The pieces put together: loading the shipped models, and the four ways edit.py edits an image.

- unCLIP (Ramesh et al. 2022): text -> prior -> CLIP image embedding -> decoder -> image.
- textdiff (DALL-E 2, section 3.3): move the image's CLIP embedding toward a text difference,
  z = slerp(z_image, normalize(z_text(target) - z_text(source)), theta), and decode it from the
  image's DDIM-inverted noise, so that theta = 0 gives the image back.
- ref: the same, with the direction taken from an example pair of images (before, after).
- sdedit (Meng et al. 2022): noise the image part of the way, denoise toward prior(text).
- instruct (Brooks et al. 2023, InstructPix2Pix): the instruction-editing UNet with two-condition
  guidance (minedit/guidance.py).

Images are (B, 3, H, W) in [-1, 1] at the models' resolution; embeddings are unit-norm.

    models = Models("checkpoints")
    out = edit_instruct(models, x, "make the star blue", s_image=1.0, s_text=2.0)
"""

import os
import warnings

import torch
import torch.nn.functional as F

from minedit import clip as clip_lib
from minedit.diffusion import GaussianDiffusion, randn
from minedit.guidance import cfg, decoder_kwargs, instruct_cfg
from minedit.prior import CHECKPOINT_VERSION as PRIOR_VERSION, Prior, PriorConfig, rerank
from minedit.tokenizer import tokenize
from minedit.unet import UNet, UNetConfig
from minedit.utils import file_hash, load_checkpoint

# The prior's DDIM steps. A toy caption names every attribute, so the best guess of its image embedding is
# the conditional mean; every further step adds spread: 2 steps are measured closest (README, "The prior").
PRIOR_STEPS = 2

# The instruct model's DDIM eta: 0 is deterministic, 1 adds as much fresh noise per step as DDPM does.
# At 20 steps eta 1 succeeded 0.114 of the time against eta 0's 0.126, within the noise of one sampling seed
# (EXPERIMENTS.md, "Instruction editing"), so the default stays deterministic.
INSTRUCT_ETA = 0.0

# How far textdiff and ref turn the image embedding (slerp fraction). With the session-16 decoder 0.3 is
# measured best of 0.3 / 0.5 / 0.7 on 100 test triplets (EXPERIMENTS.md, "Editing"); 0.5 turned too far.
THETA = 0.3

CHECKPOINT_FILES = {"clip": "clip.pt", "decoder": "decoder.pt", "prior": "prior.pt", "instruct": "instruct.pt"}


def unet_config(d):
    """UNetConfig from a checkpoint's config dict (JSON-like lists back to tuples)."""
    return UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _checked(ckpt, path, version=1):
    if ckpt.get("version") != version:
        raise ValueError(f"{path}: checkpoint version {ckpt.get('version')!r}, this minedit reads version {version}")
    return ckpt


def load_decoder(path, kind="decoder"):
    """(UNet with EMA weights, GaussianDiffusion, checkpoint dict) from a decoder or instruct checkpoint."""
    ckpt = _checked(load_checkpoint(path, kind=kind), path)
    unet = UNet(unet_config(ckpt["config"]))
    unet.load_state_dict({k: v.float() for k, v in ckpt["model"].items()}, strict=True)
    tc = ckpt["train_config"]
    return unet.eval(), GaussianDiffusion(tc["timesteps"], tc["schedule"], tc["prediction"]), ckpt


def load_prior(path):
    """(Prior with EMA weights, GaussianDiffusion, checkpoint dict) from a prior checkpoint."""
    ckpt = _checked(load_checkpoint(path, kind="prior"), path, version=PRIOR_VERSION)
    prior = Prior(PriorConfig(**ckpt["config"]))
    prior.load_state_dict({k: v.float() for k, v in ckpt["model"].items()}, strict=True)
    tc = ckpt["train_config"]
    return prior.eval(), GaussianDiffusion(tc["timesteps"], tc["schedule"], tc["prediction"]), ckpt


class Models:
    """The models of a weights folder, each loaded on first use."""

    def __init__(self, folder, device="cpu"):
        self.folder, self.device, self._cache = str(folder), torch.device(device), {}

    def path(self, name):
        return os.path.join(self.folder, CHECKPOINT_FILES[name])

    def _get(self, name, load):
        if name not in self._cache:
            self._cache[name] = load(self.path(name))
        return self._cache[name]

    def _check_clip(self, name, ckpt):
        """Warn when a model was trained on another CLIP than this folder's clip.pt: its conditioning
        would then mean nothing (e.g. after `python train_clip.py` overwrote clip.pt)."""
        if "clip_text_sha256_16" in ckpt:  # a model that reads only CLIP text: the image tower may change
            want, have = ckpt["clip_text_sha256_16"], clip_lib.text_tower_hash(self.clip)
        else:
            want, have = ckpt.get("clip_sha256_16"), file_hash(self.path("clip"))
        if want and want != have:
            warnings.warn(f"{self.path(name)} was trained with a CLIP of sha256 {want}..., but {self.path('clip')} is "
                          f"{have}...: its outputs will be noise. Retrain it on this CLIP or restore the CLIP it was trained with.")

    @property
    def clip(self):
        return self._get("clip", lambda p: clip_lib.load(p)[0].to(self.device).eval())

    def _load(self, name, load):
        def build(path):
            *models, ckpt = load(path)
            self._check_clip(name, ckpt)
            return tuple(m.to(self.device) for m in models)
        return self._get(name, build)

    @property
    def decoder(self):  # (unet, diffusion)
        return self._load("decoder", load_decoder)

    @property
    def prior(self):  # (prior, diffusion)
        return self._load("prior", load_prior)

    @property
    def instruct(self):  # (unet, diffusion)
        return self._load("instruct", lambda p: load_decoder(p, "instruct"))


# -----------------------------------------------------------------------------
# encoders, prior, decoder


@torch.no_grad()
def encode_images(clip, x):
    """(B, 3, H, W) in [-1, 1] -> unit-norm CLIP image embeddings (B, E)."""
    return F.normalize(clip.encode_image(clip_lib.normalize(x, clip.config.image_resolution)).float(), dim=-1)


@torch.no_grad()
def encode_texts(clip, texts, concepts=None):
    """list of str -> dict(emb (B, E) unit-norm, states (B, T, W), mask (B, T) bool). `concepts`
    (inversion.Concepts) lets the texts use learned words."""
    n = clip.config.context_length
    ids = concepts.tokenize(texts, n) if concepts else tokenize(texts, n)
    ids = ids.to(clip.positional_embedding.device)
    lengths = (ids == clip.config.eot_token).int().argmax(-1) + 1
    z, h = clip.encode_text(ids, token_overrides=concepts.overrides if concepts else None, return_states=True)
    mask = torch.arange(h.shape[1], device=h.device)[None] < lengths[:, None]
    return {"emb": F.normalize(z.float(), dim=-1), "states": h.float(), "mask": mask}


@torch.no_grad()
def text_to_embedding(models, texts, guidance=1.0, steps=PRIOR_STEPS, n_best=2, generator=None, concepts=None):
    """The prior's CLIP image embeddings (B, E) for texts; best of n_best by CLIP similarity to the text.
    guidance 1 (none) is measured best with the shipped prior (bench/prior.py, README)."""
    prior, diffusion = models.prior
    t = encode_texts(models.clip, texts, concepts)
    cands = torch.stack([prior.sample(diffusion, t["emb"], t["states"], t["mask"], guidance, steps, generator)
                         for _ in range(n_best)])  # (N, B, E)
    return rerank(cands, t["emb"])


def decoder_model(unet, emb, guidance, caption=None, diffusion=None, same_step=False):
    """The decoder as a denoiser (x, t) conditioned on emb (B, E), with CFG at scale `guidance`. A decoder
    trained with captions (`train_decoder.py --caption`) also reads `caption`, encode_texts' dict for the
    batch; the unconditional branch drops both. A self-conditioned decoder (`--self-cond`) needs its
    `diffusion` and reads the guided x0 estimate of the previous step (same_step=True: of the same step,
    which DDIM inversion needs)."""
    if caption is not None and not unet.config.context_dim:
        raise ValueError("this decoder was trained without captions")
    drop = torch.ones(emb.shape[0], dtype=torch.bool, device=emb.device)
    model = cfg(unet, guidance, decoder_kwargs(emb, ~drop, caption), decoder_kwargs(emb, drop, caption))
    if not unet.config.self_condition:
        return model
    if diffusion is None:
        raise ValueError("a self-conditioned decoder needs its diffusion to read back its x0 estimates")
    return diffusion.self_conditioned(model, same_step)


@torch.no_grad()
def decode(models, emb, guidance=3.0, steps=50, noise=None, generator=None, caption=None, n_images=1, target=None,
           eta=0.0):
    """Images (B, 3, H, W) in [-1, 1] from CLIP image embeddings (B, E), DDIM from noise (or fresh noise;
    eta > 0 also adds fresh noise at every step, from `generator`); `caption` as in decoder_model.
    n_images > 1 decodes that many images per embedding, each from fresh noise, and keeps the one whose
    CLIP image embedding is closest to `target` (B, E; by default emb itself): DALL-E 2's reranking, at
    n_images times the cost. For text -> image, pass the text embedding."""
    unet, diffusion = models.decoder
    B, r = emb.shape[0], unet.config.image_size
    if noise is not None and n_images > 1:
        raise ValueError("noise fixes one image per embedding; leave it out to decode n_images > 1")
    if noise is None:
        noise = randn((n_images * B, unet.config.out_channels, r, r), generator, emb.device)
    rep = lambda v: v.repeat(n_images, *[1] * (v.dim() - 1))  # candidate k of embedding b at k * B + b
    caption = {k: rep(v) for k, v in caption.items()} if caption is not None and n_images > 1 else caption
    x = diffusion.ddim_sample(decoder_model(unet, rep(emb), guidance, caption, diffusion), noise=noise, steps=steps, eta=eta,
                              generator=generator)
    if n_images == 1:
        return x
    keys = encode_images(models.clip, x).view(n_images, B, -1)
    return rerank(x.view(n_images, B, *x.shape[1:]), emb if target is None else target, keys)


def slerp(a, b, theta):
    """Spherical interpolation between unit vectors a and b (..., E): the point at angle fraction
    theta along the great circle (theta = 0 -> a, 1 -> b). Nearly parallel vectors fall back to
    normalized linear interpolation, where the angle formula divides by ~0."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    dot = (a * b).sum(-1, keepdim=True).clamp(-1, 1)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    near = so.abs() < 1e-4
    safe = torch.where(near, torch.ones_like(so), so)
    out = (torch.sin((1 - theta) * omega) * a + torch.sin(theta * omega) * b) / safe
    lerp = F.normalize((1 - theta) * a + theta * b, dim=-1)
    return torch.where(near, lerp, out)


# -----------------------------------------------------------------------------
# the editing methods


@torch.no_grad()
def edit_direction(models, x, direction, theta, guidance=1.0, steps=50):
    """Decode slerp(z_image(x), direction, theta) from x's DDIM-inverted noise (the inversion uses the
    same guided decoder conditioned on z_image, so theta = 0 reconstructs x)."""
    unet, diffusion = models.decoder
    z = encode_images(models.clip, x)
    model = lambda emb: decoder_model(unet, emb, guidance, diffusion=diffusion, same_step=True)  # as inversion needs
    xT = diffusion.ddim_invert(model(z), x, steps=steps)
    target = slerp(z, direction.expand_as(z), theta)
    return diffusion.ddim_sample(model(target), noise=xT, steps=steps, clip_denoised=False).clamp(-1, 1)


def edit_textdiff(models, x, target_text, source_text="a picture", theta=THETA, guidance=1.0, steps=50, concepts=None):
    """DALL-E 2 text diffs: the direction normalize(z_text(target) - z_text(source))."""
    t = encode_texts(models.clip, [target_text, source_text], concepts)["emb"]
    return edit_direction(models, x, F.normalize(t[0] - t[1], dim=-1)[None], theta, guidance, steps)


def edit_ref(models, x, before, after, theta=THETA, guidance=1.0, steps=50):
    """An edit learned from an example pair (seed 000): the direction normalize(z(after) - z(before))."""
    z = encode_images(models.clip, torch.cat([before, after]))
    return edit_direction(models, x, F.normalize(z[1] - z[0], dim=-1)[None], theta, guidance, steps)


@torch.no_grad()
def edit_sdedit(models, x, text, strength=0.6, guidance=3.0, steps=50, generator=None, prior_guidance=1.0, concepts=None,
                prior_steps=PRIOR_STEPS):
    """SDEdit: noise x to `strength` of the way (0 = x, 1 = pure noise) and denoise with the decoder
    conditioned on prior(text); text is one caption or one per image. The prior samples with
    `prior_steps` DDIM steps, the decoder with `steps`."""
    unet, diffusion = models.decoder
    texts = [text] * x.shape[0] if isinstance(text, str) else list(text)
    emb = text_to_embedding(models, texts, prior_guidance, prior_steps, generator=generator, concepts=concepts)
    start = min(steps - 1, max(0, round((1 - strength) * steps)))
    t = torch.full((x.shape[0],), diffusion.ddim_timesteps(steps)[start], dtype=torch.long, device=x.device)
    xt = diffusion.q_sample(x, t, randn(x.shape, generator, x.device))
    return diffusion.ddim_sample(decoder_model(unet, emb, guidance, diffusion=diffusion), noise=xt, steps=steps, start_step=start)


@torch.no_grad()
def edit_instruct(models, x, text, s_image=1.0, s_text=2.0, steps=20, generator=None, concepts=None, noise=None,
                  eta=INSTRUCT_ETA):
    """InstructPix2Pix: the instruction-editing UNet, source image concatenated, two-condition CFG,
    DDIM with `eta` (its per-step noise also comes from `generator`)."""
    unet, diffusion = models.instruct
    t = encode_texts(models.clip, [text] * x.shape[0] if isinstance(text, str) else list(text), concepts)
    if noise is None:
        noise = randn(x.shape, generator, x.device)
    model = instruct_cfg(unet, s_image, s_text, x, t["emb"], t["states"], t["mask"])
    x0 = diffusion.ddim_sample(model, noise=noise, steps=steps, eta=eta, clip_denoised=instruct_bound(unet),
                               generator=generator)
    return instruct_result(unet, x, x0)


def instruct_variable(unet, source, target):
    """What the instruction-editing UNet diffuses: the target image, or for a residual model the change
    (target - source) * residual_scale, which is zero wherever the edit leaves the image alone."""
    return (target - source) * unet.config.residual_scale if unet.config.residual else target


def instruct_result(unet, source, x):
    """The inverse of instruct_variable: a sample of the diffused variable -> the edited image."""
    return (source + x / unet.config.residual_scale).clamp(-1, 1) if unet.config.residual else x


def instruct_bound(unet):
    """The range of the diffused variable, to clip x0 estimates to while sampling: images lie in [-1, 1],
    changes in [-2, 2] * residual_scale."""
    return 2 * unet.config.residual_scale if unet.config.residual else 1.0
