"""Smoke tests: each training script runs end to end on a tiny config, resumes, and fails cleanly on bad input."""
import os
import re
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CLIP = ["--steps", "2", "--batch-size", "8", "--vision-layers", "1", "--image-resolution", "32", "--transformer-layers", "1",
             "--vision-width", "64", "--transformer-width", "64", "--transformer-heads", "1", "--embed-dim", "32"]
TINY_UNET = ["--n-images", "32", "--batch-size", "4", "--model-channels", "16", "--head-channels", "16",
             "--cond-width", "32", "--sample-every", "0", "--save-every", "0"]


def run(args, cwd, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    r = run([os.path.join(ROOT, "train_clip.py"), *TINY_CLIP, "--out", str(d / "clip.pt")], d)
    assert r.returncode == 0, r.stderr
    return d / "clip.pt"


@pytest.mark.parametrize("fast", [True, False])
def test_cpu_autocast_is_bf16_only_where_the_cpu_computes_bf16(monkeypatch, fast):
    from minedit import utils
    monkeypatch.setattr(utils, "cpu_bf16_is_fast", lambda: fast)
    a = torch.randn(4, 4)
    with utils.autocast(torch.device("cpu")):
        out = a @ a
    assert out.dtype == (torch.bfloat16 if fast else torch.float32)
    with utils.autocast(torch.device("cpu"), enabled=False):
        assert (a @ a).dtype == torch.float32


def test_train_clip_runs_and_resumes(tiny_clip, tmp_path):
    from minedit.clip import load
    model, _ = load(tiny_clip)
    assert model.config.transformer_width == 64
    r = run([os.path.join(ROOT, "train_clip.py"), "--resume", str(tiny_clip), "--steps", "3", "--out", str(tmp_path / "c.pt")], tmp_path)
    assert r.returncode == 0, r.stderr
    assert torch.load(tmp_path / "c.pt", weights_only=True)["step"] == 3


def test_train_clip_new_image_tower_for_a_frozen_text_tower(tiny_clip, tmp_path):
    out = tmp_path / "c.pt"
    from minedit.clip import load, text_tower_hash
    r = run([os.path.join(ROOT, "train_clip.py"), *TINY_CLIP, "--text-from", str(tiny_clip), "--freeze-text",
             "--swap-images", "4", "--vision-layers", "1,1,1,1", "--vision-width", "8", "--image-resolution", "64",
             "--out", str(out)], tmp_path)  # a ViT's text tower, a new ResNet image tower
    assert r.returncode == 0, r.stderr
    r = run([os.path.join(ROOT, "train_clip.py"), "--resume", str(out), "--steps", "3", "--out", str(tmp_path / "r.pt")], tmp_path)
    assert r.returncode == 0, r.stderr  # resuming keeps the text frozen
    old = torch.load(tiny_clip, weights_only=True)["model"]
    for path in (out, tmp_path / "r.pt"):
        new = torch.load(path, weights_only=True)["model"]
        text = [k for k in old if not k.startswith("visual.")]
        assert text and all(torch.equal(old[k], new[k]) for k in text), path  # text: bit-identical
        assert "visual.attnpool.c_proj.weight" in new and "visual.proj" not in new  # image tower: a ResNet
        assert text_tower_hash(load(path)[0]) == text_tower_hash(load(tiny_clip)[0])


def test_swap_sets_vary_one_attribute_and_stay_out_of_test():
    import random
    sys.path.insert(0, ROOT)
    import train_clip
    from minedit import toyworld as tw
    rng, sizes, styles = random.Random(0), set(), 0
    for i in range(300):
        scene = tw.sample_scene(0, "train", i)
        variants, j = train_clip.swap_set(rng, scene, train_clip.SWAP_ATTRS)
        assert variants[j] == scene and len(set(variants)) == len(variants) >= 2
        assert all(v == scene or tw.split_of(v) != "test" for v in variants)
        diff = {(k, a) for v in variants for k, (o, p) in enumerate(zip(v.objects, scene.objects))
                for a in ("shape", "color", "size", "pos") if getattr(o, a) != getattr(p, a)}
        diff |= {"style"} if any(v.style != scene.style for v in variants) else set()
        assert len(diff) == 1 and all(v.background == scene.background for v in variants)
        sizes.add(len(variants))
        styles += diff == {"style"}
    assert max(sizes) >= 8  # whole sets: all shapes, or all free cells, or all colours
    assert styles > 0


def test_swap_negatives_exchange_one_attribute_between_the_objects():
    import random
    sys.path.insert(0, ROOT)
    import train_clip
    from minedit import toyworld as tw
    rng, swapped_attrs = random.Random(0), set()
    for i in range(300):
        scene = tw.sample_scene(0, "train", i)
        out = train_clip.edited(rng, scene, ["swap"])
        if len(scene.objects) == 1:
            assert out is None  # nothing to exchange
            continue
        if out is None:
            continue  # identical attributes, or every exchange lands in another split
        assert tw.split_of(out) == "train" and out != scene
        words = lambda s: sorted(tw.caption(s).split())
        assert words(out) == words(scene)  # the same bag of words, bound the other way
        (a, b), (a2, b2) = scene.objects, out.objects
        changed = [k for k in ("shape", "color", "size", "pos") if getattr(a, k) != getattr(a2, k)]
        assert len(changed) == 1 and getattr(a2, changed[0]) == getattr(b, changed[0]) and getattr(b2, changed[0]) == getattr(a, changed[0])
        swapped_attrs.add(changed[0])
    assert swapped_attrs == {"shape", "color", "size"}


def test_train_decoder_toy_and_resume(tiny_clip, tmp_path):
    out = tmp_path / "dec.pt"
    r = run([os.path.join(ROOT, "train_decoder.py"), "--clip", str(tiny_clip), "--steps", "2", "--object-weight", "4",
             "--two-object-share", "0.7", "--self-cond", "0.5", *TINY_UNET, "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    r = run([os.path.join(ROOT, "train_decoder.py"), "--clip", str(tiny_clip), "--resume", str(out), "--steps", "3",
             *TINY_UNET, "--out", str(tmp_path / "dec2.pt")], tmp_path)
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(tmp_path / "dec2.pt", weights_only=True)
    assert ckpt["kind"] == "decoder" and ckpt["step"] == 3 and ckpt["config"]["embed_dim"] == 32
    assert ckpt["train_config"]["object_weight"] == 4.0 and ckpt["train_config"]["two_object_share"] == 0.7  # kept
    assert ckpt["train_config"]["self_cond"] == 0.5 and ckpt["config"]["self_condition"] and ckpt["config"]["in_channels"] == 6
    r = run([os.path.join(ROOT, "train_decoder.py"), "--clip", str(tiny_clip), "--resume", str(out), "--steps", "3",
             "--self-cond", "0", *TINY_UNET, "--out", str(tmp_path / "bad.pt")], tmp_path)
    assert r.returncode == 2 and "self-conditioning" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "bad.pt").exists()
    # the self-conditioned decoder samples through the pipeline, which needs its diffusion for that
    from minedit.pipeline import decoder_model, load_decoder
    unet, diffusion, _ = load_decoder(str(tmp_path / "dec2.pt"))
    emb = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1)
    with pytest.raises(ValueError, match="diffusion"):
        decoder_model(unet, emb, 3.0)
    x = diffusion.ddim_sample(decoder_model(unet, emb, 3.0, diffusion=diffusion), shape=(2, 3, 32, 32), steps=3)
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()
    # --average writes the mean of the two runs' weights (WiSE-FT), fields from the last, and trains nothing
    from minedit.utils import file_hash
    mean = tmp_path / "mean.pt"
    r = run([os.path.join(ROOT, "train_decoder.py"), "--average", str(out), str(tmp_path / "dec2.pt"), "--out", str(mean)], tmp_path)
    assert r.returncode == 0, r.stderr
    first, m = torch.load(out, weights_only=True), torch.load(mean, weights_only=True)
    assert m["step"] == 3 and m["averaged_from"] == [file_hash(out), file_hash(tmp_path / "dec2.pt")]
    for k, v in m["model"].items():
        assert v.dtype == torch.float16
        assert torch.equal(v, ((first["model"][k].float() + ckpt["model"][k].float()) / 2).half())
    assert any(not torch.equal(v, first["model"][k]) for k, v in m["model"].items())
    r = run([os.path.join(ROOT, "train_decoder.py"), "--task", "instruct", "--average", str(out), str(mean),
             "--out", str(tmp_path / "bad.pt")], tmp_path)
    assert r.returncode == 2 and "not a minedit instruct checkpoint" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "bad.pt").exists()


def test_average_checkpoints_refuses_other_models():
    from minedit.training import average_checkpoints
    a = {"kind": "decoder", "config": {"model_channels": 16}, "step": 1, "model": {"w": torch.zeros(2, dtype=torch.float16)}}
    b = {**a, "step": 2, "model": {"w": torch.ones(2, dtype=torch.float16)}}
    assert torch.equal(average_checkpoints([a, b], ["a", "b"])["model"]["w"], torch.full((2,), 0.5, dtype=torch.float16))
    with pytest.raises(ValueError, match="another model"):
        average_checkpoints([a, {**b, "config": {"model_channels": 32}}], ["a", "b"])
    with pytest.raises(ValueError, match="other tensors"):
        average_checkpoints([a, {**b, "model": {"w": torch.ones(3)}}], ["a", "b"])


def test_train_decoder_on_a_folder(tiny_clip, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 30), (32, 32), (50, 70), (64, 64)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    r = run([os.path.join(ROOT, "train_decoder.py"), "--clip", str(tiny_clip), "--data", str(folder), "--steps", "2",
             *TINY_UNET, "--out", str(tmp_path / "d.pt")], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "4 images" in r.stdout


def test_train_decoder_two_processes_ddp(tiny_clip, tmp_path):
    r = run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
             os.path.join(ROOT, "train_decoder.py"), "--clip", str(tiny_clip), "--steps", "2", *TINY_UNET,
             "--device", "cpu", "--out", str(tmp_path / "ddp.pt")], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es)" in r.stdout and (tmp_path / "ddp.pt").exists()


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    r = run([os.path.join(ROOT, "train_decoder.py"), "--clip", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.pt")], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "missing.pt" in r.stderr
    assert not (tmp_path / "x.pt").exists()


TINY_PRIOR = ["--n-images", "32", "--batch-size", "4", "--width", "32", "--layers", "1", "--heads", "2", "--save-every", "0"]


def test_train_instruct_from_a_decoder_and_resume(tiny_clip, tmp_path):
    dec = tmp_path / "dec.pt"
    r = run([os.path.join(ROOT, "train_decoder.py"), "--clip", str(tiny_clip), "--steps", "1", *TINY_UNET, "--out", str(dec)], tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "ins.pt"
    r = run([os.path.join(ROOT, "train_decoder.py"), "--task", "instruct", "--init", str(dec), "--no-residual",
             "--change-weight", "4", "--clip", str(tiny_clip), "--steps", "2", *TINY_UNET, "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "edit triplets" in r.stdout and "initialized" in r.stdout
    ck = torch.load(out, weights_only=True)
    assert ck["kind"] == "instruct" and ck["config"]["in_channels"] == 6 and ck["config"]["context_dim"] == 64
    assert not ck["config"]["residual"] and ck["train_config"]["change_weight"] == 4.0
    d = torch.load(dec, weights_only=True)["model"]
    # the new input channels start at zero; the old ones start from the decoder (then train 2 steps)
    r = run([os.path.join(ROOT, "train_decoder.py"), "--task", "instruct", "--resume", str(out), "--clip", str(tiny_clip),
             "--steps", "3", *TINY_UNET, "--out", str(tmp_path / "ins2.pt")], tmp_path)
    assert r.returncode == 0, r.stderr
    resumed = torch.load(tmp_path / "ins2.pt", weights_only=True)
    assert resumed["step"] == 3 and resumed["init_sha256_16"] == ck["init_sha256_16"]  # a resumed run keeps its start
    assert d["input_blocks.0.0.weight"].shape[1] == 3


def test_train_instruct_defaults_from_scratch_residual_and_token_states_only(tiny_clip, tmp_path):
    out = tmp_path / "ins.pt"
    r = run([os.path.join(ROOT, "train_decoder.py"), "--task", "instruct", "--text-cond", "states", "--clip", str(tiny_clip),
             "--edit-kinds", "style,style,noop", "--steps", "2", *TINY_UNET, "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "initialized" not in r.stdout
    ck = torch.load(out, weights_only=True)
    assert ck["config"]["residual"] and ck["config"]["embed_dim"] == 0 and ck["config"]["context_dim"] == 64
    assert ck["train_config"]["edit_kinds"] == "style,style,noop"
    assert list((tmp_path / ".cache").glob("edits-style+style+noop-train-n32-*"))  # the mix's own cache
    assert not any(k.startswith(("emb_proj", "null_emb")) for k in ck["model"])
    r = run([os.path.join(ROOT, "train_decoder.py"), "--task", "instruct", "--text-cond", "tokens",
             "--clip", str(tiny_clip), "--steps", "1", *TINY_UNET, "--out", str(tmp_path / "bad.pt")], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--text-cond" in r.stderr
    assert not (tmp_path / "bad.pt").exists()
    r = run([os.path.join(ROOT, "train_decoder.py"), "--task", "instruct", "--edit-kinds", "style,repaint",
             "--clip", str(tiny_clip), "--steps", "1", *TINY_UNET, "--out", str(tmp_path / "bad.pt")], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "'repaint'" in r.stderr
    assert not (tmp_path / "bad.pt").exists()
    for flag in ("--object-weight", "--two-object-share", "--self-cond"):  # decoder only
        r = run([os.path.join(ROOT, "train_decoder.py"), "--task", "instruct", flag, "0.5",
                 "--clip", str(tiny_clip), "--steps", "1", *TINY_UNET, "--out", str(tmp_path / "bad.pt")], tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr and flag in r.stderr
        assert not (tmp_path / "bad.pt").exists()


def test_train_instruct_starts_from_the_shipped_decoder_by_default(tmp_path):
    from minedit.utils import file_hash
    script, dec = os.path.join(ROOT, "train_decoder.py"), os.path.join(ROOT, "checkpoints", "decoder.pt")
    common = [script, "--task", "instruct", "--steps", "1", "--n-images", "8", "--batch-size", "2",
              "--sample-every", "0", "--save-every", "0"]
    r = run([*common, "--out", str(tmp_path / "ins.pt")], tmp_path)
    assert r.returncode == 0, r.stderr
    m = re.search(r"initialized (\d+) of (\d+) tensors from (\S+)", r.stdout)
    # everything but the token-state projection (weight, bias), which the decoder does not have
    assert m and int(m[1]) == int(m[2]) - 2 and m[3] == dec, r.stdout
    assert torch.load(tmp_path / "ins.pt", weights_only=True)["init_sha256_16"] == file_hash(dec)
    r = run([*common, "--init", "none", "--out", str(tmp_path / "scratch.pt")], tmp_path)
    assert r.returncode == 0 and "initialized" not in r.stdout, r.stderr
    assert "init_sha256_16" not in torch.load(tmp_path / "scratch.pt", weights_only=True)
    # another architecture than the decoder's cannot start from it: one line, exit 2, nothing written
    r = run([*common, "--model-channels", "32", "--out", str(tmp_path / "bad.pt")], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--init" in r.stderr and "differs" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad.pt").exists()
    r = run([common[0], "--init", dec, *common[3:], "--out", str(tmp_path / "dec.pt")], tmp_path)  # a decoder from a decoder
    m = re.search(r"initialized (\d+) of (\d+) tensors from (\S+)", r.stdout)
    assert r.returncode == 0 and m and m[1] == m[2], r.stderr + r.stdout
    assert torch.load(tmp_path / "dec.pt", weights_only=True)["init_sha256_16"] == file_hash(dec)


def test_train_decoder_with_captions_from_a_decoder_resume_and_folder(tiny_clip, tmp_path):
    script, dec = os.path.join(ROOT, "train_decoder.py"), tmp_path / "dec.pt"
    r = run([script, "--clip", str(tiny_clip), "--steps", "1", *TINY_UNET, "--out", str(dec)], tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "cap.pt"
    r = run([script, "--caption", "--init", str(dec), "--clip", str(tiny_clip), "--steps", "2", *TINY_UNET, "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    m = re.search(r"initialized (\d+) of (\d+) tensors", r.stdout)
    assert m and int(m[1]) == int(m[2]) - 2, r.stdout  # all but the caption's projection (weight, bias)
    ck = torch.load(out, weights_only=True)
    from minedit.utils import file_hash
    assert ck["kind"] == "decoder" and ck["config"]["context_dim"] == 64 and ck["config"]["in_channels"] == 3
    assert ck["init_sha256_16"] == file_hash(dec)
    r = run([script, "--resume", str(out), "--clip", str(tiny_clip), "--steps", "3", *TINY_UNET, "--out", str(tmp_path / "cap2.pt")], tmp_path)
    assert r.returncode == 0, r.stderr  # a resumed caption decoder keeps reading captions
    ck2 = torch.load(tmp_path / "cap2.pt", weights_only=True)
    assert ck2["step"] == 3 and ck2["config"]["context_dim"] == 64 and ck2["init_sha256_16"] == ck["init_sha256_16"]
    # the pipeline's decoder reads the caption; a decoder trained without captions refuses one
    from minedit.pipeline import decoder_model, encode_texts, load_decoder
    from minedit.clip import load
    clip, _ = load(tiny_clip)
    unet, _, _ = load_decoder(str(tmp_path / "cap2.pt"))
    with torch.no_grad():  # the zero-initialized (barely trained) output layers get weights, so that the caption shows
        for name, p in unet.named_parameters():
            if name.startswith("out.") or "proj_out" in name or "out_layers.3" in name:
                p.normal_(0, 0.1)
    emb, x, t = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1), torch.randn(2, 3, 32, 32), torch.tensor([500, 500])
    with torch.no_grad():
        caps = [encode_texts(clip, [c, c]) for c in ("a red circle", "a big blue star at the top")]
        a, b = (decoder_model(unet, emb, 3.0, c)(x, t) for c in caps)
    assert (a - b).abs().max() > 1e-4
    with pytest.raises(ValueError, match="without captions"):
        decoder_model(load_decoder(str(dec))[0], emb, 3.0, caps[0])
    # a folder of images needs same-name .txt captions
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 60 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    cmd = [script, "--caption", "--init", str(dec), "--clip", str(tiny_clip), "--data", str(folder), "--steps", "1", *TINY_UNET]
    r = run([*cmd, "--out", str(tmp_path / "bad.pt")], tmp_path)
    assert r.returncode == 2 and ".txt" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad.pt").exists()
    for i in range(3):
        (folder / f"{i}.txt").write_text(f"a gray square number {i}")
    r = run([*cmd, "--out", str(tmp_path / "folder.pt")], tmp_path)
    assert r.returncode == 0, r.stderr
    for bad in (["--task", "instruct", "--caption"], ["--caption", "--resume", str(dec)]):  # no captions for these
        r = run([script, *bad, "--clip", str(tiny_clip), *TINY_UNET, "--out", str(tmp_path / "bad.pt")], tmp_path)
        assert r.returncode == 2 and "--caption" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "bad.pt").exists()


def test_init_from_decoder_zero_inits_the_new_channels():
    sys.path.insert(0, ROOT)
    from train_decoder import init_from_decoder
    from minedit.unet import UNet, UNetConfig
    dec = UNet(UNetConfig(model_channels=16, head_channels=16, embed_dim=8, cond_width=16))
    ins = UNet(UNetConfig(model_channels=16, head_channels=16, embed_dim=8, cond_width=16, in_channels=6, context_dim=12))
    loaded = init_from_decoder(ins, {"kind": "decoder", "model": dec.state_dict()})
    w = ins.state_dict()["input_blocks.0.0.weight"]
    assert torch.equal(w[:, :3], dec.state_dict()["input_blocks.0.0.weight"]) and w[:, 3:].abs().max() == 0
    assert "input_blocks.0.0.weight" in loaded and not any(k.startswith("context_proj") for k in loaded)
    assert len(loaded) == len(dec.state_dict())  # every decoder weight found its place
    states_only = UNet(UNetConfig(model_channels=16, head_channels=16, cond_width=16, in_channels=6, context_dim=12))
    assert not any(k.startswith("emb_") for k in init_from_decoder(states_only, {"model": dec.state_dict()}))
    at_64 = UNet(UNetConfig(model_channels=16, head_channels=16, embed_dim=8, cond_width=16, in_channels=6, image_size=64))
    with pytest.raises(ValueError, match="differs"):  # attention at other levels: another architecture
        init_from_decoder(at_64, {"model": dec.state_dict()})
    # a self-conditioned decoder's input channels hold its estimate, never the instruct model's source image
    sc = UNet(UNetConfig(model_channels=16, head_channels=16, embed_dim=8, cond_width=16, in_channels=6, self_condition=True))
    with pytest.raises(ValueError, match="x0 estimate"):
        init_from_decoder(ins, {"config": {"self_condition": True}, "model": sc.state_dict()})


def test_pixel_weights_favour_the_mask_and_average_one():
    sys.path.insert(0, ROOT)
    from train_decoder import pixel_weights
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 0, :2] = True  # image 0: 2 of 16 pixels in the mask (e.g. changed by its edit); image 1: none
    w = pixel_weights(mask, 4.0)
    assert w.shape == (2, 1, 4, 4) and torch.allclose(w.mean((1, 2, 3)), torch.ones(2))
    assert torch.allclose(w[0, 0, 0, :2], torch.full((2,), 5 / 1.5)) and torch.allclose(w[0, 0, 1:], torch.full((3, 4), 1 / 1.5))
    assert torch.equal(w[1], torch.ones(1, 4, 4)) and pixel_weights(mask, 0.0) is None


def test_two_object_draw_gives_two_object_scenes_their_share():
    sys.path.insert(0, ROOT)
    from train_decoder import two_object_draw
    counts = [1, 2, 1, 1, 2, 1, 1, 1]
    p = two_object_draw(counts, 0.7)
    assert torch.allclose(p, torch.tensor([0.05, 0.35, 0.05, 0.05, 0.35, 0.05, 0.05, 0.05]))
    i = torch.multinomial(p, 20000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert abs((torch.tensor(counts)[i] == 2).float().mean().item() - 0.7) < 0.02  # 0.02 = 6 standard errors
    assert torch.equal(two_object_draw(counts, 1.0), torch.tensor([0, 0.5, 0, 0, 0.5, 0, 0, 0]))
    with pytest.raises(ValueError):
        two_object_draw([1, 1], 0.5)


def test_object_masks_cover_exactly_the_objects():
    sys.path.insert(0, ROOT)
    from minedit import toyworld as tw
    from train_decoder import object_masks
    scenes = [tw.sample_scene(0, "train", i) for i in range(40)]
    images = np.stack([tw.render(s) for s in scenes])
    masks = object_masks(images, scenes)
    assert masks.shape == (40, 1, 32, 32) and masks.dtype == torch.bool
    for s, img, m in zip(scenes, images, masks[:, 0]):
        area = m.float().mean().item()
        assert 0.01 < area < 0.5, (s, area)  # every scene has an object; none fills the picture
        empty = tw.render(replace(s, objects=()))
        assert np.array_equal(img[~m.numpy()], empty[~m.numpy()])  # outside the mask: the bare background
        if len(s.objects) == 2:  # each object alone covers part of the mask, and not all of it
            for o in s.objects:
                alone = object_masks(tw.render(replace(s, objects=(o,)))[None], [replace(s, objects=(o,))])[0, 0]
                assert (alone & m).any() and (m & ~alone).any()


@pytest.mark.parametrize("script,flag", [("train_clip.py", "--resume"), ("train_clip.py", "--text-from"),
                                         ("train_prior.py", "--resume"), ("train_decoder.py", "--resume"),
                                         ("train_decoder.py", "--init"), ("train_decoder.py", "--clip"),
                                         ("train_prior.py", "--clip")])
def test_bad_checkpoint_flags_fail_cleanly(tiny_clip, tmp_path, script, flag):
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("hello")
    wrong_kind = tiny_clip if script != "train_clip.py" and flag != "--clip" else None
    cases = [tmp_path / "missing.pt", not_a_checkpoint] + ([wrong_kind] if wrong_kind else [])
    extra = ["--task", "instruct"] if flag == "--init" else []
    for path in cases:
        r = run([os.path.join(ROOT, script), *extra, flag, str(path), "--out", str(tmp_path / "out.pt")], tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr and flag in r.stderr, (path, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.pt").exists()


def test_train_prior_runs_and_resumes(tiny_clip, tmp_path):
    out = tmp_path / "prior.pt"
    r = run([os.path.join(ROOT, "train_prior.py"), "--clip", str(tiny_clip), "--steps", "2", *TINY_PRIOR, "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    ck = torch.load(out, weights_only=True)
    assert ck["kind"] == "prior" and ck["config"]["embed_dim"] == 32
    assert ck["model"]["std"].float().min() > 0 and not torch.all(ck["model"]["mean"] == 0)  # standardization stored
    r = run([os.path.join(ROOT, "train_prior.py"), "--clip", str(tiny_clip), "--resume", str(out), "--steps", "3",
             *TINY_PRIOR, "--out", str(tmp_path / "p2.pt")], tmp_path)
    assert r.returncode == 0, r.stderr
    assert torch.load(tmp_path / "p2.pt", weights_only=True)["step"] == 3


def test_train_prior_on_a_folder_needs_captions(tiny_clip, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a picture number {i}")
    r = run([os.path.join(ROOT, "train_prior.py"), "--clip", str(tiny_clip), "--data", str(folder), "--steps", "2",
             *TINY_PRIOR, "--out", str(tmp_path / "p.pt")], tmp_path)
    assert r.returncode == 0, r.stderr
    os.remove(folder / "1.txt")
    r = run([os.path.join(ROOT, "train_prior.py"), "--clip", str(tiny_clip), "--data", str(folder), "--steps", "2",
             *TINY_PRIOR, "--out", str(tmp_path / "p3.pt")], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and ".txt" in r.stderr
    assert not (tmp_path / "p3.pt").exists()


def test_prior_two_processes_ddp(tiny_clip, tmp_path):
    r = run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534",
             os.path.join(ROOT, "train_prior.py"), "--clip", str(tiny_clip), "--steps", "2", *TINY_PRIOR,
             "--device", "cpu", "--out", str(tmp_path / "ddp.pt")], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es)" in r.stdout


@pytest.mark.parametrize("cmd", [["train_clip.py"], ["train_decoder.py"], ["train_prior.py"], ["-m", "minedit.reader"],
                                 ["-m", "minedit.toyworld"],
                                 ["-m", "minedit.inversion", "--images", os.path.join(ROOT, "examples", "concept"), "--token", "<s*>"]])
def test_unwritable_out_and_bad_numbers_fail_before_any_work(cmd, tmp_path):
    script = [os.path.join(ROOT, cmd[0])] + cmd[1:] if cmd[0].endswith(".py") else cmd
    for bad in (["--out", str(tmp_path / "no" / "such" / "x.pt")], ["--out", str(tmp_path)], ["--steps", "-5"]):
        if cmd[-1] == "minedit.toyworld" and bad[0] == "--steps":
            bad = ["--res", "-5"]
        r = run([*script, *bad], tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr and bad[0] in r.stderr, (bad, r.stderr[-300:])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("script,flag", [("train_decoder.py", "--head-channels"), ("train_decoder.py", "--timesteps"),
                                         ("train_decoder.py", "--n-images"), ("train_prior.py", "--heads"),
                                         ("train_clip.py", "--transformer-width"), ("train_clip.py", "--vision-patch-size")])
def test_zero_sizes_fail_in_one_line(script, flag, tmp_path):
    r = run([os.path.join(ROOT, script), flag, "0", "--out", str(tmp_path / "x.pt")], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and flag in r.stderr and "> 0" in r.stderr, r.stderr[-300:]
    assert os.listdir(tmp_path) == []


def test_tuple_flags_parse_and_bad_ones_fail_cleanly(tmp_path):
    """UNetConfig's tuples are flags too (--attention-resolutions 16,8); a size that no feature map has, an
    empty --channel-mult or a non-number fails in one line before any work."""
    import argparse
    from minedit import training
    from minedit.unet import UNetConfig
    p = argparse.ArgumentParser()
    training.add_dataclass_flags(p, UNetConfig)
    args = vars(p.parse_args(["--attention-resolutions", "16,8", "--channel-mult", "1,2"]))
    mc = training.override(UNetConfig(), args)
    assert mc.attention_resolutions == (16, 8) and mc.channel_mult == (1, 2) and mc.num_res_blocks == 1
    for flag, bad in (("--attention-resolutions", "7"), ("--attention-resolutions", "16,x"),
                      ("--attention-resolutions", "0"), ("--channel-mult", "")):
        r = run([os.path.join(ROOT, "train_decoder.py"), flag, bad, "--steps", "1", "--n-images", "8",  # fast if unchecked
                 "--out", str(tmp_path / "d.pt")], tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr and flag in r.stderr, (bad, r.stderr[-300:])
    assert os.listdir(tmp_path) == []


def test_bad_vision_layers_and_edits_fail_cleanly(tmp_path):
    for flag, bad in (("--vision-layers", "1,2"), ("--vision-layers", "0"), ("--vision-layers", "a,b,c,d"),
                      ("--edits", "reshape,noop")):
        r = run([os.path.join(ROOT, "train_clip.py"), flag, bad, "--out", str(tmp_path / "c.pt")], tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr and flag in r.stderr, (bad, r.stderr)
    assert os.listdir(tmp_path) == []


def test_text_lr_scale_zero_keeps_the_text_tower(tiny_clip, tmp_path):
    r = run([os.path.join(ROOT, "train_clip.py"), *TINY_CLIP, "--text-from", str(tiny_clip), "--text-lr-scale", "0",
             "--edits", "reshape,move", "--pretrain-steps", "2", "--out", str(tmp_path / "c.pt")], tmp_path)
    assert r.returncode == 0, r.stderr
    old, new = (torch.load(p, weights_only=True)["model"] for p in (tiny_clip, tmp_path / "c.pt"))
    text = [k for k in old if not k.startswith("visual.") and k != "logit_scale"]
    assert all(torch.equal(old[k], new[k]) for k in text)  # lr 0 for the text tower: no update, no weight decay
    assert not torch.equal(old["visual.conv1.weight"], new["visual.conv1.weight"])


def test_pretrain_all_labels_every_object():
    """--pretrain-all: the warm-up takes every training scene, one object or two, with target distributions
    spread evenly over exactly the shapes and colours of its objects."""
    sys.path.insert(0, ROOT)
    import train_clip
    from minedit import toyworld as tw
    tc = train_clip.TrainConfig(batch_size=32, pretrain_all="shape,color")
    x, shape, color = train_clip.pretrain_batch(0, tc)
    scenes = [tw.sample_scene(tc.seed + 3, "train", i) for i in range(32)]  # step 0 takes scenes 0..31
    assert torch.equal(x, tw.render_batch(scenes, tc.res)) and any(len(s.objects) == 2 for s in scenes)
    assert torch.allclose(shape.sum(1), torch.ones(32)) and torch.allclose(color.sum(1), torch.ones(32))
    for s, sh, co in zip(scenes, shape, color):
        assert {tw.ALL_SHAPES[i] for i in sh.nonzero().flatten().tolist()} == {o.shape for o in s.objects}
        assert {list(tw.COLORS)[i] for i in co.nonzero().flatten().tolist()} == {o.color for o in s.objects}


def test_pretrain_all_color_keeps_shape_on_one_object_scenes(monkeypatch):
    """--pretrain-all color: the colour head learns from every scene of the batch, the shape head from its
    one-object scenes only (their rows, with their one-hot targets)."""
    sys.path.insert(0, ROOT)
    import train_clip
    from minedit import toyworld as tw
    from minedit.clip import CLIP, CLIPConfig
    tc = train_clip.TrainConfig(pretrain_steps=1, batch_size=32, bf16=False, pretrain_all="color")
    x, shape, color = train_clip.pretrain_batch(0, tc)
    one = torch.tensor([len(tw.sample_scene(tc.seed + 3, "train", i).objects) == 1 for i in range(32)])
    assert 0 < one.sum() < 32
    seen, ce = [], torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda logits, y: seen.append(y) or ce(logits, y))
    model = CLIP(CLIPConfig(vision_layers=1, vision_width=64, image_resolution=32, transformer_layers=1,
                            transformer_width=64, transformer_heads=1, embed_dim=32))
    train_clip.pretrain(model, tc, "cpu")
    assert torch.equal(seen[0], shape[one]) and torch.equal(seen[1], color)


def test_pretrain_objects_labels_each_object_in_reading_order(monkeypatch):
    """--pretrain-objects: every scene, with the shape and colour of its first and second object in reading
    order, "none" (the last class) for the second object of a one-object scene; pretrain() trains four heads
    on all rows of the batch."""
    sys.path.insert(0, ROOT)
    import train_clip
    from minedit import toyworld as tw
    from minedit.clip import CLIP, CLIPConfig
    tc = train_clip.TrainConfig(pretrain_steps=1, batch_size=32, bf16=False, pretrain_objects=True)
    x, *labels = train_clip.pretrain_batch(0, tc)
    scenes = [tw.sample_scene(tc.seed + 3, "train", i) for i in range(32)]
    assert torch.equal(x, tw.render_batch(scenes, tc.res)) and {len(s.objects) for s in scenes} == {1, 2}
    shapes, colors = list(tw.ALL_SHAPES), list(tw.COLORS)
    for s, row in zip(scenes, torch.stack(labels, 1).tolist()):
        objs = sorted(s.objects, key=lambda o: tw.POSITIONS.index(o.pos))
        want = [(shapes.index(o.shape), colors.index(o.color)) for o in objs] + [(len(shapes), len(colors))]
        assert row == [*want[0], *want[1]]
    seen, ce = [], torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda logits, y: seen.append((logits.shape, y)) or ce(logits, y))
    model = CLIP(CLIPConfig(vision_layers=1, vision_width=64, image_resolution=32, transformer_layers=1,
                            transformer_width=64, transformer_heads=1, embed_dim=32))
    train_clip.pretrain(model, tc, "cpu")
    assert [shape[1] for shape, _ in seen] == [len(shapes), len(colors), len(shapes) + 1, len(colors) + 1]
    assert all(torch.equal(y, want) for (_, y), want in zip(seen, labels))
    tc.pretrain_one_object_steps = 1  # the first step's scenes have one object each, the next step's not all
    first, second = (train_clip.pretrain_batch(step, tc)[3] for step in (0, 1))  # the second object's shape
    assert (first == len(shapes)).all() and (second < len(shapes)).any()


@pytest.mark.parametrize("learned_at, end", [(5, 11), (None, 12)])
def test_pretrain_shape_loss_ends_the_one_object_phase_when_shape_is_learned(monkeypatch, learned_at, end):
    """--pretrain-shape-loss L: the one-object phase goes on past --pretrain-one-object-steps until the
    first object's shape loss, averaged over the last 20 steps, is below L (here the loss is 2 until
    `learned_at`, then 0: the mean falls below 1 at step 11), at most until --pretrain-steps (12); the
    two-object steps that follow keep their number (12 - 2)."""
    sys.path.insert(0, ROOT)
    import train_clip
    from minedit.clip import CLIP, CLIPConfig
    tc = train_clip.TrainConfig(pretrain_steps=12, pretrain_one_object_steps=2, pretrain_shape_loss=1.0, batch_size=4,
                                bf16=False, pretrain_objects=True)
    phases, calls, batch, ce = [], [], train_clip.pretrain_batch, torch.nn.functional.cross_entropy
    monkeypatch.setattr(train_clip, "pretrain_batch", lambda step, tc, one_object: phases.append(one_object) or
                        batch(step, tc, one_object))

    def loss(logits, y):  # every step's first call is the first object's shape head
        calls.append(None)
        fake = 2.0 if len(calls) % 4 == 1 and (learned_at is None or len(phases) <= learned_at) else 0.0
        return ce(logits, y) * 0 + fake
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", loss)
    model = CLIP(CLIPConfig(vision_layers=1, vision_width=64, image_resolution=32, transformer_layers=1,
                            transformer_width=64, transformer_heads=1, embed_dim=32))
    train_clip.pretrain(model, tc, "cpu")
    assert phases == [True] * end + [False] * 10


def test_aux_weight_keeps_the_object_heads_on(tmp_path, monkeypatch):
    """--aux-weight: the warm-up's four per-object heads keep training the image tower through the
    contrastive steps (the same command at weight 0 ends with another image tower; the warm-up is the same
    in both); an intermediate checkpoint carries the heads, and a resume from it picks them up; without
    --pretrain-objects there are no such heads: a clean error, nothing written."""
    sys.path.insert(0, ROOT)
    import train_clip
    saved = []
    monkeypatch.setattr(train_clip, "save_checkpoint", lambda ckpt, path: saved.append(ckpt))
    for w in ("0", "1"):
        monkeypatch.setattr(sys, "argv", ["train_clip.py", *TINY_CLIP, "--steps", "3", "--save-every", "2",
                                          "--pretrain-objects", "--pretrain-steps", "2", "--aux-weight", w,
                                          "--out", str(tmp_path / "c.pt")])
        train_clip.main()
    (mid0, last0), (mid1, last1) = saved[:2], saved[2:]
    assert not torch.equal(last0["model"]["visual.conv1.weight"], last1["model"]["visual.conv1.weight"])
    assert "aux_heads" not in mid0 and "aux_heads" not in last1 and "optimizer" in mid1
    assert [v.shape[0] for k, v in mid1["aux_heads"].items() if k.endswith("weight")] == [9, 8, 10, 9]
    torch.save(mid1, tmp_path / "mid.pt")
    r = run([os.path.join(ROOT, "train_clip.py"), "--resume", str(tmp_path / "mid.pt"), "--out", str(tmp_path / "r.pt")],
            tmp_path)
    assert r.returncode == 0 and "steps 2 -> 3" in r.stdout, r.stderr
    r = run([os.path.join(ROOT, "train_clip.py"), "--pretrain-steps", "2", "--aux-weight", "1", "--out",
             str(tmp_path / "bad.pt")], tmp_path)
    assert r.returncode == 2 and "--pretrain-objects" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad.pt").exists()


def test_aux_attrs_add_heads_for_the_contrastive_steps(tmp_path, monkeypatch):
    """--aux-attrs: the kept heads read other attributes during contrastive training. A name the warm-up
    did not read gets a fresh head that the warm-up leaves as initialised and the contrastive steps train;
    its labels are the batch scenes' own. Without --aux-weight, or with an unknown name: a clean error."""
    sys.path.insert(0, ROOT)
    import train_clip
    from minedit import toyworld as tw
    saved, warm = [], []
    monkeypatch.setattr(train_clip, "save_checkpoint", lambda ckpt, path: saved.append(ckpt))
    pretrain, copy = train_clip.pretrain, lambda heads: {k: v.clone() for k, v in heads.state_dict().items()}

    def watched(model, tc, device, heads):  # the heads before and after the warm-up
        warm.append(copy(heads))
        pretrain(model, tc, device, heads)
        warm.append(copy(heads))
    monkeypatch.setattr(train_clip, "pretrain", watched)
    monkeypatch.setattr(sys, "argv", ["train_clip.py", *TINY_CLIP, "--steps", "3", "--save-every", "2",
                                      "--pretrain-objects", "--pretrain-steps", "2", "--aux-weight", "0.3",
                                      "--aux-attrs", "shape,color,background,style", "--out", str(tmp_path / "c.pt")])
    train_clip.main()
    before, after = warm
    mid = saved[0]["aux_heads"]
    assert [k[:-len(".weight")] for k in mid if k.endswith("weight")] == ["shape1", "color1", "shape2", "color2",
                                                                          "background", "style"]
    assert [mid[f"{k}.weight"].shape[0] for k in ("background", "style")] == [len(tw.BACKGROUNDS), len(tw.STYLES)]
    for k in before:  # the warm-up trains its own four heads only; the contrastive steps train all six
        assert torch.equal(before[k], after[k]) == k.startswith(("background", "style")), k
        assert not torch.equal(after[k], mid[k]), k
    tc = train_clip.TrainConfig(batch_size=8, aux_weight=0.3, pretrain_objects=True, aux_attrs="shape,style")
    scenes = [tw.sample_scene(tc.seed, "train", i) for i in range(4)]  # the first half of batch 0
    labels = train_clip.batch(0, tc, 77)[4]
    assert labels.shape == (8, 3) and labels[:4, 2].tolist() == [tw.STYLES.index(s.style) for s in scenes]
    for flags, word in ((["--aux-attrs", "style"], "--aux-weight"), (["--aux-weight", "1", "--aux-attrs", "mood"], "mood"),
                        (["--pretrain-shape-loss", "1"], "--pretrain-one-object-steps")):
        r = run([os.path.join(ROOT, "train_clip.py"), "--pretrain-objects", *flags, "--out", str(tmp_path / "bad.pt")],
                tmp_path)
        assert r.returncode == 2 and word in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "bad.pt").exists()


def test_object_attrs_choose_what_the_heads_read(tmp_path):
    """--object-attrs: one head per named attribute of the first object, then of the second (one class
    more: "none"), then one per scene attribute; the warm-up trains them all; an unknown name is a clean
    error."""
    sys.path.insert(0, ROOT)
    import train_clip
    from minedit import toyworld as tw
    from minedit.clip import CLIP, CLIPConfig
    tc = train_clip.TrainConfig(pretrain_steps=1, batch_size=32, bf16=False, pretrain_objects=True,
                                object_attrs="shape,pos,style")
    x, *labels = train_clip.pretrain_batch(0, tc)
    scenes = [tw.sample_scene(tc.seed + 3, "train", i) for i in range(32)]
    for s, row in zip(scenes, torch.stack(labels, 1).tolist()):
        objs = sorted(s.objects, key=lambda o: tw.POSITIONS.index(o.pos))
        second = [tw.ALL_SHAPES.index(objs[1].shape), tw.POSITIONS.index(objs[1].pos)] if len(objs) == 2 else [9, 9]
        assert row == [tw.ALL_SHAPES.index(objs[0].shape), tw.POSITIONS.index(objs[0].pos), *second,
                       tw.STYLES.index(s.style)]
    model = CLIP(CLIPConfig(vision_layers=1, vision_width=64, image_resolution=32, transformer_layers=1,
                            transformer_width=64, transformer_heads=1, embed_dim=32))
    heads = train_clip.pretrain(model, tc, "cpu")
    assert [h.out_features for h in heads.values()] == [9, 9, 10, 10, 5]
    r = run([os.path.join(ROOT, "train_clip.py"), "--pretrain-objects", "--object-attrs", "shape,mood",
             "--out", str(tmp_path / "c.pt")], tmp_path)
    assert r.returncode == 2 and "mood" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "c.pt").exists()


def test_pretrain_teaches_the_image_tower_only(monkeypatch):
    """The supervised warm-up (--pretrain-steps) trains the image tower and its heads, which then fit a
    batch they are shown repeatedly; the text tower and the temperature stay bit-identical."""
    sys.path.insert(0, ROOT)
    import train_clip
    from minedit.clip import CLIP, CLIPConfig, normalize
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(vision_layers=1, vision_width=64, image_resolution=32, transformer_layers=1,
                            transformer_width=64, transformer_heads=1, embed_dim=32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tc = train_clip.TrainConfig(pretrain_steps=60, batch_size=16, lr=3e-3, bf16=False)
    x, shape, color = train_clip.pretrain_batch(0, tc)
    assert len(x) == 16 and 0 <= shape.min() and shape.max() < 9 and 0 <= color.min() and color.max() < 8
    assert len(set(shape.tolist())) > 3 and len(set(color.tolist())) > 3
    monkeypatch.setattr(train_clip, "pretrain_batch", lambda step, tc, one_object=None: (x, shape, color))
    heads = train_clip.pretrain(model, tc, "cpu")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after if not k.startswith("visual."))
    assert not torch.equal(before["visual.conv1.weight"], after["visual.conv1.weight"])
    with torch.no_grad():
        z = model.encode_image(normalize(x, 32))
        for head, y in zip(heads, (shape, color)):
            assert (head(z).argmax(1) == y).float().mean() > 0.9  # chance: 1/9, 1/8


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("script", sorted(f for f in os.listdir(os.path.join(ROOT, "bench")) if f.endswith(".py") and f != "timing.py"))
def test_every_bench_explains_itself(script, monkeypatch):
    """`python bench/X.py --help` shows the module docstring and a help text for every flag (the parser is
    caught at parse_args, so nothing is computed)."""
    import argparse
    import ast
    import runpy
    seen = []

    def catch(parser, *args, **kw):
        seen.append(parser)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    path = os.path.join(ROOT, "bench", script)
    with pytest.raises(_Parsed):
        runpy.run_path(path, run_name="__main__")
    with open(path) as f:
        assert seen[0].description == ast.get_docstring(ast.parse(f.read()), clean=False)
    assert [a.dest for a in seen[0]._actions if not a.help] == []
