"""One training step of the shipped prior's architecture (batch 128, caption token states of toy-world
length, bf16 autocast, backward and AdamW included), with PyTorch's default CPU attention kernel
(flash) against the plain math kernel that minedit/prior.py selects on CPU (prior.CPU_ATTENTION). The
two are timed interleaved in one process; the ratio of medians is the figure (> 1: math is faster).

    python bench/prior_speed.py [--repeats 5] [--steps 10]      # prints JSON
"""
import argparse
import json

import torch
from torch.nn.attention import SDPBackend

from minedit import prior as prior_module
from minedit.diffusion import GaussianDiffusion
from minedit.prior import Prior, PriorConfig
from minedit.utils import autocast
from timing import interleaved_medians

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
p.add_argument("--steps", type=int, default=10, help="training steps per round and kernel")
p.add_argument("--batch", type=int, default=128, help="captions per training step (default: %(default)s)")
p.add_argument("--tokens", type=int, default=30, help="caption token states (toy-world captions: up to about 30)")
a = p.parse_args()
torch.set_num_threads(2)
torch.manual_seed(0)

prior, diffusion = Prior(PriorConfig()), GaussianDiffusion(1000, "cosine", "x0")
opt = torch.optim.AdamW(prior.parameters(), lr=1e-4)
B, T = a.batch, a.tokens
kw = {"text_emb": torch.nn.functional.normalize(torch.randn(B, 128), dim=-1), "text_states": torch.randn(B, T, 128),
      "text_mask": torch.arange(T)[None] < torch.randint(8, T + 1, (B, 1)), "drop_text": torch.rand(B) < 0.1}
x0 = torch.randn(B, 128)


def step():
    with autocast(torch.device("cpu"), True):
        loss = diffusion.training_losses(prior, x0, model_kwargs=kw).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def steps_with(backend):
    """A function running a.steps training steps with prior.py's CPU attention kernel set to `backend`."""
    def run():
        prior_module.CPU_ATTENTION = backend
        for _ in range(a.steps):
            step()
    return run


fns = {"flash": steps_with(SDPBackend.FLASH_ATTENTION), "math": steps_with(SDPBackend.MATH)}
for fn in fns.values():
    fn()  # warm-up
m = interleaved_medians(fns, a.repeats)
flash, math_ = m["flash"] / a.steps, m["math"] / a.steps
print(json.dumps({"batch": B, "tokens": T, "parameters_M": round(sum(q.numel() for q in prior.parameters()) / 1e6, 2),
                  "flash_step_s": round(flash, 4), "math_step_s": round(math_, 4), "speedup_math_over_flash": round(flash / math_, 2),
                  "rounds": a.repeats, "steps_per_round": a.steps}, indent=1))
