"""The speed benches' one timing rule: time a few functions interleaved (A, B, A, B ...) in one process,
so a foreign load on the shared machine slows all of them alike, and report medians."""
import statistics
import time


def interleaved_medians(fns, reps):
    """fns: {name: zero-argument function}. Runs each once per round, `reps` rounds, in order; returns
    {name: median seconds per call}."""
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}
