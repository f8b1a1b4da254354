"""Smoke tests: each training script runs end to end on a tiny config, resumes, and fails cleanly on bad input."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CLIP = ["--steps", "2", "--batch-size", "8", "--vision-layers", "1", "--transformer-layers", "1",
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


def test_train_clip_runs_and_resumes(tiny_clip, tmp_path):
    from minedit.clip import load
    model, _ = load(tiny_clip)
    assert model.config.transformer_width == 64
    r = run([os.path.join(ROOT, "train_clip.py"), "--resume", str(tiny_clip), "--steps", "3", "--out", str(tmp_path / "c.pt")], tmp_path)
    assert r.returncode == 0, r.stderr
    assert torch.load(tmp_path / "c.pt", weights_only=True)["step"] == 3


def test_train_decoder_toy_and_resume(tiny_clip, tmp_path):
    out = tmp_path / "dec.pt"
    r = run([os.path.join(ROOT, "train_decoder.py"), "--clip", str(tiny_clip), "--steps", "2", *TINY_UNET, "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    r = run([os.path.join(ROOT, "train_decoder.py"), "--clip", str(tiny_clip), "--resume", str(out), "--steps", "3",
             *TINY_UNET, "--out", str(tmp_path / "dec2.pt")], tmp_path)
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(tmp_path / "dec2.pt", weights_only=True)
    assert ckpt["kind"] == "decoder" and ckpt["step"] == 3 and ckpt["config"]["embed_dim"] == 32


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
