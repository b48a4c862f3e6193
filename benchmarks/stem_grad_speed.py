"""The input-gradient norm of a strided stem: oneDNN's backward-data pass vs ``memscan.stem_grad``.

Kernel level, one stem conv alone (median of 5 x 20 calls each), with the relative difference of the
per-sample norms. Stems: resnet (7x7/2), EfficientNet/MobileNet (3x3/2), ConvNeXt (4x4/4), and the
stride-1 3x3 of memscan-cnn, where the phase conv is the transposed conv itself (so memscan keeps
autograd there).

    python benchmarks/stem_grad_speed.py [--batch-size 64]
"""
import argparse
import json
import time

import torch
import torch.nn as nn

from memscan.stem_grad import StemGrad


def bench(f, n=20):
    for _ in range(3):
        f()
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            f()
        ts.append((time.perf_counter() - t) / n * 1e6)
    return sorted(ts)[2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=64)
    a = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    cases = [("resnet 7x7/2, 32 px", 7, 2, 3, 64, 32, a.batch_size), ("3x3/2, 32 px", 3, 2, 1, 32, 32, a.batch_size),
             ("convnext 4x4/4, 32 px", 4, 4, 0, 96, 32, a.batch_size),
             ("resnet 7x7/2, 224 px", 7, 2, 3, 64, 224, 16), ("memscan-cnn 3x3/1, 32 px", 3, 1, 1, 16, 32, a.batch_size)]
    for name, k, s, p, cout, h, b in cases:
        for dt in (torch.bfloat16, torch.float32):
            cl = torch.channels_last
            conv = nn.Conv2d(3, cout, k, s, p, bias=False)
            x = torch.randn(b, 3, h, h).to(dt).contiguous(memory_format=cl)
            w = conv.weight.detach().to(dt).contiguous(memory_format=cl)
            ho = (h + 2 * p - k) // s + 1
            g = torch.randn(b, cout, ho, ho).to(dt).contiguous(memory_format=cl)
            args = (g, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, [True, False, False])
            ref = torch.linalg.vector_norm(torch.ops.aten.convolution_backward(*args)[0], dim=(1, 2, 3),
                                           dtype=torch.float32)
            stem = StemGrad(conv, (h, h))

            def phase():
                stem._grad = g
                return stem.norm()
            err = float(((phase() - ref) / ref).abs().max())
            t_bwd = bench(lambda: torch.ops.aten.convolution_backward(*args))
            t_phase = bench(phase)
            rows.append({"stem": name, "batch": b, "dtype": str(dt).split(".")[-1], "backward_data_us": round(t_bwd),
                         "stem_grad_us": round(t_phase), "speedup": round(t_bwd / t_phase, 2),
                         "max_rel_diff": float(f"{err:.1e}")})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
