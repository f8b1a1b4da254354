"""
Edit an image with words, on minedit's shipped weights (they know the toy world only).

    python edit.py examples/red_star.png "in neon lights"                       # instruct (InstructPix2Pix)
    python edit.py in.png "make the star blue" --cfg-text 3 --cfg-image 1.2 -n 4
    python edit.py in.png "a blue star" --method textdiff --source-caption "a red star" --theta 0.6
    python edit.py in.png "a red star in neon lights" --method sdedit --strength 0.6
    python edit.py in.png "" --method ref --ref before.png after.png             # the edit of an example pair
    python edit.py in.png "turn the circle into a <s*>" --concept learned.pt     # a word from textual inversion
    python edit.py --replay in.edited.png                                       # re-create an output exactly

Methods:
  instruct  the instruction-editing UNet with two-condition guidance: --cfg-image (s_I, how much the
            output keeps of the input) and --cfg-text (s_T, how strongly it follows the instruction).
  textdiff  DALL-E 2 text diffs: the input's CLIP image embedding is turned toward
            normalize(z_text(EDIT) - z_text(--source-caption)) by --theta (slerp) and decoded from the
            input's DDIM-inverted noise; theta 0 gives the input back. EDIT is a caption of the result.
  sdedit    noise the input to --strength and denoise toward prior(EDIT); EDIT is a caption of the result.
  ref       like textdiff, with the direction of an example pair --ref BEFORE AFTER (EDIT may be "").
For textdiff, ref and sdedit, --cfg-text is the decoder's guidance scale.

The output PNG records the recipe (method, text, scales, steps, seed, checkpoint hashes) in its metadata.
"""

import time

START = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image, ImageOps, PngImagePlugin  # noqa: E402

METHODS = ("instruct", "textdiff", "sdedit", "ref")
DEFAULTS = {  # per method: steps, cfg_text, cfg_image (instruct: the benchmark's 20 steps; 50 read no better)
    "instruct": (20, 2.0, 1.0), "textdiff": (50, 1.0, None), "sdedit": (50, 3.0, None), "ref": (50, 1.0, None)}
THETA = 0.3  # textdiff/ref slerp fraction, = minedit.pipeline.THETA (torch is imported late; a test keeps them equal)
MAX_PIXELS = 8192 * 8192  # a decompression-bomb guard: larger images are refused before decoding
VERSION = 1


def fail(message):
    """A one-line error, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        fail(f"{message} (see --help)")


def read_image(path, what="input"):
    """A PIL RGB image, upright (EXIF orientation applied); transparency composited on white; 16-bit
    and palette images converted. Bad files end in fail()."""
    if not os.path.exists(path):
        fail(f"{what} {path}: no such file")
    if os.path.isdir(path):
        fail(f"{what} {path}: is a folder, not an image")
    if os.path.getsize(path) == 0:
        fail(f"{what} {path}: empty file (0 bytes)")
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        fail(f"{what} {path}: image too large to decode safely (over {MAX_PIXELS // 10**6} megapixels)")
    except Exception as e:  # PIL raises many kinds for truncated or foreign files
        fail(f"{what} {path}: not a readable image ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit or float grayscale
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        im = Image.fromarray((a.clip(0, top) / top * 255).round().astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert("RGB")


def to_model(im, res):
    """Pad to a square (never crop) with the mean border colour, resize to res: tensor (1, 3, res, res)
    in [-1, 1], and the image's box in model pixels."""
    import torch
    w, h = im.size
    side = max(w, h)
    a = np.asarray(im)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).mean(0).round().astype(np.uint8)
    square = Image.new("RGB", (side, side), tuple(int(c) for c in border))
    ox, oy = (side - w) // 2, (side - h) // 2
    square.paste(im, (ox, oy))
    small = square.resize((res, res), Image.LANCZOS if side > res else Image.BICUBIC)
    x = torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    s = res / side
    return x, (ox * s, oy * s, (ox + w) * s, (oy + h) * s)


def from_model(x, box, size):
    """(3, res, res) in [-1, 1] -> PIL image of `size`, the padded border cut away."""
    from minedit.utils import to_image
    im = Image.fromarray(to_image(x))
    return im.resize(size, Image.BICUBIC, box=box)


def parse(argv):
    p = Parser(prog="edit.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", help="the image to edit (any size; PNG, JPEG, ...)")
    p.add_argument("edit", nargs="?", help="the instruction (instruct) or a caption of the result (textdiff, sdedit)")
    p.add_argument("-o", "--output", help="output PNG (default: <input stem>.edited.png in the current folder)")
    p.add_argument("--force", action="store_true", help="allow the output to overwrite the input")
    p.add_argument("--method", default="instruct", help=f"one of {', '.join(METHODS)} (default: instruct)")
    p.add_argument("--seed", type=int, help="random seed (default: a fresh one, printed and recorded)")
    p.add_argument("--steps", type=int, help="DDIM steps (default: 20 for instruct, 50 for the others; sdedit's prior "
                                               "samples with 2, see the README)")
    p.add_argument("--cfg-text", type=float, help="instruct: s_T (default 2); textdiff/ref: decoder guidance (1); sdedit: decoder guidance (3)")
    p.add_argument("--cfg-image", type=float, help="instruct: s_I (default 1)")
    p.add_argument("--eta", type=float, help="instruct: DDIM eta, 0 = deterministic (default), 1 = fresh noise each "
                                             "step as in DDPM (seeded too, so --replay still works)")
    p.add_argument("--theta", type=float, default=THETA, help="textdiff/ref: how far to turn, 0..1 (default: %(default)s; EXPERIMENTS.md, Editing)")
    p.add_argument("--strength", type=float, default=0.6, help="sdedit: how much noise, 0..1 (default: %(default)s)")
    p.add_argument("--source-caption", default="a picture", help="textdiff: a caption of the input (default: %(default)r)")
    p.add_argument("--ref", nargs=2, metavar=("BEFORE", "AFTER"), help="ref: an example pair showing the edit")
    p.add_argument("--concept", help="textual-inversion embeddings whose words the text may use")
    p.add_argument("-n", type=int, default=1, help="number of samples: files -0, -1, ... and a grid (default: 1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument("--weights", help="folder with clip.pt, decoder.pt, prior.pt, instruct.pt (default: the shipped ones)")
    p.add_argument("--size", type=int, help="the output's longer side in pixels (default: the input's size)")
    p.add_argument("--replay", metavar="OUT.png", help="re-create an output of edit.py from the recipe in its metadata")
    return p.parse_args(argv)


def recipe_from(path):
    try:
        with Image.open(path) as im:
            return json.loads(im.text["minedit"])
    except Exception:
        fail(f"--replay {path}: no minedit recipe in this file")


def check(a):
    """Validate arguments; every problem ends in fail() before anything is loaded or written."""
    if a.method not in METHODS:
        fail(f"unknown method {a.method!r}; choose one of {', '.join(METHODS)}")
    if a.input is None:
        fail("give an input image and an edit text (or --replay OUT.png); see --help")
    if a.edit is None:
        a.edit = ""
    steps, cfg_text, cfg_image = DEFAULTS[a.method]
    a.steps = steps if a.steps is None else a.steps
    a.cfg_text = cfg_text if a.cfg_text is None else a.cfg_text
    a.cfg_image = cfg_image if a.cfg_image is None else a.cfg_image
    for name in ("cfg_text", "cfg_image", "theta", "strength"):
        v = getattr(a, name)
        if v is not None and (not math.isfinite(v) or v < 0):
            fail(f"--{name.replace('_', '-')} {v}: must be a finite number >= 0")
    if a.eta is not None and not 0 <= a.eta <= 1:  # NaN fails too
        fail(f"--eta {a.eta}: must be in [0, 1]")
    if a.theta > 1 or not 0 < a.strength <= 1:
        fail("--theta must be in [0, 1] and --strength in (0, 1]")
    if not 1 <= a.steps <= 1000 or not 1 <= a.n <= 64:
        fail("--steps must be in 1..1000 and -n in 1..64")
    if a.size is not None and not 8 <= a.size <= 8192:
        fail(f"--size {a.size}: must be in 8..8192")
    if a.method == "ref" and not a.ref:
        fail("--method ref needs --ref BEFORE.png AFTER.png")
    if a.method in ("textdiff", "sdedit") and not a.edit.strip():
        fail(f"--method {a.method} needs a caption of the result as EDIT")
    if a.device not in ("auto", "cpu", "cuda", "mps"):
        fail(f"--device {a.device}: choose auto, cpu, cuda or mps")
    if a.seed is None:
        a.seed = secrets.randbelow(2 ** 31)
    if not 0 <= a.seed < 2 ** 63:
        fail(f"--seed {a.seed}: must be in 0..2**63-1")
    if a.output is None:
        a.output = os.path.splitext(os.path.basename(a.input))[0] + ".edited.png"
    if os.path.isdir(a.output):
        fail(f"output {a.output}: is a folder")
    folder = os.path.dirname(os.path.abspath(a.output))
    if not os.path.isdir(folder):
        fail(f"output folder {folder}: does not exist")
    if not os.access(folder, os.W_OK):
        fail(f"output folder {folder}: not writable")
    if os.path.exists(a.input) and os.path.realpath(a.output) == os.path.realpath(a.input) and not a.force:
        fail(f"output {a.output} is the input; choose another -o or pass --force")


def load_models(a, device):
    import torch
    from minedit.pipeline import Models
    from minedit.utils import CHECKPOINTS
    folder = a.weights or str(CHECKPOINTS)
    if not os.path.isdir(folder):
        fail(f"--weights {folder}: not a folder")
    models = Models(folder, device)
    need = {"instruct": ["clip", "instruct"], "textdiff": ["clip", "decoder"], "ref": ["clip", "decoder"],
            "sdedit": ["clip", "decoder", "prior"]}[a.method]
    for name in need:
        path = models.path(name)
        if not os.path.isfile(path):
            fail(f"checkpoint {path}: no such file (train it with the command in checkpoints/README.md)")
        try:
            getattr(models, name)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else ""
            fail(f"checkpoint {path}: cannot load it as a minedit {name} checkpoint ({e.__class__.__name__}: {msg[:200]})")
    concepts = None
    if a.concept:
        from minedit.inversion import Concepts, load_embeddings
        try:
            emb = load_embeddings(a.concept)
        except Exception as e:
            fail(f"--concept {a.concept}: not a textual-inversion file ({e.__class__.__name__})")
        width = models.clip.token_embedding.weight.shape[1]
        bad = [k for k, v in emb.items() if v.shape[-1] != width]
        if bad:
            fail(f"--concept {a.concept}: vectors of width {emb[bad[0]].shape[-1]}, this CLIP's text width is {width}")
        concepts = Concepts({k: v.to(device) for k, v in emb.items()})
    from minedit.utils import file_hash
    hashes = {name: file_hash(models.path(name)) for name in need}
    torch.set_grad_enabled(False)
    return models, concepts, hashes


def run(a, models, concepts, x, device):
    """The edited images (n, 3, res, res) in [-1, 1]."""
    import torch
    from minedit import pipeline
    g = torch.Generator().manual_seed(a.seed)
    xs = x.expand(a.n, -1, -1, -1).to(device)
    if a.method == "instruct":
        return pipeline.edit_instruct(models, xs, a.edit, a.cfg_image, a.cfg_text, a.steps, g, concepts, eta=a.eta)
    if a.method == "textdiff":
        return pipeline.edit_textdiff(models, xs, a.edit, a.source_caption, a.theta, a.cfg_text, a.steps, concepts)
    if a.method == "sdedit":
        return pipeline.edit_sdedit(models, xs, a.edit, a.strength, a.cfg_text, a.steps, g, concepts=concepts)
    res = x.shape[-1]
    before, after = (to_model(read_image(p, "--ref"), res)[0].to(device) for p in a.ref)
    return pipeline.edit_ref(models, xs, before, after, a.theta, a.cfg_text, a.steps)


def main(argv=None):
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"  # one line, no source echo
    a = parse(argv)
    index = None  # replaying one file of an -n run
    if a.replay:
        recipe = recipe_from(a.replay)
        out = a.output or os.path.splitext(os.path.basename(a.replay))[0] + ".replay.png"
        a = parse([])
        for k, v in recipe["args"].items():
            setattr(a, k, v)
        if "eta" not in recipe["args"]:
            a.eta = 0.0  # written before --eta existed: instruct sampled deterministically
        a.output, a.force, index = out, False, recipe.get("index")
        from minedit.utils import file_hash
        if os.path.exists(a.input) and file_hash(a.input) != recipe["input_sha256_16"]:
            fail(f"replay: the input {a.input} has changed since the recipe was written")
    check(a)
    im = read_image(a.input)
    if a.ref:
        for path in a.ref:
            read_image(path, "--ref")
    if a.concept and not os.path.isfile(a.concept):
        fail(f"--concept {a.concept}: no such file")

    import torch
    from minedit.utils import file_hash, pick_device
    if a.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device here")
    device = pick_device(a.device)
    size = im.size
    if a.size:
        s = a.size / max(im.size)
        size = (max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s)))
    if a.method == "instruct" and a.eta is None:
        from minedit.pipeline import INSTRUCT_ETA
        a.eta = INSTRUCT_ETA  # recorded in the recipe as used
    recipe = {"version": VERSION, "args": {k: v for k, v in vars(a).items() if k not in ("output", "force", "replay", "weights")},
              "input_sha256_16": file_hash(a.input), "device": str(device)}
    recipe["args"]["weights"] = a.weights

    if a.method == "instruct" and not a.edit.strip():
        outs, note = [im.resize(size, Image.BICUBIC) if size != im.size else im.copy()] * a.n, "empty instruction: the input, unchanged"
        recipe["weights_sha256_16"] = {}
    else:
        models, concepts, hashes = load_models(a, device)
        recipe["weights_sha256_16"] = hashes
        res = (models.instruct if a.method == "instruct" else models.decoder)[0].config.image_size
        x, box = to_model(im, res)
        y = run(a, models, concepts, x, device).cpu()
        outs, note = [from_model(y[i], box, size) for i in range(a.n)], None
    if a.concept:
        recipe["concept_sha256_16"] = file_hash(a.concept)
    if index is not None:
        outs, a.n, recipe["index"] = [outs[index]], 1, index

    info = PngImagePlugin.PngInfo()
    info.add_text("minedit", json.dumps(recipe))
    try:
        written = write(a, outs, recipe, info)
    except OSError as e:
        fail(f"output {a.output}: not writable ({e.strerror or e})")
    print(f"wrote {', '.join(written)}")
    print(f"method {a.method}; seed {a.seed}; steps {a.steps}" +
          (f"; s_T {a.cfg_text}, s_I {a.cfg_image}, eta {a.eta}" if a.method == "instruct" else f"; guidance {a.cfg_text}") +
          f"; {time.time() - START:.1f} s on {device}" + (f"; note: {note}" if note else ""))


def write(a, outs, recipe, info):
    """Save the output(s) atomically; a run of n > 1 writes each sample and the grid."""
    from minedit.utils import image_grid, save_image_atomic
    stem, _ = os.path.splitext(a.output)
    written = []
    if a.n == 1:
        save_image_atomic(outs[0], a.output, info)
        written.append(a.output)
    else:
        for i, o in enumerate(outs):
            r = json.loads(json.dumps(recipe))
            r["index"] = i
            one = PngImagePlugin.PngInfo()
            one.add_text("minedit", json.dumps(r))
            save_image_atomic(o, f"{stem}-{i}.png", one)
            written.append(f"{stem}-{i}.png")
        save_image_atomic(image_grid(np.stack([np.asarray(o) for o in outs]), min(a.n, 8)), a.output, info)
        written.insert(0, a.output + " (grid)")
    return written


if __name__ == "__main__":
    main()
