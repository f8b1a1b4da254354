"""
The decoder's denoiser: a UNet in the improved-diffusion / GLIDE / unCLIP (Karlo) layout, cut down.
ResBlocks read the timestep embedding through scale-shift norm; self-attention at chosen resolutions
also attends to extra tokens: the conditioning embedding projected to a few tokens (as unCLIP does with
the CLIP image embedding) and, optionally, a sequence of text token states (cross-attention as GLIDE's
encoder_kv). The conditioning embedding is also added to the timestep embedding.

`in_channels` is configurable: the instruction-editing model concatenates the source image to x_t
(6 channels), a self-conditioned decoder its own x0 estimate (minedit/diffusion.py). One learned null
embedding stands in for a dropped conditioning embedding (classifier-free guidance): pass drop_emb (B,) bool.

    unet = UNet(UNetConfig(embed_dim=128))
    eps = unet(x_t, t, emb=z_image)        # (B, 3, H, W)
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class UNetConfig:
    in_channels: int = 3
    out_channels: int = 3
    model_channels: int = 48
    channel_mult: tuple = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple = (8,)  # sides of the feature maps that get attention (8: a 32 px input's 8x8 maps)
    image_size: int = 32
    head_channels: int = 32
    dropout: float = 0.0
    embed_dim: int = 0        # conditioning vector size (CLIP image embedding); 0 = unconditional
    embed_tokens: int = 4     # extra attention tokens made from the embedding
    context_dim: int = 0      # width of text token states for cross-attention; 0 = none
    cond_width: int = 128     # width of the extra attention tokens
    residual: bool = False    # instruct: the model denoises the change (target - source) * residual_scale, not the target
    residual_scale: float = 0.5  # most edits change few pixels: a larger scale raises their signal-to-noise ratio
    self_condition: bool = False  # decoder: also reads its own x0 estimate (Chen et al. 2022) as `concat`;
                                  # in_channels counts those channels, and a call without it reads zeros


def zero_module(m):
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal embedding of timesteps t (B,) -> (B, dim), as in the Transformer / DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def norm(ch):
    return nn.GroupNorm(math.gcd(32, ch), ch)  # 32 groups where the width allows


class ResBlock(nn.Module):
    """Two 3x3 convs; the timestep(+condition) embedding scales and shifts the second norm."""

    def __init__(self, ch, emb_ch, out_ch=None, dropout=0.0):
        super().__init__()
        out_ch = out_ch or ch
        self.in_layers = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch))
        self.out_norm = norm(out_ch)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1)))
        self.skip = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def forward(self, x, emb, cond=None, cond_mask=None):
        h = self.in_layers(x)
        scale, shift = self.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.out_layers(self.out_norm(h) * (1 + scale) + shift)
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the feature map; keys/values also include the conditioning tokens."""

    def __init__(self, ch, head_channels, cond_width=0):
        super().__init__()
        self.heads = max(1, ch // head_channels)
        self.norm = norm(ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.encoder_kv = nn.Linear(cond_width, 2 * ch) if cond_width else None
        self.proj_out = zero_module(nn.Linear(ch, ch))

    def forward(self, x, emb=None, cond=None, cond_mask=None):
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        mask = None
        if cond is not None and self.encoder_kv is not None:
            ek, ev = self.encoder_kv(cond).chunk(2, dim=-1)  # (B, S, C) each
            k, v = torch.cat([ek, k], dim=1), torch.cat([ev, v], dim=1)
            if cond_mask is not None:  # (B, S) True = attend; the image tokens are always attended
                mask = torch.cat([cond_mask, cond_mask.new_ones(B, H * W)], dim=1)[:, None, None, :]
        split = lambda t: t.view(B, -1, self.heads, C // self.heads).transpose(1, 2)  # (B, h, N, d)
        y = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
        y = self.proj_out(y.transpose(1, 2).reshape(B, H * W, C))
        return x + y.transpose(1, 2).view(B, C, H, W)


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x, *args):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, *args):
        # Nearest-neighbour 2x, as F.interpolate(mode="nearest") computes it; on CPU, repeat_interleave is
        # 5x faster forward and 2x forward + backward for NCHW tensors (measured at (16, 96, 16, 16)).
        return self.conv(x.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2))


class TimestepEmbedSequential(nn.Sequential):
    """A sequence of layers that each get (x, emb, cond, cond_mask); convs just take x."""

    def forward(self, x, emb, cond=None, cond_mask=None):
        for layer in self:
            x = layer(x, emb, cond, cond_mask) if isinstance(layer, (ResBlock, AttentionBlock, Downsample, Upsample)) else layer(x)
        return x


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        c = self.config = config
        ch = c.model_channels
        emb_ch = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        cw = c.cond_width if (c.embed_dim or c.context_dim) else 0
        if c.embed_dim:
            self.emb_proj = nn.Linear(c.embed_dim, emb_ch)            # added to the timestep embedding
            self.emb_tokens = nn.Linear(c.embed_dim, c.embed_tokens * cw)  # extra attention tokens
            self.null_emb = nn.Parameter(torch.zeros(c.embed_dim))    # the "no embedding" for CFG
        if c.context_dim:
            self.context_proj = nn.Linear(c.context_dim, cw)
        self.cond_norm = nn.LayerNorm(cw) if cw else None

        attn = lambda ch_, res: [AttentionBlock(ch_, c.head_channels, cw)] if res in c.attention_resolutions else []
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(c.in_channels, ch, 3, padding=1))])
        skips, res, cur = [ch], c.image_size, ch
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                self.input_blocks.append(TimestepEmbedSequential(ResBlock(cur, emb_ch, mult * ch, c.dropout), *attn(mult * ch, res)))
                cur = mult * ch
                skips.append(cur)
            if level < len(c.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(cur)))
                skips.append(cur)
                res //= 2
        self.middle_block = TimestepEmbedSequential(ResBlock(cur, emb_ch, dropout=c.dropout),
                                                    AttentionBlock(cur, c.head_channels, cw),
                                                    ResBlock(cur, emb_ch, dropout=c.dropout))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers = [ResBlock(cur + skips.pop(), emb_ch, mult * ch, c.dropout), *attn(mult * ch, res)]
                cur = mult * ch
                if level and i == c.num_res_blocks:
                    layers.append(Upsample(cur))
                    res *= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(norm(cur), nn.SiLU(), zero_module(nn.Conv2d(cur, c.out_channels, 3, padding=1)))

    def forward(self, x, t, emb=None, context=None, context_mask=None, drop_emb=None, concat=None):
        """x (B, C, H, W), t (B,) int; emb (B, embed_dim); context (B, T, context_dim) with
        context_mask (B, T) True where valid; drop_emb (B,) bool replaces emb by the learned null;
        concat (B, in_channels - C, H, W) is appended to x's channels (instruction editing: the source
        image; a self-conditioned decoder: its x0 estimate, zeros when None). Returns (B, out_channels, H, W)."""
        c = self.config
        if c.self_condition and concat is None:  # no estimate yet
            concat = torch.zeros_like(x)
        if concat is not None:
            x = torch.cat([x, concat.to(x.dtype)], dim=1)  # (B, in_channels, H, W)
        h_emb = self.time_embed(timestep_embedding(t, c.model_channels).to(x.dtype))
        tokens, mask = [], []
        if c.embed_dim:
            if emb is None:
                emb = self.null_emb.expand(x.shape[0], -1)
            else:
                # A unit-norm embedding has entries of size ~1/sqrt(d); scaled by sqrt(d) they have unit
                # variance, which the default init of the projections expects. Unscaled, the decoder
                # learned to ignore its embedding (measured: samples changed <1% when it was swapped).
                emb = emb * c.embed_dim ** 0.5
                if drop_emb is not None:
                    emb = torch.where(drop_emb[:, None], self.null_emb.to(emb.dtype), emb)
            h_emb = h_emb + self.emb_proj(emb)
            tokens.append(self.emb_tokens(emb).view(x.shape[0], c.embed_tokens, -1))
            mask.append(torch.ones(x.shape[0], c.embed_tokens, dtype=torch.bool, device=x.device))
        if c.context_dim and context is not None:
            tokens.append(self.context_proj(context))
            mask.append(context_mask if context_mask is not None else
                        torch.ones(context.shape[:2], dtype=torch.bool, device=x.device))
        cond = self.cond_norm(torch.cat(tokens, dim=1)) if tokens else None
        cond_mask = torch.cat(mask, dim=1) if tokens else None
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, h_emb, cond, cond_mask)
            hs.append(h)
        h = self.middle_block(h, h_emb, cond, cond_mask)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), h_emb, cond, cond_mask)
        return self.out(h)
