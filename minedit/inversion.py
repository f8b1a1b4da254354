"""
Textual inversion (Gal et al. 2022, "An Image is Worth One Word"): learn the input vector(s) of a new
word, such as "<s*>", from a few images of a concept, with every network frozen.

The word is a token added after the tokenizer's vocabulary; the CLIP text encoder takes its vectors
through `encode_text(..., token_overrides={id: vector})`, never by patching the model. A word may have
several vectors ("<s*>", "<s*>_1", ... in the text, as diffusers writes them). The vectors start from an
initializer word's embedding, optionally with an L2 pull back toward it (seed 004: the farther the
vector drifts, the better it reconstructs and the worse it edits).

Objective: the diffusion prior's denoising loss on the concept images' CLIP image embeddings, given
captions that contain the word. The prior is the only text reader on the unCLIP path (the decoder sees
image embeddings only), so a word the prior maps to the concept's embedding is one the decoder draws.

Files: saved as diffusers' {token: (n, W) tensor}; loaded from that, from the original textual-inversion
format and from AUTOMATIC1111's (both `string_to_param`), all with torch.load(weights_only=True).

    python -m minedit.inversion --images examples/concept --token "<s*>" --init object --out learned.pt
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

from minedit.tokenizer import Tokenizer, clean, tokenize

TEMPLATES = ["a picture of {}", "a {}", "an image of a {}", "a small picture of a {}"]


def vector_names(token, n):
    """The tokens that stand for a word with n vectors: token, token_1, ..., token_{n-1}."""
    return [token] + [f"{token}_{i}" for i in range(1, n)]


class Concepts:
    """Learned words, ready for the text encoder: a tokenizer that knows them, `overrides` for
    encode_text(token_overrides=...), and `expand` to write a multi-vector word as its n tokens."""

    def __init__(self, embeddings):
        self.embeddings = {clean(k): v if v.dim() == 2 else v[None] for k, v in embeddings.items()}  # (n, W)
        self.tokenizer = Tokenizer()
        self.overrides = {}
        for token, vecs in self.embeddings.items():
            ids = self.tokenizer.add_tokens(vector_names(token, len(vecs)))
            self.overrides.update({i: v for i, v in zip(ids, vecs)})

    def expand(self, text):
        text = clean(text)
        for token, vecs in self.embeddings.items():
            if len(vecs) > 1:
                text = text.replace(token, " ".join(vector_names(token, len(vecs))))
        return text

    def tokenize(self, texts, context_length):
        return tokenize([self.expand(t) for t in texts], context_length, self.tokenizer)


def save_embeddings(embeddings, path):
    """diffusers' format: {token: (n_vectors, W) tensor}, written atomically."""
    from minedit.utils import save_checkpoint
    save_checkpoint({k: v.detach().float().cpu().clone() for k, v in embeddings.items()}, path)


def load_embeddings(path):
    """{token: (n_vectors, W) float tensor} from a diffusers file, an original textual-inversion
    embeddings.pt (string_to_token + string_to_param, an nn.ParameterDict) or an A1111 .pt (string_to_param
    plus the word as "name"). The original format's "*" placeholder is kept as the token "*"."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file  # optional: only for .safetensors files
        data = load_file(path)
    else:
        with torch.serialization.safe_globals([torch.nn.ParameterDict, torch.nn.Parameter]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a textual-inversion file (found {type(data).__name__})")
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = dict(getattr(params, "_parameters", params))  # a ParameterDict in the original format
        if "name" in data and len(params) == 1:  # A1111: the word is the file's name
            params = {data["name"]: next(iter(params.values()))}
        out = params
    else:
        out = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if len(out) != len(data) or not out:
            raise ValueError(f"{path}: not a textual-inversion file (expected {{token: tensor}} or string_to_param)")
    return {k: (v.detach().float() if v.dim() == 2 else v.detach().float()[None]) for k, v in out.items()}


def learn(clip, prior, diffusion, images, token="<s*>", init="object", captions=None, n_vectors=1, steps=300,
          lr=5e-3, reg=0.0, batch_size=16, seed=0, progress=True):
    """Learn {token: (n_vectors, W)} from images (N, 3, R, R) in [-1, 1] at CLIP's resolution. `captions`
    (one per image, containing the token) or TEMPLATES give the texts; reg weighs ||v - v_init||^2."""
    from minedit.pipeline import encode_images
    g = torch.Generator().manual_seed(seed)
    init_ids = Tokenizer().encode(init)
    if not init_ids:
        raise ValueError(f"initializer {init!r} has no tokens")
    v0 = clip.token_embedding.weight[init_ids[0]].detach().float()  # (W,)
    vecs = torch.nn.Parameter(v0.repeat(n_vectors, 1).clone())  # (n, W)
    concepts = Concepts({token: vecs.detach()})
    ids_of = list(concepts.overrides)
    x0 = prior.standardize(encode_images(clip, images))  # (N, E)
    texts = captions or [t.format(token) for t in TEMPLATES]
    opt = torch.optim.Adam([vecs], lr=lr)
    for p in list(clip.parameters()) + list(prior.parameters()):
        p.requires_grad_(False)
    pbar = tqdm(range(steps), desc="inversion", disable=not progress, mininterval=1)
    for _ in pbar:
        idx = torch.randint(0, len(x0), (batch_size,), generator=g)
        batch = [captions[i] for i in idx] if captions else [texts[i] for i in torch.randint(0, len(texts), (batch_size,), generator=g)]
        ids = concepts.tokenize(batch, clip.config.context_length)
        z, h = clip.encode_text(ids, token_overrides=dict(zip(ids_of, vecs)), return_states=True)
        mask = torch.arange(h.shape[1])[None] < ((ids == clip.config.eot_token).int().argmax(-1) + 1)[:, None]
        kw = {"text_emb": F.normalize(z, dim=-1), "text_states": h, "text_mask": mask}
        loss = diffusion.training_losses(prior, x0[idx], model_kwargs=kw, generator=g).mean()
        total = loss + reg * (vecs - v0).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        pbar.set_postfix(loss=f"{loss.item():.4f}", drift=f"{(vecs - v0).norm(dim=-1).mean().item():.3f}")
    return {token: vecs.detach().clone()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="a folder of images of the concept (a same-name .txt caption "
                   "containing the token is used where present, else generic templates)")
    p.add_argument("--token", default="<s*>", help="the new word (default: %(default)s)")
    p.add_argument("--init", default="object", help="initializer word (default: %(default)s)")
    p.add_argument("--out", required=True, help="output file ({token: tensor}, diffusers' format)")
    p.add_argument("--vectors", type=int, default=1, help="vectors per word (default: %(default)s)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--reg", type=float, default=0.0, help="weight of the L2 pull toward the initializer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=None, help="folder with clip.pt and prior.pt (default: the shipped ones)")
    a = p.parse_args()
    from minedit import training
    from minedit.pipeline import Models
    from minedit.utils import CHECKPOINTS, from_image
    if not os.path.isdir(a.images):
        sys.exit(print(f"error: --images {a.images}: not a folder", file=sys.stderr) or 2)
    if a.steps < 1 or a.vectors < 1 or a.lr <= 0 or a.reg < 0:
        sys.exit(print("error: --steps and --vectors must be >= 1, --lr > 0, --reg >= 0", file=sys.stderr) or 2)
    training.check_out(a.out)
    models = Models(a.weights or CHECKPOINTS)
    res = models.clip.config.image_resolution
    try:
        paths, _, arrays = training.folder_images(a.images, res)
    except (ValueError, OSError) as e:
        sys.exit(print(f"error: --images {a.images}: {e}", file=sys.stderr) or 2)
    txt = [q.with_suffix(".txt") for q in paths]
    captions = [t.read_text().strip() for t in txt] if all(t.exists() for t in txt) else None
    if captions and not all(clean(a.token) in clean(c) for c in captions):
        captions = None
    print(f"learning {a.token!r} ({a.vectors} vector(s), init {a.init!r}) from {len(paths)} images; seed {a.seed}; "
          f"{'their captions' if captions else 'generic templates'}")
    images = from_image(arrays)
    prior, diffusion = models.prior
    emb = learn(models.clip, prior, diffusion, images, a.token, a.init, captions, a.vectors, a.steps, a.lr, a.reg, seed=a.seed)
    save_embeddings(emb, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
