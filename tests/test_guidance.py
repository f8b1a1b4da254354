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
