"""The edit benchmark: held-out test triplets (source, instruction, exact target), every method, the
same metrics.

Metrics, per method (and per edit type for the main one):
- l1, l2: distance to the exact target image, pixels in [0, 1];
- success: the attribute reader reads every attribute of the result as the target's;
- preservation: of the attributes the edit did not touch, the fraction still right;
- ceiling: the reader's success on the exact target images, i.e. what an editor that draws the exact
  target would score (the reader errs on a few percent of renders, shapes most);
- clip_im: cos(CLIP(result), CLIP(source)); clip_out: cos(CLIP(result), text(target caption));
  clip_dir: cos(CLIP(result) - CLIP(source), text(target caption) - text(source caption))
  (InstructPix2Pix's CLIP metrics, with the shipped CLIP).

Methods: instruct (a small s_I x s_T grid on the first --n-grid triplets, with success per edit type, then
the defaults on all; the grid's default cell is reused when --n-grid is --n; --per-kind N adds N triplets
of every edit type, for per-type success with 95% intervals),
sdedit (decoder conditioned on prior(target caption)), textdiff (target vs source caption), ref (the
direction of another test triplet's pair with the same instruction kind and the same change).

    python bench/edit.py [--n 500] [--methods instruct sdedit textdiff ref] [--steps 20]   # JSON + a table
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

from minedit import pipeline
from minedit import toyworld as tw
from minedit.reader import attributes, load_reader, read
from minedit.training import checkpoint_arg
from minedit.utils import CHECKPOINTS

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--weights", default=str(CHECKPOINTS),
               help="folder of clip.pt, decoder.pt, prior.pt, instruct.pt (default: the shipped ones)")
p.add_argument("--n", type=int, default=500, help="triplets every method is scored on (default: %(default)s)")
p.add_argument("--split", default="test", choices=["test", "val", "train"],
               help="triplets to score: test (default; each has a held-out shape-colour pair), val (in distribution, "
                    "unseen) or train (seen in training); comparing them separates composition from fitting")
p.add_argument("--n-grid", type=int, default=100, help="triplets for the instruct s_I x s_T grid (0: no grid)")
p.add_argument("--n-slow", type=int, default=200, help="triplets for textdiff and ref (they invert every image)")
p.add_argument("--per-kind", type=int, default=0,
               help="instruct: also N triplets of every edit type at the defaults (0: none), for per-type figures "
                    "tighter than the 30-70 of each type among --n (each with a 95%% Wilson interval)")
p.add_argument("--kinds", nargs="+", default=list(tw.EDIT_KINDS), choices=tw.EDIT_KINDS, metavar="KIND",
               help="the edit types --per-kind covers (default: all nine)")
p.add_argument("--methods", nargs="+", default=["instruct", "sdedit", "textdiff", "ref"],
               help="methods to score (default: all four)")
p.add_argument("--steps", type=int, default=20, help="DDIM steps of the image model (default: %(default)s, as edit.py)")
p.add_argument("--cfg-image", type=float, default=1.0, help="instruct: image guidance s_I (default: %(default)s)")
p.add_argument("--cfg-text", type=float, default=2.0, help="instruct: text guidance s_T (default: %(default)s)")
p.add_argument("--eta", type=float, default=pipeline.INSTRUCT_ETA,
               help="instruct: DDIM eta (default: %(default)s, as the pipeline; 0 = deterministic)")
p.add_argument("--grid-image", type=float, nargs="+", default=[1.0, 1.5],
               help="instruct grid: the s_I values (default: %(default)s)")
p.add_argument("--grid-text", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0],
               help="instruct grid: the s_T values (default: %(default)s)")
p.add_argument("--strength", type=float, default=0.6, help="sdedit: how far the source is noised, 0-1 (default: %(default)s)")
p.add_argument("--prior-guidance", type=float, default=1.0,
               help="sdedit: the prior's CFG scale (default: %(default)s, as the pipeline)")
p.add_argument("--prior-steps", type=int, default=pipeline.PRIOR_STEPS,
               help="sdedit: the prior's DDIM steps (default: %(default)s, as the pipeline)")
p.add_argument("--theta", type=float, default=pipeline.THETA,
               help="textdiff, ref: slerp fraction (default: %(default)s, as the pipeline)")
p.add_argument("--seed", type=int, default=0, help="sampling seed (batch b draws from seed 1000 * SEED + b); "
                                                    "other seeds measure how much a figure moves with the noise alone")
p.add_argument("--batch", type=int, default=100, help="triplets edited at once (default: %(default)s)")
p.add_argument("--reader", default=None,
               help="the attribute reader that scores every result and target (default: checkpoints/reader.pt)")
p.add_argument("--out", default=None, help="also write the JSON here")
a = p.parse_args()
if a.n == 0 and (a.n_grid or set(a.methods) - {"instruct"} or not a.per_kind):
    p.error("--n 0 scores the --per-kind triplets alone: give --methods instruct --n-grid 0 --per-kind N")
torch.set_num_threads(2)
t0 = time.time()
models = pipeline.Models(a.weights)
checkpoint_arg(vars(a), "reader", "reader")  # a missing, unreadable or foreign file: one line, exit 2
reader = load_reader(a.reader)
edits = [tw.sample_edit(0, a.split, i) for i in range(a.n)]
if "instruct" in a.methods:  # the --per-kind triplets follow the main ones: index a.n onwards
    edits += [tw.sample_edit(0, a.split, i, kind=k) for k in a.kinds for i in range(a.per_kind)]
src = tw.render_batch([e.source for e in edits], 32)
tgt = tw.render_batch([e.target for e in edits], 32)
src_cap, tgt_cap = [tw.caption(e.source) for e in edits], [tw.caption(e.target) for e in edits]
z_src = pipeline.encode_images(models.clip, src)
t_src, t_tgt = pipeline.encode_texts(models.clip, src_cap)["emb"], pipeline.encode_texts(models.clip, tgt_cap)["emb"]
target_read_right = [attributes(r) == attributes(e.target) for r, e in zip(read(reader, tgt), edits)]


def metrics(out, idx):
    """Metrics of results `out` (k, 3, 32, 32) for triplets idx; per-sample dicts."""
    got = read(reader, out)
    z = pipeline.encode_images(models.clip, out)
    rows = []
    for j, i in enumerate(idx):
        e, r = edits[i], attributes(got[j])
        want, before = attributes(e.target), attributes(e.source)
        kept = [k for k in want if before.get(k) == want[k]]
        d = z[j] - z_src[i]
        rows.append({
            "kind": e.kind,
            "objects": len(e.source.objects),
            "l1": ((out[j] - tgt[i]).abs() / 2).mean().item(),
            "l2": (((out[j] - tgt[i]) / 2) ** 2).mean().item(),
            "success": float(r == want),
            "ceiling": float(target_read_right[i]),
            "preservation": sum(r.get(k) == want[k] for k in kept) / max(1, len(kept)),
            "clip_im": (z[j] * z_src[i]).sum().item(),
            "clip_out": (z[j] * t_tgt[i]).sum().item(),
            "clip_dir": F.cosine_similarity(d, t_tgt[i] - t_src[i], dim=0).item() if d.norm() > 1e-6 else 0.0,
        })
    return rows


def summary(rows):
    keys = ("success", "ceiling", "preservation", "l1", "l2", "clip_im", "clip_dir", "clip_out")
    return {"n": len(rows), **{k: round(sum(r[k] for r in rows) / len(rows), 4) for k in keys}}


def per_kind(rows):
    """summary() per edit type, for the types present (a small --n may miss some)."""
    return {k: summary(r) for k in tw.EDIT_KINDS if (r := [x for x in rows if x["kind"] == k])}


def per_count(rows):
    """summary() by the source's object count: CLIP binds attributes to objects weakly (bench/clip.py),
    so two-object scenes are where embedding-based methods fail."""
    return {str(c): summary([x for x in rows if x["objects"] == c]) for c in sorted({x["objects"] for x in rows})}


def wilson(k, n, z=1.96):
    """95% Wilson score interval of a binomial proportion k / n."""
    c, h = (k + z * z / 2) / (n + z * z), z * (k * (n - k) / n + z * z / 4) ** 0.5 / (n + z * z)
    return [round(c - h, 4), round(c + h, 4)]


def run(method, idx, **kw):
    outs = []
    for b in range(0, len(idx), a.batch):
        ib = idx[b:b + a.batch]
        x = src[ib]
        g = torch.Generator().manual_seed(1000 * a.seed + b)
        if method == "instruct":
            y = pipeline.edit_instruct(models, x, [edits[i].instruction for i in ib], kw["s_image"], kw["s_text"], a.steps, g,
                                          eta=a.eta)
        elif method == "sdedit":
            y = pipeline.edit_sdedit(models, x, [tgt_cap[i] for i in ib], a.strength, 3.0, a.steps, g, a.prior_guidance,
                                    prior_steps=a.prior_steps)
        elif method == "textdiff":
            d = F.normalize(t_tgt[ib] - t_src[ib], dim=-1)
            y = pipeline.edit_direction(models, x, d, a.theta, 1.0, a.steps)
        else:  # ref: the pair of another triplet with the same instruction
            d = F.normalize(torch.stack([ref_direction(i) for i in ib]), dim=-1)
            y = pipeline.edit_direction(models, x, d, a.theta, 1.0, a.steps)
        outs.append(y)
    return torch.cat(outs)


def ref_direction(i):
    """CLIP direction of an example pair showing the same edit: another source of the split, edited with
    the same instruction (toy-world edits are re-applied by their attributes)."""
    e = edits[i]
    for k in range(1, 400):
        other = tw.sample_edit(1, a.split, i * 1000 + k, kind=e.kind)
        if other.instruction == e.instruction:
            z = pipeline.encode_images(models.clip, tw.render_batch([other.source, other.target], 32))
            return z[1] - z[0]
    ref_fallbacks.append(i)
    return t_tgt[i] - t_src[i]  # no pair found: fall back to the text direction


ref_fallbacks = []


result = {"split": a.split, "n": a.n, "steps": a.steps, "seed": a.seed, "reader": a.reader or "checkpoints/reader.pt",
          "methods": {}}
all_idx = list(range(a.n))
if "instruct" in a.methods:
    rows = None
    if a.n_grid:
        grid = {}
        for si in a.grid_image:
            for st in a.grid_text:
                cell = metrics(run("instruct", all_idx[:a.n_grid], s_image=si, s_text=st), all_idx[:a.n_grid])
                key = f"s_I={si:g},s_T={st:g}"
                grid[key] = {**summary(cell), "success_per_kind": {k: v["success"] for k, v in per_kind(cell).items()}}
                print("grid", key, json.dumps(grid[key]), flush=True)
                if (si, st) == (a.cfg_image, a.cfg_text) and a.n_grid == a.n:
                    rows = cell  # the defaults' cell covers every triplet: no second run
        result["instruct_grid"] = grid
    if rows is None and a.n:
        rows = metrics(run("instruct", all_idx, s_image=a.cfg_image, s_text=a.cfg_text), all_idx)
    if rows:  # --n 0 with --per-kind: the per-type triplets only
        result["methods"]["instruct"] = summary(rows)
        print("instruct", json.dumps(result["methods"]["instruct"]), flush=True)
        result["instruct_per_kind"] = per_kind(rows)
        result["instruct_by_object_count"] = per_count(rows)
    result["cfg"] = {"s_I": a.cfg_image, "s_T": a.cfg_text, "eta": a.eta}
    if a.per_kind:
        idx = list(range(a.n, len(edits)))
        rows = metrics(run("instruct", idx, s_image=a.cfg_image, s_text=a.cfg_text), idx)
        result["instruct_per_kind_balanced"] = {
            k: {**v, "success_95": wilson(sum(r["success"] for r in rows if r["kind"] == k), v["n"])}
            for k, v in per_kind(rows).items()}
for m in ("sdedit", "textdiff", "ref"):
    if m in a.methods:
        idx = all_idx if m == "sdedit" else all_idx[:a.n_slow]
        rows = metrics(run(m, idx), idx)
        result["methods"][m] = summary(rows)
        print(m, json.dumps(result["methods"][m]), flush=True)
        result[f"{m}_per_kind"] = per_kind(rows)
        result[f"{m}_by_object_count"] = per_count(rows)
        if m == "sdedit":
            result["sdedit_settings"] = {"strength": a.strength, "prior_guidance": a.prior_guidance,
                                         "prior_steps": a.prior_steps}
if "ref" in a.methods:
    result["ref_pairs_not_found_used_text_direction"] = len(ref_fallbacks)
result["seconds"] = round(time.time() - t0)
text = json.dumps(result, indent=1)
print(text)
if a.out:
    with open(a.out, "w") as f:
        f.write(text)

cols = ("n", "success", "ceiling", "preservation", "l1", "l2", "clip_im", "clip_dir", "clip_out")
print("\n| method | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
for m, s in result["methods"].items():
    print(f"| {m} | " + " | ".join(str(s[c]) for c in cols) + " |")
if "instruct_per_kind" in result:
    print("\n| edit (instruct) | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
    for k, s in result["instruct_per_kind"].items():
        print(f"| {k} | " + " | ".join(str(s[c]) for c in cols) + " |")
if "instruct_per_kind_balanced" in result:
    print(f"\ninstruct, {a.per_kind} triplets of each edit type: success [95% interval] / the reader on the exact "
          "targets / preservation / L1")
    print("| edit | success | ceiling | preservation | l1 |\n|---|---|---|---|---|")
    for k, s in result["instruct_per_kind_balanced"].items():
        lo, hi = s["success_95"]
        print(f"| {k} | {s['success']} [{lo}, {hi}] | {s['ceiling']} | {s['preservation']} | {s['l1']} |")
if "instruct_grid" in result:
    g = result["instruct_grid"]
    print(f"\ninstruct grid on {a.n_grid} triplets: success / preservation / L1 / no-op success")
    print("| | " + " | ".join(f"s_T {st:g}" for st in a.grid_text) + " |\n|" + "---|" * (len(a.grid_text) + 1))
    for si in a.grid_image:
        cells = [g[f"s_I={si:g},s_T={st:g}"] for st in a.grid_text]
        row = [f"{c['success']} / {c['preservation']} / {c['l1']} / {c['success_per_kind'].get('noop', '-')}"
               for c in cells]
        print(f"| s_I {si:g} | " + " | ".join(row) + " |")
