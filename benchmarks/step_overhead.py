"""Where does the recording cost go? One training step, four ways, interleaved (median of 15 x 20 steps):

bare step; the same with the input requiring grad (the input gradient CSG needs); memscan's ``train_step``;
``train_step`` + ``Recorder.record``. Then the input gradient computed outside autograd from a hook on the
stem conv's output (conv-transpose, or unfold/fold), checked against autograd's and timed.

    python benchmarks/step_overhead.py [--batch-size 64] [--precision bf16|fp32]
    python benchmarks/step_overhead.py --paths --model resnet18 [--size 32]   # autograd vs stem path
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from memscan.models import create_model
from memscan.signals import Recorder
from memscan.stem_grad import StemGrad
from memscan.train import train_step


def timed(fns, rounds=15, steps=20):
    for f in fns.values():
        for _ in range(10):
            f()
    res = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            for _ in range(steps):
                f()
            res[k].append((time.perf_counter() - t) / steps)
    base = statistics.median(res["bare"])
    return {k: {"ms": round(statistics.median(v) * 1e3, 3), "vs_bare": round(statistics.median(v) / base - 1, 4)}
            for k, v in res.items()}


def backward(model, opt, x, y, dtype):
    """The bare loop's forward and backward: autocast, fp32 loss, fresh gradients."""
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss = F.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()


def paths(a):
    """Bare step vs memscan's recording step with the input gradient from autograd and from the stem
    conv's output gradient (``stem_grad``). Each variant trains its own copy of the model; the three
    alternate step by step (ABC, CBA, ...) over 8 rotating batches, and the overhead is the median
    over steps of each step's time against the bare step next to it: drift cancels."""
    dt = torch.bfloat16 if a.precision == "bf16" else torch.float32
    b = a.batch_size
    xs = [torch.randn(b, 3, a.size, a.size).contiguous(memory_format=torch.channels_last) for _ in range(8)]
    y = torch.randint(0, 10, (b,))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    rec = Recorder(b * 8)
    rec.start_epoch(0)
    idx = torch.arange(b)

    def copy():
        torch.manual_seed(0)
        m = create_model(a.model, 10).to(memory_format=torch.channels_last)
        return m, torch.optim.SGD(m.parameters(), lr=0.001, momentum=0.9)
    (mb, ob), (ma, oa), (ms, os_) = copy(), copy(), copy()
    stem = StemGrad.find(ms, xs[0])

    def bare(x):
        backward(mb, ob, x, y, dt)
        ob.step()

    fns = {"bare": bare,
           "record, autograd input grad": lambda x: rec.record_step(idx, train_step(ma, x, y, oa, scaler, dtype=dt)[1])}
    if stem is not None:
        train_step(ms, xs[0], y, os_, scaler, dtype=dt, stem=stem)     # the checking step
        assert stem.verified
        fns["record, stem path"] = lambda x: rec.record_step(idx, train_step(ms, x, y, os_, scaler, dtype=dt,
                                                                               stem=stem)[1])
    res = {k: [] for k in fns}
    for i in range(a.warmup + a.rounds):
        for k, f in (list(fns.items()) if i % 2 == 0 else list(fns.items())[::-1]):
            t = time.perf_counter()
            f(xs[i % 8])
            if i >= a.warmup:
                res[k].append(time.perf_counter() - t)
    out = {k: {"ms": round(statistics.median(v) * 1e3, 3),
               "vs_bare_paired_median": round(statistics.median(t / u - 1 for t, u in zip(v, res["bare"])), 4)}
           for k, v in res.items()}
    print(json.dumps({"model": a.model, "size": a.size, "batch_size": b, "precision": a.precision,
                      "stem": None if stem is None else f"{stem.conv.kernel_size} stride {stem.conv.stride}",
                      "steps_each": a.rounds, "steps": out}, indent=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--paths", action="store_true", help="bare vs recording via autograd vs via the stem")
    ap.add_argument("--model", default="memscan-cnn", help="with --paths")
    ap.add_argument("--size", type=int, default=32, help="with --paths: image size, px")
    ap.add_argument("--rounds", type=int, default=400, help="with --paths: timed steps of each variant")
    ap.add_argument("--warmup", type=int, default=20, help="with --paths: untimed steps of each variant first")
    a = ap.parse_args()
    if a.paths:
        return paths(a)
    torch.manual_seed(0)
    dt = torch.bfloat16 if a.precision == "bf16" else torch.float32
    b = a.batch_size
    x = torch.randn(b, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (b,))
    m = create_model("memscan-cnn", 10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    rec = Recorder(b)
    rec.start_epoch(0)
    idx = torch.arange(b)
    stem, store = m.features[0], {}

    def step(inp):
        backward(m, opt, inp, y, dt)

    def bare():
        step(x)
        opt.step()

    def xgrad():
        step(x.detach().requires_grad_(True))
        opt.step()

    def capture(mod, inp, out):
        out.register_hook(lambda g: store.__setitem__("g", g))

    def hooked_grad():
        g, w = store["g"].float(), stem.weight.float()
        if store["kind"] == "convT":
            return F.conv_transpose2d(g, w, padding=1)
        return F.fold(torch.matmul(w.flatten(1).t(), g.flatten(2)), tuple(x.shape[-2:]), 3, padding=1)

    def hook(kind):
        def f():
            store["kind"] = kind
            h = stem.register_forward_hook(capture)
            step(x)
            h.remove()
            (hooked_grad().flatten(1) ** 2).sum(1)
            opt.step()
        return f

    xx = x.detach().requires_grad_(True)
    step(xx)
    errors = {}
    for kind in ("convT", "fold"):
        store["kind"] = kind
        h = stem.register_forward_hook(capture)
        step(x)
        h.remove()
        errors[kind] = float((hooked_grad() - xx.grad).abs().max() / xx.grad.abs().max())
    fns = {"bare": bare, "input requires grad": xgrad,
           "train_step": lambda: train_step(m, x, y, opt, scaler, dtype=dt),
           "train_step + record": lambda: rec.record_step(idx, train_step(m, x, y, opt, scaler, dtype=dt)[1]),
           "hook + conv_transpose2d": hook("convT"), "hook + unfold/fold": hook("fold")}
    print({"batch_size": b, "precision": a.precision, "hook_max_rel_error": errors, "steps": timed(fns)})


if __name__ == "__main__":
    main()
