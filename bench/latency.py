"""MLPerf-Tiny-style single-stream latency: warm-up runs discarded, then N batch-1 inferences.

    stats = measure(lambda i: runtime.predict(images[i % len(images)]), warmup=20, runs=200)
    stats -> {"median_ms", "min_ms", "max_ms", "p90_ms", "runs", "samples_ms"}

Inputs cycle through real test images, so a gated model's latency distribution reflects the paths
its gates take.
"""
import statistics
import time

from tqdm import tqdm


def measure(run_one, warmup: int, runs: int, desc: str = "", progress: bool = True) -> dict:
    for i in range(warmup):
        run_one(i)
    samples = []
    for i in tqdm(range(runs), desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        t0 = time.perf_counter()
        run_one(i)
        samples.append((time.perf_counter() - t0) * 1e3)
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(samples),
        "min_ms": ordered[0],
        "max_ms": ordered[-1],
        "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "runs": runs,
        "warmup": warmup,
        "samples_ms": samples,
    }
