import pytest
import torch

from minedit.unet import UNet, UNetConfig, Upsample, timestep_embedding


def randomized(model, seed=0):
    """Fill every zero-initialized weight (output convs) with noise so each input can show its effect."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("size", [32, 64])
def test_shapes(size):
    cfg = UNetConfig(image_size=size, embed_dim=16, context_dim=24, in_channels=6, channel_mult=(1, 2, 2, 2) if size == 64 else (1, 2, 2))
    unet = UNet(cfg)
    x = torch.randn(2, 6, size, size)
    out = unet(x, torch.tensor([0, 999]), emb=torch.randn(2, 16), context=torch.randn(2, 5, 24))
    assert out.shape == (2, 3, size, size)


def test_output_is_zero_at_construction():
    unet = UNet(UNetConfig(embed_dim=16))
    out = unet(torch.randn(2, 3, 32, 32), torch.tensor([3, 500]), emb=torch.randn(2, 16))
    assert out.abs().max() == 0


def test_every_conditioning_input_changes_the_output():
    torch.manual_seed(0)
    unet = randomized(UNet(UNetConfig(embed_dim=16, context_dim=24, in_channels=6)))
    x, t, emb, ctx = torch.randn(2, 6, 32, 32), torch.tensor([10, 10]), torch.randn(2, 16), torch.randn(2, 5, 24)
    with torch.no_grad():
        base = unet(x, t, emb=emb, context=ctx)
        changes = {
            "timestep": unet(x, t + 300, emb=emb, context=ctx),
            "embedding": unet(x, t, emb=emb + 1, context=ctx),
            "context": unet(x, t, emb=emb, context=ctx + 1),
            "x_t channels": unet(torch.cat([x[:, :3] + 1, x[:, 3:]], 1), t, emb=emb, context=ctx),
            "source channels": unet(torch.cat([x[:, :3], x[:, 3:] + 1], 1), t, emb=emb, context=ctx),
            "null embedding": unet(x, t, emb=emb, context=ctx, drop_emb=torch.tensor([True, True])),
        }
    for name, out in changes.items():
        assert (out - base).abs().max() > 1e-4, name
    # a masked-out context token changes nothing; an unmasked one does
    mask = torch.tensor([[True] * 4 + [False]] * 2)
    ctx2 = ctx.clone()
    ctx2[:, 4] += 5
    with torch.no_grad():
        a = unet(x, t, emb=emb, context=ctx, context_mask=mask)
        b = unet(x, t, emb=emb, context=ctx2, context_mask=mask)
    assert torch.allclose(a, b, atol=1e-5)


def test_a_self_conditioned_unet_reads_its_estimate_and_zeros_without_one():
    torch.manual_seed(0)
    unet = randomized(UNet(UNetConfig(embed_dim=16, self_condition=True, in_channels=6)))
    x, t, emb = torch.randn(2, 3, 32, 32), torch.tensor([10, 10]), torch.randn(2, 16)
    with torch.no_grad():
        none = unet(x, t, emb=emb)
        zeros = unet(x, t, emb=emb, concat=torch.zeros_like(x))
        some = unet(x, t, emb=emb, concat=torch.rand_like(x))
    assert none.shape == (2, 3, 32, 32) and torch.equal(none, zeros)
    assert (some - zeros).abs().max() > 1e-4


def test_drop_emb_is_per_sample():
    unet = randomized(UNet(UNetConfig(embed_dim=16)))
    x, t, emb = torch.randn(2, 3, 32, 32), torch.tensor([5, 5]), torch.randn(2, 16)
    with torch.no_grad():
        full = unet(x, t, emb=emb)
        one = unet(x, t, emb=emb, drop_emb=torch.tensor([True, False]))
        null = unet(x, t, emb=None)
    assert torch.allclose(one[1], full[1], atol=1e-6) and not torch.allclose(one[0], full[0])
    assert torch.allclose(one[0], null[0], atol=1e-6)


def test_timestep_embedding():
    e = timestep_embedding(torch.tensor([0, 1, 500]), 64)
    assert e.shape == (3, 64) and torch.allclose(e[0, :32], torch.ones(32))


def test_upsample_is_nearest_neighbour():
    """Upsample doubles by repeat_interleave (faster on CPU): it must equal F.interpolate's nearest mode."""
    up = Upsample(4)
    x = torch.randn(2, 4, 5, 7)
    assert torch.equal(up(x), up.conv(torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")))
