"""Toy-world benchmark: rendering speed on one core, and the attribute reader's per-attribute accuracy
on held-out test renders (clean at 32 px and 64 px, and with pixel noise to show its failure modes).
Also the fraction of 20,000 exact test renders whose every attribute it reads right, overall and by
style: an editor that drew the exact targets would score this on the edit benchmark (its ceiling).

    python bench/toyworld.py        # prints JSON
"""
import argparse
import json
import time

import torch

from minedit import toyworld as tw
from minedit.reader import accuracy, load_reader, whole_scenes_right
from minedit.training import checkpoint_arg

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--reader", default=None, help="the attribute reader to measure (default: checkpoints/reader.pt)")
a = p.parse_args()
checkpoint_arg(vars(a), "reader", "reader")  # a missing, unreadable or foreign file: one line, exit 2
reader = load_reader(a.reader)
torch.set_num_threads(1)
scenes = [tw.sample_scene(0, "test", i) for i in range(5000)]
for s in scenes[:2000]:
    tw.render(s)  # warm the mask cache
rates = []
for rep in range(3):
    t = time.perf_counter()
    for s in scenes:
        tw.render(s)
    rates.append(len(scenes) / (time.perf_counter() - t))
t = time.perf_counter()
for i in range(5000):
    tw.sample_scene(7, "train", i)
sample_rate = 5000 / (time.perf_counter() - t)

torch.set_num_threads(2)
exact = [tw.sample_scene(0, "test", i) for i in range(20000)]
right = whole_scenes_right(reader, exact)
by_style = {st: [r for r, s in zip(right, exact) if s.style == st] for st in tw.STYLES}
result = {
    "render_scenes_per_s_32px_one_core": round(sorted(rates)[1]),
    "sample_scenes_per_s": round(sample_rate),
    "reader_accuracy_test_32px": {k: round(v, 4) for k, v in accuracy(reader, scenes, 32).items()},
    "reader_accuracy_test_64px": {k: round(v, 4) for k, v in accuracy(reader, scenes[:2000], 64).items()},
    "reader_accuracy_test_32px_noise_0.1": {k: round(v, 4) for k, v in accuracy(reader, scenes[:2000], 32, noise=0.1).items()},
    "reader_accuracy_test_32px_noise_0.25": {k: round(v, 4) for k, v in accuracy(reader, scenes[:2000], 32, noise=0.25).items()},
    "n_test_scenes": len(scenes),
    "reader_every_attribute_right_20000_test_32px": round(sum(right) / len(right), 4),
    "reader_every_attribute_right_by_style": {st: round(sum(v) / len(v), 4) for st, v in by_style.items() if v},
    "reader": a.reader or "checkpoints/reader.pt",
}
print(json.dumps(result, indent=1))
