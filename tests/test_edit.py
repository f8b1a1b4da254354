"""edit.py as a user runs it (subprocesses, the shipped weights), and the pieces it is made of."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EDIT = os.path.join(ROOT, "edit.py")
EXAMPLE = os.path.join(ROOT, "examples", "red_star.png")
FAST = ["--steps", "4", "--seed", "1"]


def edit(*args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, EDIT, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def assert_clean_failure(r, folder, before, match):
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert match in lines[0], lines[0]
    assert sorted(os.listdir(folder)) == before, "something was written"


def test_main_command_writes_an_image_with_its_recipe_and_replays_bit_for_bit(tmp_path):
    r = edit(EXAMPLE, "in neon lights", *FAST, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "red_star.edited.png"
    assert "seed 1" in r.stdout and "method instruct" in r.stdout and str(out.name) in r.stdout
    im = Image.open(out)
    assert im.size == Image.open(EXAMPLE).size
    recipe = json.loads(im.text["minedit"])
    assert recipe["args"]["edit"] == "in neon lights" and recipe["args"]["seed"] == 1 and recipe["args"]["steps"] == 4
    assert recipe["args"]["eta"] == 0.0  # the default, recorded as used
    assert set(recipe["weights_sha256_16"]) == {"clip", "instruct"}
    r = edit("--replay", out, "-o", tmp_path / "again.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "again.png")))


def test_eta_changes_the_sample_and_old_recipes_replay_deterministically(tmp_path):
    """--eta 0 and 1 draw different edits from one seed; a recipe written before --eta existed (no "eta"
    key) replays with eta 0, the deterministic sampling of its time, whatever the default becomes."""
    r = edit(EXAMPLE, "make the star blue", *FAST, "--eta", "0", "-o", tmp_path / "e0.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = edit(EXAMPLE, "make the star blue", *FAST, "--eta", "1", "-o", tmp_path / "e1.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    e0, e1 = (np.asarray(Image.open(tmp_path / f"e{i}.png")) for i in (0, 1))
    assert not np.array_equal(e0, e1)
    im = Image.open(tmp_path / "e0.png")
    recipe = json.loads(im.text["minedit"])
    del recipe["args"]["eta"]
    info = PngImagePlugin.PngInfo()
    info.add_text("minedit", json.dumps(recipe))
    im.save(tmp_path / "old.png", pnginfo=info)
    r = edit("--replay", tmp_path / "old.png", "-o", tmp_path / "again.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")), e0)


def test_empty_instruction_returns_the_input(tmp_path):
    r = edit(EXAMPLE, "", "-o", tmp_path / "same.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "unchanged" in r.stdout
    assert np.array_equal(np.asarray(Image.open(tmp_path / "same.png").convert("RGB")), np.asarray(Image.open(EXAMPLE).convert("RGB")))


@pytest.mark.parametrize("method,extra", [
    ("textdiff", ["--source-caption", "a red star", "--theta", "0.5"]),
    ("sdedit", ["--strength", "0.5"]),
    ("ref", ["--ref", os.path.join(ROOT, "examples", "red_star.png"), os.path.join(ROOT, "examples", "blue_square_neon.png")]),
])
def test_every_method_runs(tmp_path, method, extra):
    r = edit(EXAMPLE, "" if method == "ref" else "a blue star", "--method", method, *extra, *FAST, "-o", tmp_path / "o.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(Image.open(tmp_path / "o.png").text["minedit"])["args"]["method"] == method


def test_n_samples_give_a_grid_and_files(tmp_path):
    r = edit(EXAMPLE, "make the star blue", "-n", "2", *FAST, "-o", tmp_path / "o.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["o-0.png", "o-1.png", "o.png"]
    a, b = (np.asarray(Image.open(tmp_path / f"o-{i}.png")) for i in (0, 1))
    assert not np.array_equal(a, b)  # two samples, not one twice
    r = edit("--replay", tmp_path / "o-1.png", "-o", tmp_path / "r.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "r.png")), b)


def make_inputs(folder):
    """Awkward but valid inputs: name -> (path, the size the output must have)."""
    base = Image.open(EXAMPLE).convert("RGB").resize((48, 30))
    cases = {}
    base.convert("L").save(folder / "gray.png")
    cases["gray"] = (folder / "gray.png", (48, 30))
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    cases["rgba"] = (folder / "rgba.png", (48, 30))
    base.convert("P", palette=Image.ADAPTIVE, colors=16).save(folder / "palette.png")
    cases["palette"] = (folder / "palette.png", (48, 30))
    a16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(a16).save(folder / "deep.png")  # a 16-bit grayscale PNG
    cases["16bit"] = (folder / "deep.png", (48, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    base.save(folder / "rotated.jpg", exif=exif.tobytes())
    cases["exif"] = (folder / "rotated.jpg", (30, 48))
    return cases


def test_awkward_inputs_come_back_upright_at_their_own_size(tmp_path):
    for name, (path, size) in make_inputs(tmp_path).items():
        r = edit(path, "in neon lights", *FAST, "-o", tmp_path / f"{name}.out.png", cwd=tmp_path)
        assert r.returncode == 0, f"{name}: {r.stderr}"
        assert Image.open(tmp_path / f"{name}.out.png").size == size, name
    r = edit(EXAMPLE, "in neon lights", *FAST, "--size", "100", "-o", tmp_path / "big.png", cwd=tmp_path)
    assert Image.open(tmp_path / "big.png").size == (100, 100)


def test_padding_not_cropping():
    sys.path.insert(0, ROOT)
    from edit import to_model
    im = Image.new("RGB", (64, 16), (255, 0, 0))
    im.paste((0, 255, 0), (60, 0, 64, 16))  # a green strip at the right edge: cropping would lose it
    x, box = to_model(im, 32)
    assert box == (0.0, 12.0, 32.0, 20.0)
    assert x.shape == (1, 3, 32, 32)
    assert x[0, 1, 16, 31] > 0.5 and x[0, 0, 16, 31] < -0.5  # the strip survives, green
    assert x[0, 0, 16, 10] > 0.9  # red content
    assert (x[0, :, 2] - x[0, :, 2, :1]).abs().max() < 0.02  # padding rows: one flat colour


def bad_cases(folder):
    """name -> (extra args, the words the error must contain)."""
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    data = open(EXAMPLE, "rb").read()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    Image.new("1", (9000, 9000)).save(folder / "bomb.png")
    (folder / "dir").mkdir()
    shutil.copy(EXAMPLE, folder / "in.png")
    w = folder / "weights"
    w.mkdir()
    for f in ("clip.pt", "instruct.pt"):
        shutil.copy(os.path.join(ROOT, "checkpoints", f), w / f)
    corrupt, kind, version, missing = (folder / n for n in ("w_corrupt", "w_kind", "w_version", "w_missing"))
    for d in (corrupt, kind, version, missing):
        shutil.copytree(w, d)
    (corrupt / "instruct.pt").write_bytes(b"\x80\x02garbage" * 10)
    shutil.copy(os.path.join(ROOT, "checkpoints", "decoder.pt"), kind / "instruct.pt")
    ck = torch.load(w / "instruct.pt", weights_only=True)
    ck["version"] = 99
    torch.save(ck, version / "instruct.pt")
    os.remove(missing / "instruct.pt")
    inp = folder / "in.png"
    return {
        "missing file": ([folder / "nope.png", "x"], "no such file"),
        "directory": ([folder / "dir", "x"], "folder"),
        "zero bytes": ([folder / "empty.png", "x"], "empty file"),
        "not an image": ([folder / "notes.png", "x"], "not a readable image"),
        "truncated": ([folder / "cut.png", "x"], "not a readable image"),
        "bomb": ([folder / "bomb.png", "x"], "too large"),
        "no output folder": ([inp, "x", "-o", folder / "nowhere" / "o.png"], "does not exist"),
        "unwritable output": ([inp, "x", "-o", "/proc/o.png"], "not writable"),
        "output is input": ([inp, "x", "-o", inp], "is the input"),
        "missing checkpoint": ([inp, "x", "--weights", missing], "no such file"),
        "corrupt checkpoint": ([inp, "x", "--weights", corrupt], "cannot load"),
        "wrong kind": ([inp, "x", "--weights", kind], "not a minedit instruct checkpoint"),
        "wrong version": ([inp, "x", "--weights", version], "version 99"),
        "unknown method": ([inp, "x", "--method", "magic"], "unknown method"),
        "ref with one file": ([inp, "", "--method", "ref", "--ref", inp], "--ref"),
        "ref missing": ([inp, "", "--method", "ref"], "needs --ref"),
        "negative scale": ([inp, "x", "--cfg-text", "-1"], "cfg-text"),
        "nan scale": ([inp, "x", "--cfg-image", "nan"], "cfg-image"),
        "eta out of range": ([inp, "x", "--eta", "1.5"], "--eta"),
        "nan eta": ([inp, "x", "--eta", "nan"], "--eta"),
        "bad concept": ([inp, "x", "--concept", folder / "notes.png"], "concept"),
        "replay of a plain png": (["--replay", inp], "no minedit recipe"),
    }


def test_bad_input_gives_one_line_exit_2_and_writes_nothing(tmp_path):
    cases = bad_cases(tmp_path)
    before = sorted(os.listdir(tmp_path))
    for name, (args, match) in cases.items():
        r = edit(*args, cwd=tmp_path)
        assert_clean_failure(r, tmp_path, before, match)


def test_concept_file_lets_the_instruction_use_the_word(tmp_path):
    from minedit.inversion import save_embeddings
    save_embeddings({"<s*>": torch.randn(2, 128) * 0.01}, tmp_path / "learned.pt")
    r = edit(EXAMPLE, "turn the star into a <s*>", "--concept", tmp_path / "learned.pt", *FAST, "-o", tmp_path / "o.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "concept_sha256_16" in json.loads(Image.open(tmp_path / "o.png").text["minedit"])


# --- pieces ---

def test_slerp():
    from minedit.pipeline import slerp
    g = torch.Generator().manual_seed(0)
    a, b = torch.nn.functional.normalize(torch.randn(2, 5, 16, generator=g, dtype=torch.float64), dim=-1)
    for theta in (0.0, 0.3, 1.0):
        s = slerp(a, b, theta)
        torch.testing.assert_close(s.norm(dim=-1), torch.ones(5, dtype=torch.float64))
        omega = torch.acos((a * b).sum(-1))
        torch.testing.assert_close(torch.acos((s * a).sum(-1).clamp(-1, 1)), theta * omega, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(slerp(a, b, 0.0), a, atol=1e-6, rtol=0)
    torch.testing.assert_close(slerp(a, b, 1.0), b, atol=1e-5, rtol=0)
    near = torch.nn.functional.normalize(a + 1e-9, dim=-1)
    s = slerp(a, near, 0.5)  # nearly parallel: the linear fallback, no NaN
    assert torch.isfinite(s).all()
    torch.testing.assert_close(s, a, atol=1e-5, rtol=0)
    # 2-D check against the closed form: rotating by theta * 90 degrees
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    torch.testing.assert_close(slerp(e1, e2, 1 / 3), torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]))


def test_textdiff_at_theta_zero_gives_the_input_back():
    from minedit import pipeline
    from minedit import toyworld as tw
    torch.set_num_threads(2)
    models = pipeline.Models(os.path.join(ROOT, "checkpoints"))
    x = tw.render_batch([tw.sample_scene(0, "test", i) for i in range(2)], 32)
    y = pipeline.edit_textdiff(models, x, "a blue star", "a picture", theta=0.0, steps=20)
    psnr = 10 * torch.log10(1 / ((y - x) / 2).pow(2).flatten(1).mean(1))
    assert psnr.min() > 30, psnr


def test_theta_default_is_the_same_in_edit_py_the_bench_and_the_pipeline():
    import importlib.util
    import inspect
    from minedit import pipeline
    spec = importlib.util.spec_from_file_location("edit_cli", EDIT)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)  # defines THETA and parse; main() runs only as a script
    assert cli.THETA == pipeline.THETA == cli.parse(["in.png", "x"]).theta
    bench = open(os.path.join(ROOT, "bench", "edit.py")).read()
    assert 'p.add_argument("--theta", type=float, default=pipeline.THETA' in bench
    for fn in (pipeline.edit_textdiff, pipeline.edit_ref):
        assert inspect.signature(fn).parameters["theta"].default == pipeline.THETA


def test_decode_best_of_n_keeps_the_candidate_clip_finds_closest():
    from minedit import pipeline
    from minedit import toyworld as tw
    torch.set_num_threads(2)
    models = pipeline.Models(os.path.join(ROOT, "checkpoints"))
    z = pipeline.encode_images(models.clip, tw.render_batch([tw.sample_scene(0, "test", i) for i in range(2)], 32))
    one = pipeline.decode(models, z, steps=3, generator=torch.Generator().manual_seed(5))
    best = pipeline.decode(models, z, steps=3, generator=torch.Generator().manual_seed(5), n_images=3)
    # the same noise, decoded one image per row: candidate k of embedding b is row k * B + b
    noise = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    cands = pipeline.decode(models, z.repeat(3, 1), steps=3, noise=noise).view(3, 2, 3, 32, 32)
    scores = (pipeline.encode_images(models.clip, cands.flatten(0, 1)).view(3, 2, -1) * z).sum(-1)
    torch.testing.assert_close(best, cands[scores.argmax(0), torch.arange(2)])
    torch.testing.assert_close(one, cands[0])  # n_images = 1 draws the same noise as before
    assert (scores.max(0).values > scores[0]).any()  # the check is not vacuous: some row prefers another candidate
    with pytest.raises(ValueError, match="noise"):
        pipeline.decode(models, z, steps=3, noise=noise[:2], n_images=2)


def test_decode_eta_draws_its_step_noise_from_the_generator():
    """eta 1 adds fresh noise at every DDIM step, drawn from the caller's generator: the same seed gives the
    same images, another seed other images, and eta 0 stays the deterministic DDIM of the same start noise."""
    from minedit import pipeline
    from minedit import toyworld as tw
    torch.set_num_threads(2)
    models = pipeline.Models(os.path.join(ROOT, "checkpoints"))
    z = pipeline.encode_images(models.clip, tw.render_batch([tw.sample_scene(0, "test", i) for i in range(2)], 32))
    run = lambda seed, eta: pipeline.decode(models, z, steps=4, generator=torch.Generator().manual_seed(seed), eta=eta)
    a, b, other, det = run(5, 1.0), run(5, 1.0), run(6, 1.0), run(5, 0.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - other).abs().max() > 0.1 and (a - det).abs().max() > 0.1
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(det, pipeline.decode(models, z, steps=4, noise=noise))


def test_sdedit_samples_the_prior_with_its_own_step_count(monkeypatch):
    from minedit import pipeline
    from minedit import toyworld as tw
    torch.set_num_threads(2)
    models = pipeline.Models(os.path.join(ROOT, "checkpoints"))
    x = tw.render_batch([tw.sample_scene(0, "test", 0)], 32)
    seen = []
    real = pipeline.text_to_embedding
    monkeypatch.setattr(pipeline, "text_to_embedding", lambda *a, **k: seen.append(a[3]) or real(*a, **k))
    pipeline.edit_sdedit(models, x, "a blue star", steps=4, prior_steps=3)
    pipeline.edit_sdedit(models, x, "a blue star", steps=4)
    assert seen == [3, pipeline.PRIOR_STEPS] and pipeline.PRIOR_STEPS != 4


def test_models_warn_when_clip_is_not_the_one_they_were_trained_with(tmp_path):
    import warnings
    from minedit.pipeline import Models
    from minedit.utils import CHECKPOINTS
    for name in ("clip.pt", "prior.pt", "instruct.pt"):
        shutil.copy(CHECKPOINTS / name, tmp_path / name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        Models(tmp_path).prior, Models(tmp_path).instruct  # the shipped set: no warning
    ckpt = torch.load(tmp_path / "clip.pt", weights_only=True)
    ckpt["step"] = ckpt.get("step", 0) + 1  # another CLIP file (as after a retrain) ...
    ckpt["model"]["visual.conv1.weight"] += 1  # ... with another image tower
    torch.save(ckpt, tmp_path / "clip.pt")
    with pytest.warns(UserWarning, match="prior.pt was trained with a CLIP"):
        Models(tmp_path).prior
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        Models(tmp_path).instruct  # it reads CLIP text only, and the text tower is the same
    ckpt["model"]["ln_final.bias"] += 1
    torch.save(ckpt, tmp_path / "clip.pt")
    with pytest.warns(UserWarning, match="instruct.pt was trained with a CLIP"):
        Models(tmp_path).instruct


def test_edit_bench_per_kind_alone_reports_the_reader_ceiling(tmp_path):
    """bench/edit.py --n 0 scores only the --per-kind triplets of --kinds; every figure comes with the
    reader's own success on the exact targets (its ceiling). A bench on nothing else is refused in one line."""
    bench = os.path.join(ROOT, "bench", "edit.py")
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="2")
    out = tmp_path / "bench.json"
    reader = tmp_path / "reader.pt"  # --reader scores with another reader; the JSON names it
    shutil.copy(os.path.join(ROOT, "checkpoints", "reader.pt"), reader)
    r = subprocess.run([sys.executable, bench, "--n", "0", "--n-grid", "0", "--methods", "instruct", "--per-kind", "2",
                        "--kinds", "style", "noop", "--steps", "2", "--reader", str(reader), "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["reader"] == str(reader)
    kinds = res["instruct_per_kind_balanced"]
    assert set(kinds) == {"style", "noop"} and all(v["n"] == 2 for v in kinds.values())
    assert all(0 <= v["ceiling"] <= 1 and 0 <= v["success"] <= 1 for v in kinds.values())
    assert "instruct" not in res["methods"]  # no main set was scored
    r = subprocess.run([sys.executable, bench, "--n", "0", "--methods", "sdedit"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--per-kind" in r.stderr
    r = subprocess.run([sys.executable, bench, "--n", "0", "--n-grid", "0", "--methods", "instruct", "--per-kind", "2",
                        "--reader", os.path.join(ROOT, "checkpoints", "instruct.pt")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not a minedit reader checkpoint" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
