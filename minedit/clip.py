"""
CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision"):
an image tower (a ViT, or OpenAI's ModifiedResNet as in RN50) and a causal text transformer trained so
matching (image, text) pairs have the highest cosine similarity in a batch. The layout and parameter names follow OpenAI's clip/model.py, so
OpenAI and open_clip state dicts load with strict=True; Hugging Face CLIPModel weights load through a
named key mapping. `load(path)` reads all of them, and minedit's own checkpoints.

    model, preprocess = load("checkpoints/clip.pt")
    z_img = model.encode_image(preprocess(pil_image)[None])   # (1, E)
    z_txt = model.encode_text(tokenize(["a red star"], model.config.context_length))
"""

import hashlib
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI's image normalization
STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class CLIPConfig:
    embed_dim: int = 128
    image_resolution: int = 32
    vision_layers: int | tuple = 4  # an int: ViT depth; four ints: a ModifiedResNet's blocks per stage
    vision_width: int = 128
    vision_patch_size: int = 4  # ViT only
    context_length: int = 40
    vocab_size: int = 49408
    transformer_width: int = 128
    transformer_heads: int = 2
    transformer_layers: int = 4
    quick_gelu: bool = True
    eot_token: int = 49407


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 (as OpenAI's), whatever the input dtype."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class MultiheadAttention(nn.Module):
    """nn.MultiheadAttention's parameters (in_proj_weight = [Wq; Wk; Wv], out_proj) with
    scaled_dot_product_attention underneath."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x, mask=None, rows=None):
        """(B, T, C) -> (B, T, C); with `rows` (B,), only query position rows[b] of each sequence: (B, 1, C)."""
        B, T, C = x.shape
        w, b = self.in_proj_weight, self.in_proj_bias
        if rows is None:
            q, k, v = F.linear(x, w, b).split(C, dim=-1)
        else:
            q = F.linear(x[torch.arange(B), rows][:, None], w[:C], b[:C])  # (B, 1, C)
            k, v = F.linear(x, w[C:], b[C:]).split(C, dim=-1)
            mask = None if mask is None else mask[rows][:, None, None]  # (B, 1, 1, T): each query's mask row
        q, k, v = (t.view(B, -1, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, h, T, d)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(B, -1, C))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads, quick_gelu=True):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = MultiheadAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU() if quick_gelu else nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def forward(self, x, mask=None, rows=None):
        h = self.attn(self.ln_1(x), mask, rows)
        x = (x if rows is None else x[torch.arange(x.shape[0]), rows][:, None]) + h
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, quick_gelu=True):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, quick_gelu) for _ in range(layers))

    def forward(self, x, mask=None, rows=None):
        """(B, T, W) -> (B, T, W). With `rows` (B,), only position rows[b] of each sequence is wanted: the
        last block computes just that one (keys and values still come from every position) -> (B, W)."""
        for i, block in enumerate(self.resblocks):
            x = block(x, mask, rows if i == len(self.resblocks) - 1 else None)
        return x if rows is None else x[:, 0]


class VisionTransformer(nn.Module):
    def __init__(self, resolution, patch, width, layers, heads, out_dim, quick_gelu=True):
        super().__init__()
        self.input_resolution = resolution
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        s = width ** -0.5
        self.class_embedding = nn.Parameter(s * torch.randn(width))
        self.positional_embedding = nn.Parameter(s * torch.randn((resolution // patch) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, quick_gelu)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(s * torch.randn(width, out_dim))

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (B, N, W)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, N+1, W)
        x = self.transformer(self.ln_pre(x), rows=x.new_zeros(x.shape[0], dtype=torch.long))  # class token only
        return self.ln_post(x) @ self.proj  # (B, E)


# -----------------------------------------------------------------------------
# the ResNet image tower (OpenAI's RN50 family): a ResNet-D with a 3-conv stem, anti-aliased (average
# pool) downsampling, and attention pooling in place of global average pooling


class Bottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3, self.bn3 = nn.Conv2d(planes, 4 * planes, 1, bias=False), nn.BatchNorm2d(4 * planes)
        self.downsample = None
        if stride > 1 or inplanes != 4 * planes:  # keys "-1" (no weights), "0", "1" as in OpenAI's state dicts
            self.downsample = nn.Sequential()
            self.downsample.add_module("-1", nn.AvgPool2d(stride) if stride > 1 else nn.Identity())
            self.downsample.add_module("0", nn.Conv2d(inplanes, 4 * planes, 1, bias=False))
            self.downsample.add_module("1", nn.BatchNorm2d(4 * planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.avgpool(F.relu(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class AttentionPool2d(nn.Module):
    """One query, the mean of the feature map, attends over [mean, every position]."""

    def __init__(self, grid, width, heads, out_dim):
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(grid ** 2 + 1, width) / width ** 0.5)
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.c_proj = nn.Linear(width, out_dim)

    def forward(self, x):
        x = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        x = torch.cat([x.mean(1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, HW+1, C)
        B, T, C = x.shape
        split = lambda t: t.view(B, t.shape[1], self.heads, C // self.heads).transpose(1, 2)  # (B, h, T, d)
        y = F.scaled_dot_product_attention(split(self.q_proj(x[:, :1])), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.c_proj(y.transpose(1, 2).reshape(B, C))


class ModifiedResNet(nn.Module):
    def __init__(self, layers, out_dim, heads, resolution, width):
        super().__init__()
        self.input_resolution = resolution
        self.conv1, self.bn1 = nn.Conv2d(3, width // 2, 3, 2, 1, bias=False), nn.BatchNorm2d(width // 2)
        self.conv2, self.bn2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False), nn.BatchNorm2d(width // 2)
        self.conv3, self.bn3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        for i, n in enumerate(layers):  # stages at width, 2, 4, 8 x width planes (x4 channels out), stride 1, 2, 2, 2
            planes = width * 2 ** i
            blocks = [Bottleneck(inplanes, planes, 1 if i == 0 else 2)] + [Bottleneck(4 * planes, planes) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = 4 * planes
        self.attnpool = AttentionPool2d(resolution // 32, 32 * width, heads, out_dim)

    def forward(self, x):
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = F.relu(bn(conv(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.avgpool(x)))))  # (B, 32w, R/32, R/32)
        return self.attnpool(x)


class CLIP(nn.Module):
    def __init__(self, config: CLIPConfig):
        super().__init__()
        c = self.config = config
        if isinstance(c.vision_layers, int):
            self.visual = VisionTransformer(c.image_resolution, c.vision_patch_size, c.vision_width, c.vision_layers,
                                            c.vision_width // 64, c.embed_dim, c.quick_gelu)
        else:
            self.visual = ModifiedResNet(c.vision_layers, c.embed_dim, c.vision_width * 32 // 64, c.image_resolution,
                                         c.vision_width)
        self.transformer = Transformer(c.transformer_width, c.transformer_layers, c.transformer_heads, c.quick_gelu)
        self.token_embedding = nn.Embedding(c.vocab_size, c.transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(c.context_length, c.transformer_width))
        self.ln_final = LayerNorm(c.transformer_width)
        self.text_projection = nn.Parameter(torch.empty(c.transformer_width, c.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        mask = torch.full((c.context_length, c.context_length), float("-inf")).triu(1)
        self.register_buffer("attn_mask", mask, persistent=False)  # causal: -inf above the diagonal
        self.initialize_parameters()

    def initialize_parameters(self):
        c = self.config
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        towers = [(self.transformer, c.transformer_width, c.transformer_layers)]
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            for lin in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(lin.weight, std=pool.c_proj.in_features ** -0.5)
            for name, p in self.visual.named_parameters():
                if name.endswith("bn3.weight") and name.startswith("layer"):
                    nn.init.zeros_(p)  # every residual block starts as the identity
        else:
            towers.append((self.visual.transformer, c.vision_width, c.vision_layers))
        for tower, width, layers in towers:
            proj_std, attn_std, fc_std = (width ** -0.5) * ((2 * layers) ** -0.5), width ** -0.5, (2 * width) ** -0.5
            for block in tower.resblocks:
                nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=c.transformer_width ** -0.5)

    def encode_image(self, image):
        """(B, 3, R, R) normalized as by `preprocess` / `normalize` -> (B, E), not unit-normalized."""
        return self.visual(image)

    def encode_text(self, text, token_overrides=None, return_states=False):
        """(B, T) token ids -> (B, E), not unit-normalized; with return_states also the final token
        states (B, T', W) up to the longest text's end token. `token_overrides` maps token ids to
        embedding vectors (W,) that replace the table's rows (used by textual inversion)."""
        eot = (text == self.config.eot_token).int().argmax(-1)  # (B,) position of the first end token
        T = int(eot.max()) + 1  # causal attention: positions after every end token change nothing
        text = text[:, :T]
        V = self.token_embedding.num_embeddings
        extra = set(text[text >= V].tolist()) - set(token_overrides or {})
        if extra:
            raise ValueError(f"token ids {sorted(extra)} are past the vocabulary; give their vectors in token_overrides")
        x = self.token_embedding(text.clamp(max=V - 1))  # (B, T, W); added tokens get their rows below
        for tid, vec in (token_overrides or {}).items():
            x = torch.where((text == tid)[..., None], vec.to(x.dtype), x)
        x = x + self.positional_embedding[:T].to(x.dtype)
        mask = self.attn_mask[:T, :T].to(x.dtype)
        if not return_states:  # only the end token's state is read: the last block computes just that
            return self.ln_final(self.transformer(x, mask, rows=eot)) @ self.text_projection
        x = self.ln_final(self.transformer(x, mask))
        return x[torch.arange(x.shape[0]), eot] @ self.text_projection, x

    def forward(self, image, text):
        """Returns (logits_per_image (B_img, B_txt), logits_per_text (B_txt, B_img))."""
        zi = F.normalize(self.encode_image(image), dim=-1)
        zt = F.normalize(self.encode_text(text), dim=-1)
        logits = self.logit_scale.exp() * zi @ zt.t()
        return logits, logits.t()

# -----------------------------------------------------------------------------
# preprocessing (OpenAI's recipe, with PIL and torch)


def normalize(x, resolution=None):
    """Images in [-1, 1] (B, 3, H, W), as minedit's models use them -> CLIP's normalized input, resized
    (bicubic) to `resolution` when given (e.g. 32 px scenes for a ResNet CLIP that works at 128 px)."""
    if resolution is not None and x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False).clamp(-1, 1)
    x = (x + 1) / 2
    mean, std = torch.tensor(MEAN, device=x.device), torch.tensor(STD, device=x.device)
    return (x - mean[:, None, None]) / std[:, None, None]


class Preprocess:
    """PIL image -> (3, n, n) tensor: bicubic resize of the short side to n, center crop, RGB, mean/std."""

    def __init__(self, n_px):
        self.n_px = n_px

    def __call__(self, image):
        from PIL import Image
        n, (w, h) = self.n_px, image.size
        size = (n, int(n * h / w)) if w <= h else (int(n * w / h), n)
        if size != (w, h):
            image = image.resize(size, Image.BICUBIC)
        w, h = image.size
        top, left = int(round((h - n) / 2.0)), int(round((w - n) / 2.0))
        image = image.crop((left, top, left + n, top + n)).convert("RGB")
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]

# -----------------------------------------------------------------------------
# loading public and minedit weights

EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")  # archive extras; the mask is derived
HF_RENAMES = (  # Hugging Face CLIPModel -> OpenAI, applied as prefix/substring renames in this order
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
    ("text_model.final_layer_norm.", "ln_final."),
    ("text_model.encoder.layers.", "transformer.resblocks."),
    ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
    ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
    ("vision_model.pre_layrnorm.", "visual.ln_pre."),
    ("vision_model.post_layernorm.", "visual.ln_post."),
    ("vision_model.encoder.layers.", "visual.transformer.resblocks."),
    (".self_attn.out_proj.", ".attn.out_proj."), (".layer_norm1.", ".ln_1."), (".layer_norm2.", ".ln_2."),
    (".mlp.fc1.", ".mlp.c_fc."), (".mlp.fc2.", ".mlp.c_proj."),
)


def from_hf(sd):
    """Hugging Face CLIPModel state dict -> OpenAI layout (q/k/v projections fused, projections transposed)."""
    out = {}
    for k, v in sd.items():
        if k.endswith("position_ids"):
            continue  # a buffer in older transformers versions, not a weight
        if k == "text_projection.weight":
            out["text_projection"] = v.t()
            continue
        if k == "visual_projection.weight":
            out["visual.proj"] = v.t()
            continue
        if ".self_attn.q_proj." in k:
            kind = k.rsplit(".", 1)[1]
            qkv = [sd[k.replace(".q_proj.", f".{p}_proj.")] for p in "qkv"]
            k = k.split(".self_attn.")[0] + f".attn.in_proj_{kind}"
            v = torch.cat(qkv, dim=0)
        elif ".self_attn.k_proj." in k or ".self_attn.v_proj." in k:
            continue
        for old, new in HF_RENAMES:
            k = k.replace(old, new)
        out[k] = v
    return out


def infer_config(sd, quick_gelu=True):
    """A CLIPConfig from tensor shapes alone (OpenAI's build_model rules: heads = width // 64)."""
    try:
        layers = lambda prefix: len({k.split(".")[2 if prefix == "transformer" else 3] for k in sd
                                     if k.startswith(prefix + ".resblocks.")})
        if "visual.proj" in sd:  # a ViT
            vision_width, patch = sd["visual.conv1.weight"].shape[0], sd["visual.conv1.weight"].shape[-1]
            resolution = patch * round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            vision_layers = layers("visual.transformer")
        else:  # a ModifiedResNet: no visual.proj, an attention pool instead
            vision_width, patch = sd["visual.layer1.0.conv1.weight"].shape[0], None
            resolution = 32 * round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            vision_layers = tuple(len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{i}.")}) for i in (1, 2, 3, 4))
        width = sd["ln_final.weight"].shape[0]
        return CLIPConfig(embed_dim=sd["text_projection"].shape[1], image_resolution=resolution,
                          vision_layers=vision_layers, vision_width=vision_width,
                          vision_patch_size=patch, context_length=sd["positional_embedding"].shape[0],
                          vocab_size=sd["token_embedding.weight"].shape[0], transformer_width=width,
                          transformer_heads=width // 64, transformer_layers=layers("transformer"),
                          quick_gelu=quick_gelu)
    except KeyError as e:
        raise ValueError(f"not a CLIP state dict: missing key {e.args[0]!r}") from None


def load_strict(model, sd):
    """load_state_dict(strict=True) with an error that names the first missing / unexpected keys."""
    want, have = set(model.state_dict()), set(sd)
    missing, unexpected = sorted(want - have), sorted(have - want)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: {len(missing)} missing keys "
                         f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}")
    model.load_state_dict(sd, strict=True)
    return model


def build_model(state_dict, quick_gelu=True):
    """A CLIP whose every hyperparameter is inferred from the state dict's shapes, weights loaded, fp32, eval."""
    sd = {k: v for k, v in state_dict.items() if k not in EXTRA_KEYS}
    model = CLIP(infer_config(sd, quick_gelu))
    return load_strict(model, {k: v.float() for k, v in sd.items()}).eval()


def compact(sd, keep_ids):
    """A minedit checkpoint stores only the token-embedding rows its training used (the rest are untrained
    and would dominate the file); `expand` restores the full table with zeros elsewhere."""
    sd = dict(sd)
    table = sd.pop("token_embedding.weight")
    ids = torch.tensor(sorted(keep_ids), dtype=torch.long)
    sd["token_embedding.rows"], sd["token_embedding.values"] = ids, table[ids]
    sd["token_embedding.shape"] = torch.tensor(table.shape)
    return sd


def expand(sd):
    if "token_embedding.rows" not in sd:
        return sd
    sd = dict(sd)
    ids, values, shape = sd.pop("token_embedding.rows"), sd.pop("token_embedding.values"), sd.pop("token_embedding.shape")
    table = torch.zeros(*shape.tolist(), dtype=values.dtype)
    table[ids] = values
    sd["token_embedding.weight"] = table
    return sd


def load(path, quick_gelu=None):
    """Load CLIP weights from: an OpenAI release file (TorchScript), a plain OpenAI / open_clip state
    dict, a Hugging Face CLIPModel state dict (.bin, or .safetensors with the safetensors package), or a
    minedit checkpoint. Returns (model in eval mode, fp32, on CPU; preprocess for PIL images).
    quick_gelu defaults to True (every OpenAI-trained CLIP uses it) unless a minedit config says otherwise."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        sd = load_file(path)
    else:
        try:
            sd = torch.jit.load(path, map_location="cpu").state_dict()
        except RuntimeError:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and sd.get("kind") == "clip":  # minedit's own checkpoint
        config = CLIPConfig(**sd["config"])
        if quick_gelu is not None:
            config.quick_gelu = quick_gelu
        model = load_strict(CLIP(config), {k: v.float() for k, v in expand(sd["model"]).items()}).eval()
        return model, Preprocess(config.image_resolution)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a CLIP state dict")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if any(k.startswith(("text_model.", "vision_model.")) for k in sd):
        sd = from_hf(sd)
    model = build_model(sd, True if quick_gelu is None else quick_gelu)
    return model, Preprocess(model.config.image_resolution)


def text_tower_hash(model):
    """The first 16 hex digits of a sha256 over the text tower's weights (as stored: fp16). A model that
    reads only CLIP text (the instruct model) stays valid as long as this is unchanged, even when a new
    image tower is trained beside a frozen text tower (train_clip.py --text-from --freeze-text)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if not k.startswith("visual.") and k != "logit_scale":
            h.update(k.encode() + v.detach().half().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def checkpoint(model, keep_ids, **extra):
    """A minedit CLIP checkpoint: kind, config, fp16 weights with the token table compacted."""
    sd = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    return {"kind": "clip", "version": 1, "config": asdict(model.config), "model": compact(sd, keep_ids), **extra}
