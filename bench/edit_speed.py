"""Wall time of the main command, start-up and model loading included:
`python edit.py examples/red_star.png "in neon lights"` with the defaults, --runs times; the median, and
its ratio to a bare `python -c "import torch"` measured in the same run (the floor any torch CLI pays).

    python bench/edit_speed.py [--runs 7] [--method instruct]      # prints JSON (goal: median <= 5 s on 2 CPU cores)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--runs", type=int, default=7, help="timed runs of each command (default: %(default)s)")
p.add_argument("--method", default="instruct", help="edit.py --method to time (default: %(default)s)")
p.add_argument("--text", default="in neon lights", help="the instruction (default: %(default)s)")
a = p.parse_args()


def wall(cmd, cwd):
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t


with tempfile.TemporaryDirectory() as d:
    cmd = [sys.executable, os.path.join(ROOT, "edit.py"), os.path.join(ROOT, "examples", "red_star.png"), a.text,
           "--method", a.method, "--seed", "0", "-o", os.path.join(d, "out.png")]
    if a.method == "ref":
        cmd += ["--ref", os.path.join(ROOT, "examples", "ref_before.png"), os.path.join(ROOT, "examples", "ref_after.png")]
    wall(cmd, d)  # warm the file cache
    edit = [wall(cmd, d) for _ in range(a.runs)]
    torch_only = [wall([sys.executable, "-c", "import torch"], d) for _ in range(a.runs)]
m, t = statistics.median(edit), statistics.median(torch_only)
print(json.dumps({"command": " ".join(["python edit.py examples/red_star.png", repr(a.text), "--method", a.method]),
                  "runs": a.runs, "median_s": round(m, 2), "min_s": round(min(edit), 2), "max_s": round(max(edit), 2),
                  "import_torch_median_s": round(t, 2), "ratio_to_import_torch": round(m / t, 2),
                  "cpu_threads": os.cpu_count()}, indent=1))
