"""
The diffusion prior of unCLIP (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with
CLIP Latents", section 2.1), in the layout of Kakao Brain's Karlo: a causal transformer reads

    [text token states (T), text embedding, timestep embedding, noised image embedding, learned query]

and the output at the last position is the prediction of x0, the clean image embedding. The image
embedding is *standardized* (per-dimension dataset mean and std, kept as buffers and saved in the
checkpoint) before diffusion, so every dimension has unit variance as the Gaussian process assumes.
Text is dropped 10% of the time in training (one learned null for the embedding, all token states
masked out) so that classifier-free guidance works (minedit/guidance.py). Diffusion itself is
minedit/diffusion.py, the same code the decoder uses.

    prior = Prior(PriorConfig(embed_dim=128, text_width=128))
    x0 = prior(x_t, t, text_emb=zt, text_states=h, text_mask=m)      # (B, embed_dim), standardized
    z_image = prior.sample(diffusion, zt, h, m, guidance=2.0)        # (B, embed_dim), unit norm
"""

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from minedit.diffusion import randn
from minedit.guidance import cfg
from minedit.unet import timestep_embedding


# For these short masked sequences, PyTorch's default CPU attention kernel (flash) is half of a training
# step; the plain math kernel makes the whole step about 1.8x faster (bench/prior_speed.py). GPUs keep
# their default.
CPU_ATTENTION = SDPBackend.MATH

# Checkpoint format. 2 (session 25): token states padded to max_text_len in every batch. Version-1 priors saw
# the last four positions move with the batch's longest caption, so they cannot be run faithfully: retrain.
CHECKPOINT_VERSION = 2


@dataclass
class PriorConfig:
    embed_dim: int = 128      # CLIP embedding size (text and image)
    text_width: int = 128     # CLIP text transformer width (token states)
    max_text_len: int = 40    # token states are padded (masked) or cut to this fixed length
    width: int = 128
    layers: int = 4
    heads: int = 4
    dropout: float = 0.0


class Block(nn.Module):
    """Pre-norm transformer block with a causal, padding-aware self-attention."""

    def __init__(self, width, heads, dropout):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, x, mask):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Prior(nn.Module):
    def __init__(self, config: PriorConfig):
        super().__init__()
        c = self.config = config
        self.text_states_proj = nn.Linear(c.text_width, c.width)
        self.text_emb_proj = nn.Linear(c.embed_dim, c.width)
        self.time_embed = nn.Sequential(nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.width))
        self.x_proj = nn.Linear(c.embed_dim, c.width)
        self.query = nn.Parameter(torch.randn(c.width) * 0.02)
        self.positional_embedding = nn.Parameter(torch.randn(c.max_text_len + 4, c.width) * 0.01)
        self.null_text_emb = nn.Parameter(torch.zeros(c.embed_dim))  # the one null for dropped text
        self.blocks = nn.ModuleList(Block(c.width, c.heads, c.dropout) for _ in range(c.layers))
        self.ln_final = nn.LayerNorm(c.width)
        self.out = nn.Linear(c.width, c.embed_dim)
        # standardization of the image embedding (set from the training set by set_stats)
        self.register_buffer("mean", torch.zeros(c.embed_dim))
        self.register_buffer("std", torch.ones(c.embed_dim))

    def set_stats(self, image_emb):
        """Per-dimension mean and std of the training set's image embeddings (N, E)."""
        self.mean.copy_(image_emb.mean(0))
        self.std.copy_(image_emb.std(0).clamp(min=1e-6))

    def standardize(self, z):
        return (z - self.mean) / self.std

    def unstandardize(self, x):
        return x * self.std + self.mean

    def forward(self, x, t, text_emb, text_states=None, text_mask=None, drop_text=None):
        """x (B, E) the noised standardized image embedding, t (B,); text_emb (B, E) unit-norm CLIP text
        embedding; text_states (B, T, W) with text_mask (B, T) True where valid; drop_text (B,) bool
        replaces the text by the null. Returns the predicted x0 (B, E), standardized."""
        c = self.config
        B = x.shape[0]
        text_emb = text_emb * c.embed_dim ** 0.5  # unit-norm -> unit-variance entries (see unet.py)
        if text_states is None:
            text_states = text_emb.new_zeros(B, 0, c.text_width)
            text_mask = torch.ones(B, 0, dtype=torch.bool, device=x.device)
        elif text_mask is None:
            text_mask = torch.ones(text_states.shape[:2], dtype=torch.bool, device=x.device)
        # A fixed length, as Karlo pads to 77: the last four positions must not depend on the batch's longest
        # caption (they did before version 2, and one caption alone read 0.82 cosine where a batch read 0.96).
        text_states, text_mask = text_states[:, :c.max_text_len], text_mask[:, :c.max_text_len]
        pad = c.max_text_len - text_states.shape[1]
        if pad > 0:  # training batches come padded already: no copy on the hot path
            text_states = torch.cat([text_states, text_states.new_zeros(B, pad, text_states.shape[2])], dim=1)
            text_mask = torch.cat([text_mask, text_mask.new_zeros(B, pad)], dim=1)
        if drop_text is not None:
            text_emb = torch.where(drop_text[:, None], self.null_text_emb.to(text_emb.dtype), text_emb)
            text_mask = text_mask & ~drop_text[:, None]
        T = text_states.shape[1]
        seq = torch.cat([
            self.text_states_proj(text_states),                                   # (B, T, D)
            self.text_emb_proj(text_emb)[:, None],                                # (B, 1, D)
            self.time_embed(timestep_embedding(t, c.width).to(x.dtype))[:, None],  # (B, 1, D)
            self.x_proj(x)[:, None],                                              # (B, 1, D)
            self.query.expand(B, 1, -1).to(x.dtype),                              # (B, 1, D)
        ], dim=1) + self.positional_embedding[:T + 4].to(x.dtype)
        L = T + 4
        # attention mask (B*heads, L, L): causal, and no attention to padded or dropped token states
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        valid = torch.cat([text_mask, torch.ones(B, 4, dtype=torch.bool, device=x.device)], dim=1)  # (B, L)
        allowed = causal[None] & valid[:, None, :]
        allowed = allowed | torch.eye(L, dtype=torch.bool, device=x.device)[None]  # every row sees itself
        mask = torch.zeros(B, L, L, dtype=seq.dtype, device=x.device).masked_fill(~allowed, float("-inf"))
        mask = mask.repeat_interleave(c.heads, dim=0)
        with sdpa_kernel(CPU_ATTENTION) if x.device.type == "cpu" else contextlib.nullcontext():
            for block in self.blocks:
                seq = block(seq, mask)
        return self.out(self.ln_final(seq[:, -1]))

    @torch.no_grad()
    def sample(self, diffusion, text_emb, text_states=None, text_mask=None, guidance=1.0, steps=50,
               generator=None, eta=0.0):
        """Image embeddings (B, E), unit-norm, for unit-norm text embeddings (B, E): DDIM over the
        standardized embedding with classifier-free guidance `guidance` (1 = none)."""
        B = text_emb.shape[0]
        kw = {"text_emb": text_emb, "text_states": text_states, "text_mask": text_mask}
        on, off = torch.zeros(B, dtype=torch.bool, device=text_emb.device), torch.ones(B, dtype=torch.bool, device=text_emb.device)
        model = cfg(self, guidance, {**kw, "drop_text": on}, {**kw, "drop_text": off})
        noise = randn((B, self.config.embed_dim), generator, text_emb.device)
        x = diffusion.ddim_sample(model, noise=noise, steps=steps, eta=eta, clip_denoised=False)
        return F.normalize(self.unstandardize(x), dim=-1)


def rerank(candidates, text_emb, keys=None):
    """Best-of-N (DALL-E 2 uses N = 2): candidates (N, B, ...) -> (B, ...), for each b the one whose unit-norm
    key (N, B, E) has the highest cosine similarity to the unit-norm embedding text_emb[b] (B, E). The keys
    default to the candidates themselves (embeddings); for images they are the images' CLIP embeddings."""
    scores = ((candidates if keys is None else keys) * text_emb[None]).sum(-1)  # (N, B)
    best = scores.argmax(0)  # (B,)
    return candidates[best, torch.arange(candidates.shape[1])]
