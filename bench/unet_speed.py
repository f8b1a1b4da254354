"""Speed of minedit's UNet against diffusers' UNet2DModel configured with the same channels, blocks and
attention levels, timed interleaved as ratios of medians (> 1: minedit is faster); and the FLOP/s
minedit's UNet reaches, against a large fp32 matmul on the same machine.

Each run is a fresh process, and the figures are the median over --runs of them: on a 2-core VM one
process's ratio moves by up to 8% from the next one's (where its tensors land in memory, it seems),
far more than the interleaved rounds within a process move it.

    python bench/unet_speed.py [--channels 48] [--batch 16] [--runs 5]     # prints JSON
"""
import argparse
import json
import statistics
import subprocess
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from minedit.unet import UNet, UNetConfig
from timing import interleaved_medians

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--channels", type=int, default=48, help="base channels of both UNets (default: %(default)s)")
p.add_argument("--batch", type=int, default=16, help="32 px images per call (default: %(default)s)")
p.add_argument("--reps", type=int, default=7, help="interleaved rounds per process (default: %(default)s)")
p.add_argument("--runs", type=int, default=5, help="processes to time in, each from scratch (default: %(default)s)")
a = p.parse_args()
if a.runs > 1:  # run this script --runs times with --runs 1 and report medians and every run's figure
    cmd = [sys.executable, __file__, *sys.argv[1:], "--runs", "1"]
    runs = [json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout) for _ in range(a.runs)]
    result = {k: runs[0][k] for k in ("params_minedit_M", "params_diffusers_M", "batch")}
    for k in ("forward", "train_step"):
        result[k] = {f: statistics.median(r[k][f] for r in runs) for f in ("minedit_s", "diffusers_s", "ratio")}
        result[k]["ratio_each_run"] = [r[k]["ratio"] for r in runs]
    for k in ("minedit_forward_gflop_per_image", "minedit_forward_gflop_s", "matmul_2048_fp32_gflop_s"):
        result[k] = statistics.median(r[k] for r in runs)
    result["runs"] = a.runs
    print(json.dumps(result, indent=1))
    sys.exit()
torch.set_num_threads(2)
torch.manual_seed(0)
from diffusers import UNet2DModel  # noqa: E402

C = a.channels
ours = UNet(UNetConfig(model_channels=C, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,), head_channels=C))
ref = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(C, 2 * C, 2 * C), layers_per_block=1,
                  down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), attention_head_dim=C, norm_num_groups=16,
                  resnet_time_scale_shift="scale_shift")
x, t = torch.randn(a.batch, 3, 32, 32), torch.randint(0, 1000, (a.batch,))


def no_grad(fn):
    def run():
        with torch.no_grad():
            return fn()
    return run


fns = {
    "forward": (no_grad(lambda: ours(x, t)), no_grad(lambda: ref(x, t).sample)),
    "train_step": (lambda: ours(x, t).square().mean().backward(), lambda: ref(x, t).sample.square().mean().backward()),
}
result = {"params_minedit_M": round(sum(p.numel() for p in ours.parameters()) / 1e6, 3),
          "params_diffusers_M": round(sum(p.numel() for p in ref.parameters()) / 1e6, 3), "batch": a.batch}
for name, (fa, fb) in fns.items():
    m = interleaved_medians({"minedit": fa, "diffusers": fb}, a.reps)
    result[name] = {"minedit_s": round(m["minedit"], 4), "diffusers_s": round(m["diffusers"], 4),
                    "ratio": round(m["diffusers"] / m["minedit"], 3)}
with FlopCounterMode(display=False) as fc, torch.no_grad():
    ours(x, t)
flops = fc.get_total_flops()
m = torch.randn(2048, 2048)
mm = interleaved_medians({"matmul": lambda: m @ m}, 5)["matmul"]
result["minedit_forward_gflop_per_image"] = round(flops / a.batch / 1e9, 3)
result["minedit_forward_gflop_s"] = round(flops / result["forward"]["minedit_s"] / 1e9, 1)
result["matmul_2048_fp32_gflop_s"] = round(2 * 2048 ** 3 / mm / 1e9, 1)
print(json.dumps(result, indent=1))
