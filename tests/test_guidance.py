import torch

from minedit.guidance import cfg


def toy_model(x, t, c=None):
    return x * 0.5 + t.float().view(-1, 1) * 0.01 + (0 if c is None else c)


def test_cfg_matches_the_formula_and_scale_one_is_conditional():
    x, t = torch.randn(3, 4), torch.tensor([1, 2, 3])
    c, null = torch.randn(3, 4), torch.zeros(3, 4)
    cond, uncond = toy_model(x, t, c), toy_model(x, t, null)
    for s in (0.0, 1.0, 2.5, 7.0):
        got = cfg(toy_model, s, {"c": c}, {"c": null})(x, t)
        assert torch.allclose(got, uncond + s * (cond - uncond), atol=1e-6)
    assert torch.allclose(cfg(toy_model, 1.0, {"c": c}, {"c": null})(x, t), cond)
    assert torch.allclose(cfg(toy_model, 0.0, {"c": c}, {"c": null})(x, t), uncond, atol=1e-6)


def test_cfg_refuses_branches_with_different_arguments():
    import pytest
    x, t = torch.randn(2, 4), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="same keyword arguments"):
        cfg(toy_model, 3.0, {}, {"c": torch.zeros(2, 4)})(x, t)


def two_cond_model(x, t, img=None, txt=None):
    """A denoiser whose output depends non-linearly on both conditions and on their interaction."""
    return x * 0.3 + torch.tanh(img) * 0.7 + txt * img * 0.2 + torch.sin(txt)


def test_cfg2_matches_the_formula_and_reduces_as_stated():
    from minedit.guidance import cfg2
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 4, generator=g), torch.tensor([1, 2, 3])
    img, txt, z = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g), torch.zeros(3, 4)
    full, image, none = {"img": img, "txt": txt}, {"img": img, "txt": z}, {"img": z, "txt": z}
    e_ct, e_c0, e_00 = two_cond_model(x, t, **full), two_cond_model(x, t, **image), two_cond_model(x, t, **none)
    for s_i, s_t in [(1.5, 7.5), (0.0, 3.0), (2.0, 0.0), (1.2, 1.0)]:
        got = cfg2(two_cond_model, s_i, s_t, full, image, none)(x, t)
        torch.testing.assert_close(got, e_00 + s_i * (e_c0 - e_00) + s_t * (e_ct - e_c0), atol=1e-5, rtol=1e-5)
    # s_I = 1: single-condition CFG on the text, given the image
    for s_t in (0.5, 4.0):
        torch.testing.assert_close(cfg2(two_cond_model, 1.0, s_t, full, image, none)(x, t),
                                   cfg(two_cond_model, s_t, full, image)(x, t), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cfg2(two_cond_model, 1.0, 1.0, full, image, none)(x, t), e_ct)


def test_explain_returns_the_predictions_and_their_differences():
    from minedit.guidance import explain
    x, t = torch.randn(2, 4), torch.tensor([1, 2])
    img, txt, z = torch.randn(2, 4), torch.randn(2, 4), torch.zeros(2, 4)
    out = explain(two_cond_model, x, t, {"img": img, "txt": txt}, {"img": img, "txt": z}, {"img": z, "txt": z})
    torch.testing.assert_close(out["text direction e(cI,cT)-e(cI,0)"], two_cond_model(x, t, img, txt) - two_cond_model(x, t, img, z))
    torch.testing.assert_close(out["image direction e(cI,0)-e(0,0)"], two_cond_model(x, t, img, z) - two_cond_model(x, t, z, z))


def test_condition_dropout_split_frequencies():
    from minedit.guidance import condition_dropout
    n = 200_000
    m = condition_dropout(n, 0.05, 0.05, 0.05, generator=torch.Generator().manual_seed(0))
    parts = torch.stack([m["only_text"], m["only_image"], m["both"]])
    assert parts.sum(0).max() <= 1  # disjoint
    tol = 4 * (0.05 * 0.95 / n) ** 0.5  # 4 standard errors
    for name in ("only_text", "only_image", "both"):
        assert abs(m[name].float().mean().item() - 0.05) < tol, name
    assert abs(m["drop_text"].float().mean().item() - 0.10) < 2 * tol
    assert torch.equal(m["drop_text"], m["only_text"] | m["both"])
    assert torch.equal(m["drop_image"], m["only_image"] | m["both"])


def test_instruct_kwargs_apply_the_nulls():
    from minedit.guidance import instruct_kwargs
    src, emb, states = torch.randn(3, 3, 8, 8), torch.randn(3, 16), torch.randn(3, 5, 24)
    mask = torch.ones(3, 5, dtype=torch.bool)
    di, dt = torch.tensor([True, False, False]), torch.tensor([False, True, False])
    kw = instruct_kwargs(src, emb, states, mask, di, dt)
    assert kw["concat"][0].abs().max() == 0 and torch.equal(kw["concat"][1:], src[1:])
    assert torch.equal(kw["drop_emb"], dt)
    assert not kw["context_mask"][1].any() and kw["context_mask"][[0, 2]].all()


def test_decoder_kwargs_apply_the_nulls_and_a_fully_masked_caption_is_no_caption():
    from minedit.guidance import decoder_kwargs
    from minedit.unet import UNet, UNetConfig
    emb, cap = torch.randn(3, 16), {"states": torch.randn(3, 5, 24).half(), "mask": torch.ones(3, 5, dtype=torch.bool)}
    de, dc = torch.tensor([True, False, False]), torch.tensor([True, True, False])
    assert decoder_kwargs(emb, de) == {"emb": emb, "drop_emb": de}  # no caption: the decoder's usual arguments
    kw = decoder_kwargs(emb, de, cap, dc)
    assert torch.equal(kw["drop_emb"], de) and kw["context"].dtype == torch.float32
    assert not kw["context_mask"][:2].any() and kw["context_mask"][2].all()
    assert torch.equal(decoder_kwargs(emb, de, cap)["context_mask"][:, 0], ~de)  # the caption drops with the embedding
    # the unconditional branch (every caption token masked) predicts what a decoder given no caption does
    unet = UNet(UNetConfig(embed_dim=16, context_dim=24)).eval()
    with torch.no_grad():  # the zero-initialized output layers get weights, so that every input shows
        for p in unet.parameters():
            p.add_(0.1 * torch.randn(p.shape) * (p == 0))
    x, t = torch.randn(3, 3, 32, 32), torch.tensor([5, 500, 900])
    with torch.no_grad():
        masked = unet(x, t, **decoder_kwargs(emb, de, cap, torch.ones(3, dtype=torch.bool)))
        none = unet(x, t, **decoder_kwargs(emb, de))
        kept = unet(x, t, **decoder_kwargs(emb, de, cap, torch.zeros(3, dtype=torch.bool)))
    assert torch.allclose(masked, none, atol=1e-5) and (kept - none).abs().max() > 1e-4


def test_residual_instruct_variable_round_trips_and_is_zero_where_nothing_changes():
    from minedit.pipeline import instruct_bound, instruct_result, instruct_variable
    from minedit.unet import UNet, UNetConfig
    g = torch.Generator().manual_seed(0)
    src = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    tgt = src.clone()
    tgt[:, :, 2:5, 2:5] = torch.rand(2, 3, 3, 3, generator=g) * 2 - 1  # an edit of one patch
    small = dict(model_channels=16, head_channels=16, image_size=8, in_channels=6, attention_resolutions=())
    plain, residual = UNet(UNetConfig(**small)), UNet(UNetConfig(**small, residual=True))
    assert torch.equal(instruct_variable(plain, src, tgt), tgt) and torch.equal(instruct_result(plain, src, tgt), tgt)
    d = instruct_variable(residual, src, tgt)
    assert d.abs().max() <= 1 and (d[:, :, :2] == 0).all() and (d[:, :, 2:5, 2:5] != 0).any()
    assert torch.allclose(instruct_result(residual, src, d), tgt, atol=1e-6)
    scaled = UNet(UNetConfig(**small, residual=True, residual_scale=2.0))  # the change, 4x larger
    d4 = instruct_variable(scaled, src, tgt)
    assert torch.allclose(d4, 4 * d) and d4.abs().max() <= instruct_bound(scaled) == 4.0
    assert torch.allclose(instruct_result(scaled, src, d4), tgt, atol=1e-6)
    assert instruct_bound(residual) == instruct_bound(plain) == 1.0
