"""Diffusion prior quality on held-out test captions (unseen shape-colour combinations; --split val or
train for the other splits).

1. Cosine similarity between an embedding and the true CLIP image embedding of the scene the caption
   describes, for: the prior's sample (best of 2), the caption's text embedding used directly, the
   nearest training image embedding to the text embedding (retrieval), and a linear least-squares map
   from text to image embedding fitted on the prior's training pairs.
   Paired per caption: the best prior's gain over each baseline (mean, bootstrap 95% interval, win rate).
2. text -> prior -> decoder -> image, read by the attribute reader: the fraction of images whose
   colours, shapes (as multisets) and style are those the caption names. Scenes with the unnamed
   concept shape are left out (their captions call it "object"). Also split by the caption's object
   count, and the same decoding from each scene's true image embedding (a perfect prior: what is left
   is the decoder's). A decoder trained with captions (train_decoder.py --caption) also reads the caption.
   --rerank-images K adds a row where K images are decoded per caption and CLIP picks one (DALL-E's reranking).

    python bench/prior.py [--n 500] [--guidance 2] [--decoder-guidance 3] [--steps 2]   # prints JSON
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

from minedit import toyworld as tw
from minedit import training
from minedit.pipeline import PRIOR_STEPS, Models, decode, encode_images, encode_texts, text_to_embedding
from minedit.prior import rerank
from minedit.reader import load_reader, read
from minedit.utils import CHECKPOINTS, load_checkpoint

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--weights", default=str(CHECKPOINTS), help="folder of clip.pt, prior.pt, decoder.pt (default: the shipped ones)")
p.add_argument("--n", type=int, default=500, help="captions (default: %(default)s)")
p.add_argument("--split", default="test", choices=tw.SPLITS,
               help="where the captions come from (default: %(default)s: every scene holds an unseen shape-colour "
                    "pair); val and train hold seen pairs only, so the gap between them and test is the unseen pairs'")
p.add_argument("--world-seed", type=int, default=1,
               help="the toy world's seed for the captions (default %(default)s; another seed draws other scenes of the "
                    "same split, e.g. to choose between priors on unseen pairs without the reported draw)")
p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="prior CFG scales to compare")
p.add_argument("--decoder-guidance", type=float, default=3.0, help="part 2: the decoder's CFG scale (default: %(default)s)")
p.add_argument("--steps", type=int, default=PRIOR_STEPS, help="the prior's DDIM steps (default: %(default)s, as the pipeline)")
p.add_argument("--decoder-eta", type=float, default=0.0,
               help="part 2: the decoder's DDIM eta, 0 deterministic, 1 fresh noise at every step (default: %(default)s)")
p.add_argument("--decoder-steps", type=int, default=25, help="part 2: the decoder's DDIM steps (default: %(default)s)")
p.add_argument("--n-best", type=int, default=2, help="prior samples per caption, the one closest to the caption's CLIP text "
                    "embedding kept (default: %(default)s, as the pipeline and DALL-E 2)")
p.add_argument("--rerank-images", type=int, default=0, metavar="K",
               help="part 2 also: decode K images per caption (K decoder noises) and keep the one whose CLIP image "
                    "embedding is closest to the caption's text embedding, as DALL-E reranks its images; K times the "
                    "decoding (default: 0, off)")
p.add_argument("--no-decoder", action="store_true", help="skip part 2")
a = p.parse_args()
torch.set_num_threads(2)
t0 = time.time()
models = Models(a.weights)
scenes, i = [], 0
while len(scenes) < a.n:
    s = tw.sample_scene(a.world_seed, a.split, i)
    i += 1
    if all(o.shape != tw.CONCEPT for o in s.objects):
        scenes.append(s)
captions = [tw.caption(s) for s in scenes]
true = encode_images(models.clip, tw.render_batch(scenes, 32))
text = encode_texts(models.clip, captions)["emb"]
# the baselines see the prior's own training scenes (train_prior.py's --n-images and --seed)
tc = load_checkpoint(models.path("prior"), kind="prior")["train_config"]
_, data, train_emb = training.toy_training_set(models.path("clip"), tc["n_images"], tc["seed"], 32)
nearest = train_emb[(text @ train_emb.T).argmax(1)]
# a third baseline: the least-squares linear map text -> image embedding on the prior's training pairs
train_text = training.toy_caption_features(models.path("clip"), data)["emb"]
X = torch.cat([train_text, torch.ones(len(train_text), 1)], 1)
W = torch.linalg.solve(X.T @ X + 1e-2 * torch.eye(X.shape[1]), X.T @ train_emb)
linear = F.normalize(torch.cat([text, torch.ones(len(text), 1)], 1) @ W, dim=-1)
cos = lambda z: round((z * true).sum(-1).mean().item(), 4)
result = {"split": a.split, "world_seed": a.world_seed, "n": a.n, "n_best": a.n_best, "n_train_pairs": len(train_emb),
          "cosine_to_true_image_embedding": {"text_embedding": cos(text), "nearest_train_image": cos(nearest),
                                             "linear_map_of_text": cos(linear)}}
best, best_g = None, None
for g in a.guidance:
    z = text_to_embedding(models, captions, guidance=g, steps=a.steps, n_best=a.n_best, generator=torch.Generator().manual_seed(0))
    result["cosine_to_true_image_embedding"][f"prior_cfg{g:g}"] = cos(z)
    if best is None or cos(z) > cos(best):
        best, best_g = z, g


def paired(z, base, reps=2000):
    """Per-caption cosine of z minus that of base: mean, a bootstrap 95% interval, and the win rate."""
    d = (z * true).sum(-1) - (base * true).sum(-1)
    g = torch.Generator().manual_seed(0)
    means = d[torch.randint(0, len(d), (reps, len(d)), generator=g)].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975])).tolist()
    return {"mean": round(d.mean().item(), 4), "ci95": [round(lo, 4), round(hi, 4)], "win_rate": round((d > 0).float().mean().item(), 4)}


# the scale of these cosines: a caption's true image against other scenes' images (same split)
result["cosine_to_true_image_embedding"]["another_scene_image"] = cos(true.roll(1, 0))
result["paired_best_prior_minus"] = {"text_embedding": paired(best, text), "nearest_train_image": paired(best, nearest),
                                    "linear_map_of_text": paired(best, linear)}

if not a.no_decoder:
    # a decoder trained with captions (train_decoder.py --caption) also reads the caption, as unCLIP's does
    cap = encode_texts(models.clip, captions) if models.decoder[0].config.context_dim else None
    reader = load_reader()
    ms = lambda s, k: sorted(getattr(o, k) for o in s.objects)

    def reader_accuracy(pairs):
        """Fractions of (caption's scene, read scene) pairs whose colours, shapes (as multisets) and style agree."""
        rate = lambda same: round(sum(same(s, r) for s, r in pairs) / len(pairs), 4)
        acc = {k: rate(lambda s, r: ms(s, k) == ms(r, k)) for k in ("color", "shape")}
        acc["style"] = rate(lambda s, r: s.style == r.style)
        acc["all_three"] = rate(lambda s, r: ms(s, "color") == ms(r, "color") and ms(s, "shape") == ms(r, "shape")
                                and s.style == r.style)
        return acc

    def decode_all(z, seed=0):
        """Decode the embeddings z; the same noise for every z at the same seed."""
        return torch.cat([decode(models, z[j:j + 100], a.decoder_guidance, a.decoder_steps,
                                 generator=torch.Generator().manual_seed(seed * 100003 + j), eta=a.decoder_eta,
                                 caption={k: v[j:j + 100] for k, v in cap.items()} if cap else None)
                          for j in range(0, a.n, 100)])

    def read_accuracy(x):
        """Read the images x, one per caption; accuracy overall and by the caption's object count (two objects
        also ask the embedding which colour goes with which shape)."""
        pairs = list(zip(scenes, read(reader, x)))
        by_count = {}
        for k in sorted({len(s.objects) for s in scenes}):
            sub = [(s, r) for s, r in pairs if len(s.objects) == k]
            by_count[str(k)] = {"n": len(sub), **reader_accuracy(sub)}
        return reader_accuracy(pairs), by_count

    x = decode_all(best)
    result["text_to_image_reader_accuracy"], result["text_to_image_reader_accuracy_by_object_count"] = read_accuracy(x)
    if a.rerank_images > 1:  # more images per caption; the one CLIP finds closest to the caption is read
        xs = torch.stack([x] + [decode_all(best, seed) for seed in range(1, a.rerank_images)])  # (K, n, 3, H, W)
        keys = torch.stack([encode_images(models.clip, xi) for xi in xs])  # (K, n, E)
        key = f"text_to_image_reader_accuracy_best_of_{a.rerank_images}_images"
        result[key], result[key + "_by_object_count"] = read_accuracy(rerank(xs, text, keys))
    # the decoder's share: the same decoding from the true image embedding of each caption's scene (a perfect prior)
    result["true_image_embedding_reader_accuracy"], result["true_image_embedding_reader_accuracy_by_object_count"] = \
        read_accuracy(decode_all(true))
    result["prior_guidance"], result["decoder_guidance"], result["decoder_reads_caption"] = best_g, a.decoder_guidance, cap is not None
    result["decoder_eta"] = a.decoder_eta
result["seconds"] = round(time.time() - t0)
print(json.dumps(result, indent=1))
