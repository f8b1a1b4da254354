"""
Classifier-free guidance (Ho & Salimans 2022) as wrappers around a denoiser, outside the diffusion math.

Single condition:  e = e(∅) + s * (e(c) - e(∅));  s = 1 means no guidance (the conditional prediction).
Two conditions (InstructPix2Pix, Brooks et al. 2023, image c_I and text c_T):
    e = e(∅, ∅) + s_I * (e(c_I, ∅) - e(∅, ∅)) + s_T * (e(c_I, c_T) - e(c_I, ∅))
computed as one batched forward of 3. s_I = s_T = 1 gives the fully conditioned prediction.
"""

import torch


def cfg(model, scale, cond_kwargs, uncond_kwargs):
    """A denoiser (x, t) -> uncond + scale * (cond - uncond), as one batched forward of 2.
    cond_kwargs / uncond_kwargs are the model's keyword arguments for each branch; tensors are
    concatenated along the batch, other values must be equal."""
    def guided(x, t):
        if scale == 1:
            return model(x, t, **cond_kwargs)
        kw = _cat([cond_kwargs, uncond_kwargs])
        cond, uncond = model(torch.cat([x, x]), torch.cat([t, t]), **kw).chunk(2)
        return uncond + scale * (cond - uncond)
    return guided


def _cat(kwargs_list):
    keys = [sorted(kw) for kw in kwargs_list]
    if any(k != keys[0] for k in keys):  # a key missing in one branch would silently apply to all
        raise ValueError(f"every branch needs the same keyword arguments, got {keys}")
    out = {}
    for k in kwargs_list[0]:
        vals = [kw[k] for kw in kwargs_list]
        out[k] = torch.cat(vals) if isinstance(vals[0], torch.Tensor) else vals[0]
    return out
