"""What does recording cost per training step over a fixed (whitened) stem, and how much of it was the copy of
the stem's output? (issue 2's overhead under the session-16 default; BENCHMARKS.md §24)

One process, one thread, synthetic 32 px batches of 64, bf16 autocast where the CPU has it: a bare step, and
memscan's ``train_step`` through the stem path with the stem's output passed on as the autograd leaf itself
(``memscan_fixed``, as a whitened stem is) and as a copy (the path a frozen stem under ``--freeze`` keeps),
interleaved in ABBA order, 40 rounds of 10 steps each; medians.

    env OMP_NUM_THREADS=1 taskset -c 0 python research/fixed_stem_step.py --json research/results/fixed-stem-step-machineC.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from memscan.models import create_model
from memscan.stem_grad import StemGrad
from memscan.train import cpu_has_fast_bf16, train_step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.manual_seed(0)
    dtype = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    x = torch.randn(64, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,))
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def model(fixed_flag: bool):
        m = create_model("memscan-cnn", 10).to(memory_format=torch.channels_last)
        m.features[0].weight.requires_grad_(False)
        if fixed_flag:
            m.features[0].memscan_fixed = True
        return m, torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01, momentum=0.9, nesterov=True)

    def bare(m, opt):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = F.cross_entropy(m(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    (mb, ob), (m1, o1), (m0, o0) = model(True), model(True), model(False)
    s1, s0 = StemGrad.find(m1, x), StemGrad.find(m0, x)
    steps = {"bare": lambda: bare(mb, ob),
             "recording, leaf passed on": lambda: train_step(m1, x, y, o1, scaler, dtype=dtype, stem=s1),
             "recording, leaf copied": lambda: train_step(m0, x, y, o0, scaler, dtype=dtype, stem=s0)}
    for f in steps.values():
        for _ in range(5):
            f()
    assert s1.verified and s0.verified
    times = {k: [] for k in steps}
    for r in range(a.rounds):
        for k in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            t = time.perf_counter()
            for _ in range(10):
                steps[k]()
            times[k].append((time.perf_counter() - t) / 10)
    base = statistics.median(times["bare"])
    res = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
           "dtype": str(dtype), "ms_per_step": {k: round(statistics.median(v) * 1e3, 2) for k, v in times.items()},
           "over_bare": {k: round(statistics.median(v) / base - 1, 4) for k, v in times.items()}}
    print(json.dumps(res, indent=1))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
