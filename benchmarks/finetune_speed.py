"""Images per second of full fine-tuning against the frozen-body mode (``--freeze``), side by side in one
process, at a real photo's size (issue 15, item 2). Speed does not depend on the pixels or the weights, so
random images and a randomly initialised timm model stand in for a prior.

The training steps alternate round by round (ABCD ABCD ...) so machine noise hits all alike:
  full          memscan's step, every layer learning, input gradient recorded (stem path where verified)
  frozen        memscan's step with ``--freeze``: the head learns, the input gradient through the whole
                frozen network (no weight gradients for the body; stem path), the body's BatchNorm folded
                into its convs (``frozen_body``)
  frozen-unfolded  the same with the body's BatchNorm layers kept (eval mode): what folding saves
  frozen-every-K  ``--freeze --input-grad-every K``: one step in K takes the whole batch's input gradient
                (memscan groups those samples into whole batches), the others run the frozen body forward only
  bare-full     a plain training step without any input gradient (what fine-tuning costs without memscan)
  bare-frozen   a plain linear probe: body forward without autograd, head step (the floor of head-only training)

    python benchmarks/finetune_speed.py --model resnet18 --image-size 224 --batch-size 32 --rounds 5 --every 2,3,4 \
        --out benchmarks/results/finetune-speed-resnet18-224-machineA.json
"""
import argparse
import copy
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from memscan.config import RunConfig
from memscan.frozen_body import fold_frozen_batchnorm
from memscan.models import create_model, freeze_body, train_mode
from memscan.stem_grad import StemGrad
from memscan.train import make_optimizer, train_step


def memscan_step(model, opt, stem, every=1):
    count = [0]

    def step(x, y):
        # memscan groups the samples whose gradient an epoch takes into whole batches (train.group_recorded):
        # one step in K records the whole batch, the others run the frozen body forward only
        record = None if every == 1 else torch.full((len(y),), count[0] % every == 0)
        count[0] += 1
        train_step(model, x, y, opt, torch.amp.GradScaler("cpu", enabled=False), stem=stem, record=record)
        if stem is not None:
            stem.detach()
    return step


def bare_full(model, opt):
    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def bare_frozen(model, opt, head):
    def step(x, y):
        with torch.no_grad():
            f = model.forward_head(model.forward_features(x), pre_logits=True)
        loss = F.cross_entropy(head(f), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def build(a):
    torch.manual_seed(0)
    cfg = RunConfig(model=a.model, lr=0.001)
    base = create_model(a.model, a.classes).to(memory_format=torch.channels_last)
    x = torch.randn(a.batch_size, 3, a.image_size, a.image_size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, a.classes, (a.batch_size,))
    steps = {}
    full = copy.deepcopy(base)
    full.train()
    stem = StemGrad.find(full, x)
    steps["full"] = memscan_step(full, make_optimizer(full, cfg), stem)
    frozen = copy.deepcopy(base)
    freeze_body(frozen)
    train_mode(frozen)
    # memscan trains a frozen body through a copy with its BatchNorm folded into the convs (frozen_body)
    net = fold_frozen_batchnorm(frozen, x)
    steps["frozen"] = memscan_step(net, make_optimizer(frozen, cfg.replace(freeze=True)), StemGrad.find(net, x))
    unfolded = copy.deepcopy(frozen)
    train_mode(unfolded)
    steps["frozen-unfolded"] = memscan_step(unfolded, make_optimizer(unfolded, cfg.replace(freeze=True)),
                                            StemGrad.find(unfolded, x))
    for k in a.every:
        m = copy.deepcopy(frozen)
        train_mode(m)
        net = fold_frozen_batchnorm(m, x)
        steps[f"frozen-every-{k}"] = memscan_step(net, make_optimizer(m, cfg.replace(freeze=True)),
                                                  StemGrad.find(net, x), k)
    bare = copy.deepcopy(base)
    bare.train()
    steps["bare-full"] = bare_full(bare, make_optimizer(bare, cfg))
    probe = copy.deepcopy(base)
    probe.eval()
    head = probe.get_classifier()
    steps["bare-frozen"] = bare_frozen(probe, torch.optim.SGD(head.parameters(), lr=0.001, momentum=0.9), head)
    return steps, x, y, stem


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=3, help="steps per method per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--every", type=lambda v: [int(k) for k in v.split(",") if k], default=[2, 3, 4],
                    help="--input-grad-every values to time with --freeze (comma-separated; empty: none)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    steps, x, y, stem = build(a)
    for fn in steps.values():   # warm-up: oneDNN primitives, the stem path's check against autograd
        fn(x, y)
    rates = {k: [] for k in steps}
    for _ in range(a.rounds):
        for name, fn in steps.items():
            # a round of --input-grad-every K holds K steps: exactly one of them records
            n = int(name.rsplit("-", 1)[1]) if name.startswith("frozen-every-") else a.steps
            t = time.perf_counter()
            for _ in range(n):
                fn(x, y)
            rates[name].append(n * a.batch_size / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in rates.items()}
    res = {"model": a.model, "image_size": a.image_size, "batch_size": a.batch_size,
           "stem_path_verified": bool(stem is not None and stem.verified),
           "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                      f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}",
           "date": str(date.today()), "images_per_s_median": {k: round(v, 2) for k, v in med.items()},
           "images_per_s_rounds": {k: [round(r, 2) for r in v] for k, v in rates.items()},
           "frozen_vs_full": round(med["frozen"] / med["full"], 2),
           "frozen_unfolded_vs_full": round(med["frozen-unfolded"] / med["full"], 2),
           **{f"frozen_every_{k}_vs_full": round(med[f"frozen-every-{k}"] / med["full"], 2) for k in a.every},
           "full_recording_overhead": round(med["bare-full"] / med["full"], 3),
           "frozen_vs_bare_frozen": round(med["bare-frozen"] / med["frozen"], 2)}
    print(json.dumps(res, indent=1))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
