"""
Gaussian diffusion (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"; DDIM from Song et al.
2021), for tensors of any shape: the decoder diffuses images (B, C, H, W), the prior diffuses
embeddings (B, D). One implementation serves both. Names follow improved-diffusion's
gaussian_diffusion.py (q_sample, q_posterior, p_mean_variance, p_sample, ddim_sample,
training_losses) so a reader can go on to GLIDE, unCLIP and Karlo.

A denoiser is any callable `model(x_t, t, **model_kwargs)` returning the prediction named by
`prediction` ("eps", "x0" or "v"); guidance is a wrapper around it (minedit/guidance.py), never here.
A self-conditioned denoiser (Chen et al. 2022) also reads an x0 estimate, `model(x_t, t, concat=x0_hat)`;
`self_conditioned` turns it into a plain one and `training_losses(self_cond=p)` trains it.
Schedules are computed in float64 and stored as buffers; the DDPM and DDIM steps match diffusers'
DDPMScheduler / DDIMScheduler (tests/test_diffusion.py).
"""

import math

import torch
import torch.nn as nn
from tqdm import tqdm


def beta_schedule(name, timesteps):
    """float64 betas: 'linear' (DDPM: 1e-4 .. 0.02 for 1000 steps) or 'cosine' (Nichol & Dhariwal 2021)."""
    if name == "linear":
        scale = 1000 / timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    if name == "cosine":
        f = lambda t: math.cos((t / timesteps + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - f(i + 1) / f(i), 0.999) for i in range(timesteps)], dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {name!r}")


def _clip(x0, bound):
    """Clip x0 estimates to [-1, 1] (bound True) or to [-bound, bound] (a number)."""
    b = 1.0 if bound is True else float(bound)
    return x0.clamp(-b, b)


def _extract_into_tensor(a, t, x):
    """a[t] for a batch of timesteps t (B,), shaped (B, 1, ..., 1) to broadcast against x."""
    return a.to(x.device)[t].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


def randn(shape, generator=None, device=None, dtype=None):
    """N(0, I) noise of `shape` on `device`, drawn on the generator's own device and then moved, so one
    seeded CPU generator drives a model on any device and gives it the same numbers."""
    src = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=src, dtype=dtype).to(device)


class GaussianDiffusion(nn.Module):
    def __init__(self, timesteps=1000, schedule="linear", prediction="eps"):
        super().__init__()
        assert prediction in ("eps", "x0", "v"), prediction
        self.timesteps, self.schedule, self.prediction = timesteps, schedule, prediction
        betas = beta_schedule(schedule, timesteps)
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
        buffers = dict(
            betas=betas, alphas_cumprod=alphas_cumprod, alphas_cumprod_prev=alphas_cumprod_prev,
            sqrt_alphas_cumprod=alphas_cumprod.sqrt(), sqrt_one_minus_alphas_cumprod=(1 - alphas_cumprod).sqrt(),
            sqrt_recip_alphas_cumprod=(1 / alphas_cumprod).sqrt(), sqrt_recipm1_alphas_cumprod=(1 / alphas_cumprod - 1).sqrt(),
            posterior_variance=posterior_variance,
            # the variance is 0 at t = 0: clip the log there to the next value (as improved-diffusion does)
            posterior_log_variance_clipped=torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]])),
            posterior_mean_coef1=betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),
            posterior_mean_coef2=(1 - alphas_cumprod_prev) * (1 - betas).sqrt() / (1 - alphas_cumprod),
        )
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    # --- the forward process q ---

    def q_sample(self, x0, t, noise=None):
        """x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I)."""
        noise = torch.randn_like(x0) if noise is None else noise
        return _extract_into_tensor(self.sqrt_alphas_cumprod, t, x0) * x0 + \
            _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior(self, x0, xt, t):
        """Mean, variance and log variance of q(x_{t-1} | x_t, x_0)."""
        mean = _extract_into_tensor(self.posterior_mean_coef1, t, xt) * x0 + _extract_into_tensor(self.posterior_mean_coef2, t, xt) * xt
        return mean, _extract_into_tensor(self.posterior_variance, t, xt), _extract_into_tensor(self.posterior_log_variance_clipped, t, xt)

    # --- converting between parameterizations ---

    def _predict_x0_from_eps(self, xt, t, eps):
        return _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, xt) * xt - _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, xt) * eps

    def _predict_eps_from_x0(self, xt, t, x0):
        return (_extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, xt) * xt - x0) / _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, xt)

    def split_prediction(self, out, xt, t):
        """A model output -> (x0, eps), whatever the parameterization."""
        if self.prediction == "eps":
            return self._predict_x0_from_eps(xt, t, out), out
        if self.prediction == "x0":
            return out, self._predict_eps_from_x0(xt, t, out)
        a, s = _extract_into_tensor(self.sqrt_alphas_cumprod, t, xt), _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, xt)
        x0 = a * xt - s * out  # v = a * eps - s * x0 (Salimans & Ho 2022)
        return x0, s * xt + a * out

    def target(self, x0, noise, t):
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return _extract_into_tensor(self.sqrt_alphas_cumprod, t, x0) * noise - _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    # --- the reverse process p ---

    def p_mean_variance(self, model, xt, t, clip_denoised=True, model_kwargs=None):
        """The model's p(x_{t-1} | x_t): dict(mean, variance, log_variance, pred_x0, eps). Fixed small variance."""
        x0, eps = self.split_prediction(model(xt, t, **(model_kwargs or {})), xt, t)
        if clip_denoised:
            x0 = _clip(x0, clip_denoised)
        mean, var, logvar = self.q_posterior(x0, xt, t)
        return {"mean": mean, "variance": var, "log_variance": logvar, "pred_x0": x0, "eps": eps}

    def p_sample(self, model, xt, t, clip_denoised=True, model_kwargs=None, noise=None, generator=None):
        """One ancestral step x_t -> x_{t-1}; no noise is added at t = 0."""
        out = self.p_mean_variance(model, xt, t, clip_denoised, model_kwargs)
        if noise is None:
            noise = randn(xt.shape, generator, xt.device, xt.dtype)
        nonzero = (t != 0).to(xt.dtype).view(-1, *([1] * (xt.dim() - 1)))
        return out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise, out["pred_x0"]

    @torch.no_grad()
    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, model_kwargs=None, generator=None,
                      device="cpu", progress=False):
        """DDPM ancestral sampling over all timesteps, from noise (or N(0, I)) to x_0."""
        x = randn(shape, generator, device) if noise is None else noise
        for i in tqdm(range(self.timesteps - 1, -1, -1), disable=not progress, desc="ddpm"):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            x, _ = self.p_sample(model, x, t, clip_denoised, model_kwargs, generator=generator)
        return x

    # --- DDIM: deterministic (eta = 0) or stochastic sampling on a respaced subset of timesteps ---

    def ddim_timesteps(self, steps):
        """The respaced timesteps, descending: T//steps apart, from (steps-1)*(T//steps) down to 0
        ('leading' spacing, as diffusers' DDIMScheduler by default)."""
        assert 1 <= steps <= self.timesteps, steps
        return list(range(0, self.timesteps, self.timesteps // steps))[:steps][::-1]

    def _alpha(self, t, x):
        """abar_t for integer timesteps t (B,), with abar = 1 for t < 0 (the clean image)."""
        a = torch.cat([torch.ones(1, dtype=torch.float64, device=self.alphas_cumprod.device), self.alphas_cumprod])
        return _extract_into_tensor(a, t + 1, x)

    def ddim_step(self, model, xt, t, t_prev, eta=0.0, clip_denoised=True, model_kwargs=None, noise=None, generator=None):
        """x_t -> x_{t_prev} (t_prev < t; t_prev = -1 means the clean image). Returns (x_prev, pred_x0)."""
        x0, eps = self.split_prediction(model(xt, t, **(model_kwargs or {})), xt, t)
        if clip_denoised:
            x0 = _clip(x0, clip_denoised)
            eps = self._predict_eps_from_x0(xt, t, x0)
        a, a_prev = self._alpha(t, xt), self._alpha(t_prev, xt)
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
        x_prev = a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0:
            if noise is None:
                noise = randn(xt.shape, generator, xt.device, xt.dtype)
            x_prev = x_prev + sigma * noise
        return x_prev, x0

    @torch.no_grad()
    def ddim_sample(self, model, shape=None, noise=None, steps=50, eta=0.0, clip_denoised=True, model_kwargs=None,
                    generator=None, device="cpu", progress=False, start_step=0):
        """DDIM sampling from x_T (noise, or N(0, I) of `shape`) to x_0 in `steps` respaced steps.
        start_step > 0 skips the first (noisiest) steps: `noise` is then x at that step (SDEdit)."""
        x = randn(shape, generator, device) if noise is None else noise
        ts = self.ddim_timesteps(steps)
        for i in tqdm(range(start_step, len(ts)), disable=not progress, desc="ddim"):
            t = torch.full((x.shape[0],), ts[i], device=x.device, dtype=torch.long)
            t_prev = torch.full_like(t, ts[i + 1] if i + 1 < len(ts) else -1)
            x, _ = self.ddim_step(model, x, t, t_prev, eta, clip_denoised, model_kwargs, generator=generator)
        return x

    @torch.no_grad()
    def ddim_invert(self, model, x0, steps=50, model_kwargs=None, fixed_point_iters=12, tol=1e-4, progress=False):
        """Deterministic DDIM inversion x_0 -> x_T, so that ddim_sample(noise=x_T, eta=0, clip_denoised=False)
        re-generates x_0. Each step solves x_t = f(x_t) for the DDIM update it must undo, starting from
        the usual approximation eps(x_t) ~ eps(x_{t_prev}) and refining it up to `fixed_point_iters` times,
        until no value moves by more than `tol`. The refinements matter: sampling back can amplify a miss
        of 1e-3 at the noisiest step 400-fold for some images (README, "Diffusion and the decoder").
        Where the iteration does not contract, each sample keeps the refinement that moved least, i.e.
        the one whose DDIM step lands closest to x_{t_prev}."""
        x = x0
        ts = self.ddim_timesteps(steps)[::-1]  # ascending
        for i in tqdm(range(len(ts)), disable=not progress, desc="invert"):
            t = torch.full((x.shape[0],), ts[i], device=x.device, dtype=torch.long)
            t_prev = torch.full_like(t, ts[i - 1] if i > 0 else -1)
            a, a_prev = self._alpha(t, x), self._alpha(t_prev, x)
            xt, out = x, x
            least = torch.full((x.shape[0],), float("inf"), device=x.device, dtype=x.dtype)
            for _ in range(1 + fixed_point_iters):
                _, eps = self.split_prediction(model(xt, t, **(model_kwargs or {})), xt, t)
                # invert x_prev = sqrt(a_prev) x0(x_t, eps) + sqrt(1 - a_prev) eps for x_t
                nxt = (a / a_prev).sqrt() * (x - (1 - a_prev).sqrt() * eps) + (1 - a).sqrt() * eps
                moved = (nxt - xt).flatten(1).abs().amax(1)  # proportional to how far DDIM from xt misses x
                out = torch.where((moved < least).view(-1, *[1] * (x.dim() - 1)), nxt, out)
                least = torch.minimum(least, moved)
                if moved.max() <= tol:
                    break
                xt = nxt
            x = out
        return x

    # --- self-conditioning (Chen et al. 2022, "Analog Bits") ---

    def _estimate(self, out, xt, t):
        """A model output -> its x0 estimate in [-1, 1], as a self-conditioned model reads it back."""
        return self.split_prediction(out, xt, t)[0].clamp(-1, 1).to(xt.dtype)

    def _own_estimate(self, model, xt, t, **kw):
        """The estimate a self-conditioned model makes at (x_t, t) from zeros: what it reads in training and
        in same-step sampling."""
        return self._estimate(model(xt, t, concat=torch.zeros_like(xt), **kw), xt, t)

    def self_conditioned(self, model, same_step=False):
        """A plain denoiser (x, t) from one trained to also read an x0 estimate, model(x, t, concat=x0_hat).
        By default each call reads the estimate of the call before it (sampling: the previous step), as the
        paper samples, at no extra cost; a call whose t is not below the last one's starts a new run and
        reads zeros. same_step=True reads the estimate the model makes at the same (x, t) from zeros: two
        forwards per call, but a function of (x, t) alone, which an exact DDIM inversion round trip needs."""
        prev, last_t = None, None

        def denoiser(x, t):
            nonlocal prev, last_t
            if same_step:
                return model(x, t, concat=self._own_estimate(model, x, t))
            if prev is None or prev.shape != x.shape or (t >= last_t).any():  # a new sampling run
                prev = torch.zeros_like(x)
            out = model(x, t, concat=prev)
            prev, last_t = self._estimate(out, x, t), t
            return out
        return denoiser

    # --- training ---

    def training_losses(self, model, x0, t=None, noise=None, model_kwargs=None, generator=None, snr_gamma=None,
                        weight=None, self_cond=0.0):
        """Per-sample MSE between the model's output and its target (eps, x0 or v) at random or given t.
        snr_gamma: Min-SNR weighting (Hang et al. 2023): each timestep's loss, seen as an x0 loss, is
        weighted by min(SNR, gamma), so the nearly clean timesteps stop dominating training.
        weight: per-element weights, broadcastable to x0 (e.g. more weight on the pixels an edit changes).
        self_cond: for a self-conditioned model, the chance that a batch reads the model's own x0 estimate
        (`_own_estimate`, made without gradient); otherwise it reads zeros. Chen et al. use 0.5. 0 = a plain
        model."""
        on = generator.device if generator is not None else x0.device  # as randn(): the generator's device
        if t is None:
            t = torch.randint(0, self.timesteps, (x0.shape[0],), generator=generator, device=on).to(x0.device)
        noise = randn(x0.shape, generator, x0.device, x0.dtype) if noise is None else noise
        xt, kw = self.q_sample(x0, t, noise), dict(model_kwargs or {})
        if self_cond:
            kw["concat"] = torch.zeros_like(xt)
            if torch.rand((), generator=generator, device=on).item() < self_cond:
                with torch.no_grad():
                    kw["concat"] = self._own_estimate(model, xt, t, **(model_kwargs or {}))
        out = model(xt, t, **kw)
        err = (out.float() - self.target(x0, noise, t).float()).pow(2)
        loss = (err if weight is None else err * weight).flatten(1).mean(1)
        if snr_gamma:
            a = self.alphas_cumprod.to(x0.device)[t]
            snr = a / (1 - a)
            # an eps / x0 / v loss equals the x0 loss times SNR / 1 / (SNR + 1)
            per_x0 = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[self.prediction]
            loss = loss * (snr.clamp(max=snr_gamma) / per_x0).float()
        return loss
