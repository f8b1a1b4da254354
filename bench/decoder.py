"""Decoder quality on held-out test scenes, judged by the attribute reader.

1. Reconstruction from the embedding: image -> CLIP image embedding -> decoder sample (DDIM, CFG) ->
   reader. Fraction of samples whose shapes, colours (as multisets), background and style match the source.
2. DDIM-inversion round trip: image -> x_T (conditioned on its own embedding, no guidance) -> image; PSNR.
A decoder trained with captions (train_decoder.py --caption) also reads each source scene's canonical
caption, as unCLIP's decoder reads the caption beside the image embedding.
--rerank-images K adds a row where K images are decoded per embedding and the one whose CLIP image embedding
is closest to that embedding is read (best-of-K reranking; it uses nothing the decoder was not given).

    python bench/decoder.py [--n 500] [--guidance 3] [--steps 50] [--eta 0] [--no-caption] [--rerank-images K]   # JSON
"""
import argparse
import json
import time

import torch

from minedit import toyworld as tw
from minedit.clip import load as load_clip
from minedit.pipeline import decoder_model, encode_images, encode_texts, load_decoder
from minedit.prior import rerank
from minedit.reader import load_reader, read

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--decoder", default="checkpoints/decoder.pt", help="the decoder to score (default: %(default)s)")
p.add_argument("--clip", default="checkpoints/clip.pt", help="the CLIP it was trained on (default: %(default)s)")
p.add_argument("--n", type=int, default=500, help="test scenes to reconstruct from their embeddings (default: %(default)s)")
p.add_argument("--n-inversion", type=int, default=100,
               help="of them, images for the DDIM-inversion round trip (default: %(default)s)")
p.add_argument("--guidance", type=float, default=3.0, help="CFG scale on the embedding, 1 = none (default: %(default)s)")
p.add_argument("--steps", type=int, default=50, help="DDIM steps (default: %(default)s)")
p.add_argument("--batch", type=int, default=100, help="images sampled at once (default: %(default)s)")
p.add_argument("--no-caption", action="store_true", help="a caption decoder without its caption (the embedding alone)")
p.add_argument("--rerank-images", type=int, default=0, metavar="K",
               help="also decode K images per embedding and read the one CLIP finds closest to it; K times the decoding")
p.add_argument("--eta", type=float, default=0.0,
               help="DDIM eta: 0 is deterministic, 1 adds fresh noise at every step as DDPM does (default: %(default)s)")
p.add_argument("--seed", type=int, default=0, help="sampling seed; others show how much the figures move with the noise alone")
a = p.parse_args()
torch.set_num_threads(2)
t0 = time.time()
unet, diffusion, _ = load_decoder(a.decoder)
clip, _ = load_clip(a.clip)
reader = load_reader()
scenes = [tw.sample_scene(0, "test", i) for i in range(a.n)]
x = tw.render_batch(scenes, unet.config.image_size)
with torch.no_grad():
    emb = encode_images(clip, x)
    text = encode_texts(clip, [tw.caption(s) for s in scenes]) if unet.config.context_dim and not a.no_caption else None
part = lambda i, j: {k: v[i:j] for k, v in text.items()} if text else None


def decode_all(seed):
    """Decode every test embedding from the noise of one generator seeded with `seed`."""
    samples = []
    g = torch.Generator().manual_seed(seed)
    for i in range(0, a.n, a.batch):
        e = emb[i:i + a.batch]
        model = decoder_model(unet, e, a.guidance, part(i, i + a.batch), diffusion)
        samples.append(diffusion.ddim_sample(model, noise=torch.randn(len(e), 3, *x.shape[2:], generator=g), steps=a.steps,
                                             eta=a.eta, generator=g))
    return torch.cat(samples)


samples = decode_all(a.seed)
got = read(reader, samples)
ms = lambda s, k: sorted(getattr(o, k) for o in s.objects)


def match_rates(pairs):
    """Fractions of (source, read) scene pairs whose attributes match."""
    rate = lambda same: sum(same(s, r) for s, r in pairs) / len(pairs)
    out = {k: rate(lambda s, r: ms(s, k) == ms(r, k)) for k in ("shape", "color", "size", "pos")}
    out["background"] = rate(lambda s, r: s.background == r.background)
    out["style"] = rate(lambda s, r: s.style == r.style)
    out["all"] = rate(lambda s, r: s == r)
    return out


def by_object_count(got):
    """Shape, colour and all by object count: shape and colour must match for every object, so scenes with
    more objects also test whether the embedding binds each colour to its shape."""
    out = {}
    for c in sorted({len(s.objects) for s in scenes}):
        pairs = [(s, r) for s, r in zip(scenes, got) if len(s.objects) == c]
        m = match_rates(pairs)
        out[str(c)] = {"n": len(pairs), **{k: round(m[k], 4) for k in ("shape", "color", "all")}}
    return out


match, by_count = match_rates(list(zip(scenes, got))), by_object_count(got)
ranked = {}
if a.rerank_images > 1:  # K images per embedding; keep the one whose own embedding is closest to it
    xs = torch.stack([samples] + [decode_all(a.seed + 1000 * k) for k in range(1, a.rerank_images)])  # (K, n, 3, H, W)
    keys = torch.stack([encode_images(clip, xk) for xk in xs])  # (K, n, E)
    score = (keys * emb).sum(-1)  # (K, n)
    got_best = read(reader, rerank(xs, emb, keys))
    key = f"best_of_{a.rerank_images}_images"
    ranked = {f"reconstruction_match_test_{key}": {k: round(v, 4) for k, v in match_rates(list(zip(scenes, got_best))).items()},
              f"by_object_count_{key}": by_object_count(got_best),
              "cosine_to_embedding_one_image_mean": round(score[0].mean().item(), 4),
              f"cosine_to_embedding_{key}_mean": round(score.max(0).values.mean().item(), 4)}

n = a.n_inversion
with torch.no_grad():
    # unguided; a self-conditioned decoder reads the estimate of the same step both ways
    model = decoder_model(unet, emb[:n], 1.0, part(0, n), diffusion, same_step=True)
    xT = diffusion.ddim_invert(model, x[:n], steps=a.steps)
    back = diffusion.ddim_sample(model, noise=xT, steps=a.steps, clip_denoised=False)
mse = ((back.clamp(-1, 1) - x[:n]) / 2).pow(2).flatten(1).mean(1)  # in [0, 1] pixel units
psnr = (10 * torch.log10(1 / mse.clamp(min=1e-12)))
result = {"reconstruction_match_test": {k: round(v, 4) for k, v in match.items()},
          "by_object_count": by_count, **ranked,
          "captions": text is not None, "n": a.n, "seed": a.seed, "guidance": a.guidance, "ddim_steps": a.steps, "eta": a.eta,
          "inversion_psnr_db_mean": round(psnr.mean().item(), 2), "inversion_psnr_db_min": round(psnr.min().item(), 2),
          "n_inversion": n, "seconds": round(time.time() - t0)}
print(json.dumps(result, indent=1))
