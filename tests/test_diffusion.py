"""minedit.diffusion against diffusers' schedulers (same betas, same step results within 1e-5), and
DDIM inversion with an exact denoiser."""
import pytest
import torch

from minedit.diffusion import GaussianDiffusion

SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def denoiser(seed=0):
    """A fixed, smooth stand-in for a network: eps depends on x and t."""
    w = torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.3
    return lambda x, t: (torch.tanh(torch.einsum("ij,bjhw->bihw", w.to(x.dtype), x))
                         * (0.5 + t.to(x.dtype).view(-1, 1, 1, 1) / 2000))


def in_float64(ref, d):
    """diffusers keeps its schedule in float32, where 1 - abar loses ~3 digits near t = 0; give it
    minedit's float64 schedule so the comparison tests the step arithmetic, not the rounding."""
    ref.betas, ref.alphas, ref.alphas_cumprod = d.betas, 1 - d.betas, d.alphas_cumprod
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(ref, "final_alpha_cumprod"):
        ref.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return ref


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_betas_match_diffusers(schedule):
    from diffusers import DDPMScheduler
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=SCHEDULES[schedule])
    d = GaussianDiffusion(1000, schedule)
    assert (d.betas.float() - ref.betas).abs().max() < 1e-7
    assert (d.alphas_cumprod.float() - ref.alphas_cumprod).abs().max() < 1e-5


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction,ref_pred", [("eps", "epsilon"), ("x0", "sample"), ("v", "v_prediction")])
def test_ddpm_step_matches_diffusers(schedule, prediction, ref_pred):
    from diffusers import DDPMScheduler
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=SCHEDULES[schedule], prediction_type=ref_pred,
                        clip_sample=True, variance_type="fixed_small")
    d = GaussianDiffusion(1000, schedule, prediction)
    model = denoiser()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for step in (999, 500, 37, 1, 0):  # float32, as both run by default: equal up to diffusers' fp32 schedule
        t = torch.full((2,), step)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(step))
        ours, _ = d.p_sample(model, x, t, clip_denoised=True, noise=noise)
        theirs = ref.step(model(x, t), step, x, generator=torch.Generator().manual_seed(step)).prev_sample
        assert (ours - theirs).abs().max() < 1e-3, step
    in_float64(ref, d)
    x = x.double()
    for step in (999, 500, 37, 1, 0):  # float64: the same arithmetic
        t = torch.full((2,), step)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(step), dtype=torch.float64)
        ours, _ = d.p_sample(model, x, t, clip_denoised=True, noise=noise)
        theirs = ref.step(model(x, t), step, x, generator=torch.Generator().manual_seed(step)).prev_sample
        assert (ours - theirs).abs().max() < 1e-5, step


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("steps", [10, 50, 250])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_steps_match_diffusers(schedule, steps, eta):
    from diffusers import DDIMScheduler
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule=SCHEDULES[schedule], clip_sample=True)
    ref.set_timesteps(steps)
    d = GaussianDiffusion(1000, schedule)
    assert d.ddim_timesteps(steps) == ref.timesteps.tolist()
    model = denoiser(1)
    in_float64(ref, d)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ts = d.ddim_timesteps(steps)
    for i, step in enumerate(ts):
        t = torch.full((2,), step)
        t_prev = torch.full((2,), ts[i + 1] if i + 1 < len(ts) else -1)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        ours, _ = d.ddim_step(model, x, t, t_prev, eta=eta, noise=noise)
        theirs = ref.step(model(x, t), step, x, eta=eta, use_clipped_model_output=True,
                          generator=torch.Generator().manual_seed(i)).prev_sample
        assert (ours - theirs).abs().max() < 1e-5, (i, step)
        x = theirs


def gaussian_denoiser(d, mu, s):
    """The exact eps-prediction when the data is N(mu, s^2 I): E[eps | x_t] is linear in x_t."""
    def model(x, t):
        a = d.alphas_cumprod[t].float().view(-1, *([1] * (x.dim() - 1)))
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s ** 2 + 1 - a)
    return model


@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (16, 32)])
def test_ddim_inversion_round_trip_with_exact_denoiser(shape):
    torch.manual_seed(0)
    d = GaussianDiffusion(1000, "linear").double()
    mu = torch.rand(shape[1:], dtype=torch.float64) - 0.5
    s = 0.3
    model = gaussian_denoiser(d, mu, s)
    x0 = mu + s * torch.randn(shape, dtype=torch.float64)
    xT = d.ddim_invert(model, x0, steps=50)
    assert xT.std() > 0.7  # it really reached (near-)noise
    back = d.ddim_sample(model, noise=xT, steps=50, clip_denoised=False)
    assert (back - x0).abs().max() <= 1e-3
    # without the fixed-point refinement the usual approximation is visibly worse
    back0 = d.ddim_sample(model, noise=d.ddim_invert(model, x0, 50, fixed_point_iters=0), steps=50, clip_denoised=False)
    assert (back0 - x0).abs().max() > (back - x0).abs().max()


def test_ddim_inversion_round_trip_with_a_self_conditioned_denoiser():
    """A denoiser that reads an x0 estimate round-trips when both ways read the estimate of the same step
    (a function of (x, t) alone); reading the previous call's, the two ways read different estimates."""
    torch.manual_seed(0)
    d = GaussianDiffusion(1000, "linear").double()
    mu, s = torch.rand(3, 8, 8, dtype=torch.float64) - 0.5, 0.3
    exact = gaussian_denoiser(d, mu, s)
    model = lambda x, t, concat: exact(x, t) + 0.2 * concat.flip(1)  # leans on the estimate
    x0 = mu + s * torch.randn(4, 3, 8, 8, dtype=torch.float64)
    same = d.self_conditioned(model, same_step=True)
    back = d.ddim_sample(same, noise=d.ddim_invert(same, x0, steps=50), steps=50, clip_denoised=False)
    assert (back - x0).abs().max() <= 1e-3
    xT = d.ddim_invert(d.self_conditioned(model), x0, steps=50)
    back_prev = d.ddim_sample(d.self_conditioned(model), noise=xT, steps=50, clip_denoised=False)
    assert (back_prev - x0).abs().max() > 0.01


def test_self_conditioned_denoiser_reads_the_previous_or_the_same_step_estimate():
    d = GaussianDiffusion(100, "cosine", "v")
    seen = []

    def model(x, t, concat):
        seen.append(concat.clone())
        return 3 * x + t.view(-1, 1) / 50 + concat  # outputs whose x0 estimates leave [-1, 1] somewhere
    x, t = torch.randn(2, 5), torch.tensor([90, 90])
    prev = d.self_conditioned(model)
    out1 = prev(x, t)
    out2 = prev(x, t - 10)
    assert torch.equal(seen[0], torch.zeros_like(x))
    est = d.split_prediction(out1, x, t)[0]
    assert (est.abs() > 1).any() and torch.equal(seen[1], est.clamp(-1, 1))  # the clipped estimate of call 1
    prev(x, t)  # t went up again: a new sampling run, which starts from zeros
    assert torch.equal(seen[2], torch.zeros_like(x))
    seen.clear()
    same = d.self_conditioned(model, same_step=True)
    a, b = same(x, t), same(x, t)
    assert len(seen) == 4 and torch.equal(a, b)  # two forwards a call, and no state between calls
    assert torch.equal(seen[0], torch.zeros_like(x)) and torch.equal(seen[1], d.split_prediction(out1, x, t)[0].clamp(-1, 1))
    assert not torch.equal(out2, out1)


def test_training_losses_self_condition_a_share_of_batches_on_the_models_own_estimate():
    d = GaussianDiffusion(100, "cosine", "v")
    calls = []

    def model(x, t, concat):
        calls.append((torch.is_grad_enabled(), concat.clone()))
        return 2 * x + concat
    x0, g = torch.randn(3, 4), torch.Generator().manual_seed(0)
    reads = 0
    for _ in range(400):
        calls.clear()
        d.training_losses(model, x0, generator=g, self_cond=0.3)
        assert calls[0][1].abs().max() == 0  # the first forward always reads zeros
        if len(calls) == 2:  # an estimate made without gradient, then the trained forward on it
            reads += 1
            assert not calls[0][0] and calls[1][0] and calls[1][1].abs().max() > 0
        else:
            assert len(calls) == 1
    assert abs(reads / 400 - 0.3) < 0.07
    calls.clear()
    t, noise = torch.tensor([10, 50, 99]), torch.randn(3, 4)
    d.training_losses(model, x0, t, noise, self_cond=1.0)
    xt = d.q_sample(x0, t, noise)
    assert torch.equal(calls[1][1], d.split_prediction(2 * xt, xt, t)[0].clamp(-1, 1))
    assert d.training_losses(lambda x, t: x, x0).shape == (3,)  # off: a plain model is handed no estimate


def test_training_losses_are_zero_for_the_exact_target():
    d = GaussianDiffusion(100, "cosine", "v")
    x0 = torch.randn(4, 5)
    noise = torch.randn(4, 5)
    t = torch.tensor([0, 10, 50, 99])
    oracle = lambda xt, tt: d.target(x0, noise, tt)
    assert d.training_losses(oracle, x0, t, noise).abs().max() < 1e-10
    assert d.training_losses(lambda xt, tt: torch.zeros_like(xt), x0, t, noise).min() > 0.01
    x0_hat, eps_hat = d.split_prediction(d.target(x0, noise, t), d.q_sample(x0, t, noise), t)
    assert torch.allclose(x0_hat, x0, atol=1e-5) and torch.allclose(eps_hat, noise, atol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weighting_is_min_snr_gamma_times_the_x0_error(prediction):
    """Whatever the model predicts, the Min-SNR-weighted loss is min(SNR, gamma) * |x0_hat - x0|^2, with
    x0_hat the model output turned into an x0 estimate; without gamma it is the plain MSE."""
    d = GaussianDiffusion(100, "cosine", prediction)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 5, 20, 50, 80, 99])
    model = lambda xt, tt: torch.sin(3 * xt) + tt.view(-1, 1) / 100  # a wrong model: nonzero errors everywhere
    xt = d.q_sample(x0, t, noise)
    x0_hat, _ = d.split_prediction(model(xt, t), xt, t)
    abar = d.alphas_cumprod[t]
    want = (abar / (1 - abar)).clamp(max=5.0) * (x0_hat - x0).pow(2).mean(1)
    got = d.training_losses(model, x0, t, noise, snr_gamma=5.0)
    assert torch.allclose(got, want.float(), rtol=1e-5, atol=1e-8)
    plain = (model(xt, t) - d.target(x0, noise, t)).pow(2).mean(1)
    assert torch.allclose(d.training_losses(model, x0, t, noise), plain.float(), rtol=1e-6)
    assert not torch.allclose(got, plain.float(), rtol=1e-2)


def test_per_element_weights_scale_the_squared_error():
    """weight multiplies each element's squared error before the mean: ones change nothing, and a mask
    keeps only the masked elements' error (scaled by the fraction they are of the sample)."""
    d = GaussianDiffusion(100, "cosine", "v")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([5, 50, 95])
    model = lambda xt, tt: torch.sin(3 * xt)
    err = (model(d.q_sample(x0, t, noise), t) - d.target(x0, noise, t)).pow(2)
    assert torch.allclose(d.training_losses(model, x0, t, noise, weight=torch.ones(3, 1, 4, 4)),
                          d.training_losses(model, x0, t, noise))
    mask = torch.zeros(3, 1, 4, 4)
    mask[:, :, :2, 1:3] = 1  # 4 of 16 pixels, both channels
    got = d.training_losses(model, x0, t, noise, weight=mask)
    assert torch.allclose(got, err[:, :, :2, 1:3].flatten(1).mean(1) / 4, rtol=1e-5)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_one_cpu_generator_gives_every_device_the_same_draws(device):
    """Training and sampling take a seeded CPU generator whatever the model's device: timesteps and noise
    are drawn on the generator's device, in a fixed order (t, then noise), and moved."""
    d = GaussianDiffusion(100, "cosine", "v").to(device)
    x0 = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(1)).to(device)
    model = lambda xt, tt: torch.sin(3 * xt) + tt.view(-1, 1, 1, 1) / 100
    got = d.training_losses(model, x0, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 100, (4,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    want = d.training_losses(model, x0, t.to(device), noise.to(device))
    assert got.device.type == device and torch.allclose(got, want)
    x = d.ddim_sample(model, (2, 3, 2, 2), steps=5, eta=1.0, generator=torch.Generator().manual_seed(0), device=device)
    ref = GaussianDiffusion(100, "cosine", "v").ddim_sample(model, (2, 3, 2, 2), steps=5, eta=1.0,
                                                            generator=torch.Generator().manual_seed(0))
    assert x.device.type == device and torch.allclose(x.cpu(), ref, atol=1e-5)


def test_clip_denoised_takes_a_bound():
    """clip_denoised=True clips x0 estimates to [-1, 1]; a number b clips them to [-b, b] (residual edits)."""
    d = GaussianDiffusion(100, "cosine", "x0")
    big = lambda xt, tt: torch.full_like(xt, 3.0)
    xt, t = torch.zeros(2, 4), torch.tensor([50, 50])
    for bound, want in ((True, 1.0), (2.0, 2.0), (False, 3.0)):
        assert torch.allclose(d.p_mean_variance(big, xt, t, clip_denoised=bound)["pred_x0"], torch.full_like(xt, want))
        _, x0 = d.ddim_step(big, xt, t, t - 10, clip_denoised=bound)
        assert torch.allclose(x0, torch.full_like(xt, want))


def test_ddpm_sampling_of_a_gaussian_gets_its_moments():
    d = GaussianDiffusion(200, "linear")
    mu, s = torch.tensor([0.5, -0.3]), 0.2
    x = d.p_sample_loop(gaussian_denoiser(d, mu, s), (4000, 2), clip_denoised=False, generator=torch.Generator().manual_seed(0))
    assert (x.mean(0) - mu).abs().max() < 0.02 and abs(x.std(0).mean() - s) < 0.02
