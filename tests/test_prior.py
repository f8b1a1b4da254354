import pytest
import torch
import torch.nn.functional as F

from minedit.diffusion import GaussianDiffusion
from minedit.guidance import cfg
from minedit.pipeline import load_prior
from minedit.prior import Prior, PriorConfig, rerank


def small_prior(seed=0):
    torch.manual_seed(seed)
    return Prior(PriorConfig(embed_dim=16, text_width=24, max_text_len=8, width=32, layers=2, heads=2)).eval()


def inputs(B=3, T=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 4:] = False  # a shorter text
    return dict(x=torch.randn(B, 16, generator=g), t=torch.tensor([5, 500, 999]),
                text_emb=F.normalize(torch.randn(B, 16, generator=g), dim=-1),
                text_states=torch.randn(B, T, 24, generator=g), text_mask=mask)


def run(prior, x, t, **kw):
    with torch.no_grad():
        return prior(x, t, **kw)


def test_shapes_and_text_longer_than_the_window():
    prior, a = small_prior(), inputs(T=12)
    a["text_mask"] = torch.ones(3, 12, dtype=torch.bool)
    assert run(prior, **a).shape == (3, 16)
    assert run(prior, a["x"], a["t"], text_emb=a["text_emb"]).shape == (3, 16)  # embedding only


def test_a_caption_reads_the_same_alone_and_in_any_batch():
    """pipeline.encode_texts cuts the token states at the batch's longest caption, so a caption's states come
    padded to different lengths in different batches; the prediction must not depend on which (before prior
    checkpoint version 2 it did: one caption alone read cosine 0.82 to the true embedding, in a batch 0.96)."""
    prior, a = small_prior(), inputs()
    prior.positional_embedding.data.normal_()  # trained positions differ much more than the 0.01 init
    full = run(prior, **a)  # padded to 6, the longest caption of the batch
    for i, n in enumerate((4, 6, 6)):  # each caption alone, cut at its own length
        alone = run(prior, a["x"][i:i + 1], a["t"][i:i + 1], text_emb=a["text_emb"][i:i + 1],
                    text_states=a["text_states"][i:i + 1, :n], text_mask=a["text_mask"][i:i + 1, :n])
        torch.testing.assert_close(alone, full[i:i + 1], atol=1e-5, rtol=1e-5)


def test_standardization_round_trip():
    prior = small_prior()
    z = torch.randn(500, 16) * torch.linspace(0.1, 3, 16) + torch.linspace(-2, 2, 16)
    prior.set_stats(z)
    x = prior.standardize(z)
    torch.testing.assert_close(x.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0), torch.ones(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(prior.unstandardize(x), z, atol=1e-5, rtol=1e-5)


def test_every_input_changes_the_output():
    prior, a = small_prior(), inputs()
    base = run(prior, **a)
    states = a["text_states"].clone()
    states[:, 1] += 1
    changes = {
        "x": run(prior, **{**a, "x": a["x"] + 1}),
        "t": run(prior, **{**a, "t": (a["t"] + 300) % 1000}),
        "text_emb": run(prior, **{**a, "text_emb": a["text_emb"].roll(1, 0)}),
        "text_states": run(prior, **{**a, "text_states": states}),
        "drop_text": run(prior, **a, drop_text=torch.ones(3, dtype=torch.bool)),
    }
    for name, out in changes.items():
        assert (out - base).abs().amax(1).min() > 1e-4, f"the output ignores {name} for some sample"


def test_padding_and_dropped_text_are_ignored():
    prior, a = small_prior(), inputs()
    base = run(prior, **a)
    states = a["text_states"].clone()
    states[0, 4:] = 100.0  # padding of sample 0
    torch.testing.assert_close(run(prior, **{**a, "text_states": states}), base)
    drop = torch.ones(3, dtype=torch.bool)
    dropped = run(prior, **a, drop_text=drop)
    other = run(prior, **{**a, "text_states": torch.randn(3, 6, 24), "text_emb": a["text_emb"].flip(0)}, drop_text=drop)
    torch.testing.assert_close(other, dropped)  # with the text dropped, nothing of the text gets through


def test_cpu_attention_kernel_matches_the_default_kernel(monkeypatch):
    """prior.py runs attention with the math kernel on CPU for speed; the flash kernel, PyTorch's
    default, must give the same outputs, padded and dropped text included (fp32)."""
    from torch.nn.attention import SDPBackend

    import minedit.prior as prior_module
    prior, a = small_prior(), inputs()
    a["drop_text"] = torch.tensor([False, True, False])
    fast = run(prior, **a)
    monkeypatch.setattr(prior_module, "CPU_ATTENTION", SDPBackend.FLASH_ATTENTION)
    torch.testing.assert_close(run(prior, **a), fast, atol=1e-5, rtol=1e-5)


def test_cfg_at_scale_one_is_the_conditional_prediction():
    prior, a = small_prior(), inputs()
    kw = {k: a[k] for k in ("text_emb", "text_states", "text_mask")}
    on, off = torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)
    with torch.no_grad():
        cond = prior(a["x"], a["t"], **kw, drop_text=on)
        unc = prior(a["x"], a["t"], **kw, drop_text=off)
        g1 = cfg(prior, 1.0, {**kw, "drop_text": on}, {**kw, "drop_text": off})(a["x"], a["t"])
        g3 = cfg(prior, 3.0, {**kw, "drop_text": on}, {**kw, "drop_text": off})(a["x"], a["t"])
    torch.testing.assert_close(g1, cond)
    torch.testing.assert_close(g3, unc + 3 * (cond - unc), atol=1e-5, rtol=1e-5)


def test_sample_is_unit_norm_and_deterministic():
    prior, a = small_prior(), inputs()
    d = GaussianDiffusion(100, "cosine", "x0")
    kw = {k: a[k] for k in ("text_emb", "text_states", "text_mask")}
    z1 = prior.sample(d, **kw, guidance=2.0, steps=5, generator=torch.Generator().manual_seed(0))
    z2 = prior.sample(d, **kw, guidance=2.0, steps=5, generator=torch.Generator().manual_seed(0))
    assert z1.shape == (3, 16)
    torch.testing.assert_close(z1.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(z1, z2)


def test_rerank_picks_the_most_similar_candidate():
    text = F.normalize(torch.randn(4, 16), dim=-1)
    cands = F.normalize(torch.randn(2, 4, 16), dim=-1)
    cands[1, 2] = text[2]  # candidate 1 is perfect for sample 2
    best = rerank(cands, text)
    for b in range(4):
        scores = (cands[:, b] * text[b]).sum(-1)
        torch.testing.assert_close(best[b], cands[scores.argmax(), b])
    torch.testing.assert_close(best[2], text[2])
    # with keys, candidates of any shape are ranked by their keys (images by their CLIP embeddings)
    images = torch.randn(2, 4, 3, 8, 8)
    picked = rerank(images, text, keys=cands)
    for b in range(4):
        torch.testing.assert_close(picked[b], images[(cands[:, b] * text[b]).sum(-1).argmax(), b])


def test_a_version_1_prior_is_refused(tmp_path):
    """Version-1 priors were trained with the batch-dependent positions; the fixed code cannot run them as trained."""
    prior = small_prior()
    torch.save({"kind": "prior", "version": 1, "config": vars(prior.config), "model": prior.state_dict(),
                "train_config": {"timesteps": 100, "schedule": "cosine", "prediction": "x0"}}, tmp_path / "prior.pt")
    with pytest.raises(ValueError, match="version 1, this minedit reads version 2"):
        load_prior(tmp_path / "prior.pt")
