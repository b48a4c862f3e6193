"""Does keeping the likeliest label errors out of the weight update help the default run rank them? (issue 13)

On human-like noise the model learns the flips as it fits (BENCHMARKS.md §19-§20): a flipped image's own label
pulls the model towards it, its margin rises, and it ranks like a hard clean image. The noisy-label literature's
small-loss trick (Co-teaching, Han et al. 2018; O2U-Net, Huang et al. 2019) trains on the samples with the
smallest loss only, so the model does not learn the flips. Here it serves detection, not robust training:
every sample is still seen in every step and its loss, margin and prediction recorded as before; only the
weight update leaves out the fraction ``q`` of samples that rank most suspicious so far.

The variant is made by patching ``memscan.train`` (its batch indices and its training loss): the default
pipeline runs otherwise unchanged, on the noisy manifests of ``research/noisy_manifest.py``, and is scored as
``memscan eval-noise --from-run`` scores it. Variants (``--variant NAME:q=Q,ramp=R,stat=S,start=E``):

  q       fraction left out of the update once the ramp is over
  ramp    epochs over which the fraction rises linearly from 0 (Co-teaching's schedule)
  start   first epoch that leaves anything out (the earlier ones teach the easy patterns)
  stat    which samples: ``loss`` (mean training loss over the epochs so far), ``late`` (the shipped mislabel
          statistic's ingredients over the epochs so far: percentile of -margin plus percentile of loss),
          ``neg`` (only samples whose mean margin so far is negative, at most q of them)

    python research/small_loss.py bench-out/s19/data bench-out/s19/sl inst20-500pc,pair20-500pc \\
        --variant base:q=0 --variant q10:q=0.1,ramp=3 --json research/results/small-loss-machineB.json
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import memscan.train as train_mod
from memscan.config import RunConfig
from memscan.signals import Recorder

from recipe_variants import run_grid, run_variant

STATE = {"idx": None, "w": None, "spec": None, "loss_sum": None, "margin_sum": None, "epochs": 0}
_real_slices = train_mod.batch_slices
_real_end_epoch = Recorder.end_epoch


def _slices(*a, **k):
    for idx in _real_slices(*a, **k):
        STATE["idx"] = idx
        yield idx


class _WeightedF:
    """``torch.nn.functional`` with the training step's mean loss replaced by a weighted mean."""

    def __getattr__(self, name):
        return getattr(F, name)

    @staticmethod
    def cross_entropy(logits, y, *a, reduction="mean", **k):
        w = STATE["w"]
        if reduction != "mean" or w is None or STATE["idx"] is None:
            return F.cross_entropy(logits, y, *a, reduction=reduction, **k)
        wi = w[torch.as_tensor(STATE["idx"])].to(logits.device)
        per = F.cross_entropy(logits, y, *a, reduction="none", **k)
        return (wi * per).sum() / wi.sum().clamp_min(1.0)


def _pct(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, kind="stable"), kind="stable") / max(len(x) - 1, 1)


def _end_epoch(self):
    rec = _real_end_epoch(self)
    spec = STATE["spec"]
    if spec is None or spec["q"] <= 0:
        return rec
    n = len(rec.loss)
    if STATE["loss_sum"] is None:
        STATE["loss_sum"], STATE["margin_sum"], STATE["epochs"] = np.zeros(n), np.zeros(n), 0
    STATE["loss_sum"] += np.nan_to_num(rec.loss.astype(np.float64))
    STATE["margin_sum"] += np.nan_to_num(rec.margin.astype(np.float64))
    STATE["epochs"] += 1
    nxt = rec.epoch + 1          # the weights below serve the next epoch (the annealing one too)
    frac = 0.0 if nxt < spec["start"] else spec["q"] * min(1.0, (nxt - spec["start"] + 1) / max(spec["ramp"], 1))
    k = int(round(frac * n))
    w = np.ones(n, np.float32)
    if k:
        loss, margin = STATE["loss_sum"], STATE["margin_sum"]
        stat = {"loss": loss, "late": _pct(loss) + _pct(-margin), "neg": -margin}[spec["stat"]]
        out = np.argsort(-stat, kind="stable")[:k]
        if spec["stat"] == "neg":
            out = out[margin[out] < 0]
        w[out] = 0.0
    STATE["w"] = torch.from_numpy(w)
    return rec


def install():
    train_mod.batch_slices = _slices
    train_mod.F = _WeightedF()
    Recorder.end_epoch = _end_epoch


def parse(text: str) -> tuple[str, dict]:
    name, _, spec = text.partition(":")
    out = {"q": 0.0, "ramp": 3, "start": 1, "stat": "loss"}
    for kv in filter(None, spec.split(",")):
        key, _, v = kv.partition("=")
        out[key] = v if key == "stat" else float(v) if key == "q" else int(v)
    return name, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("configs")
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    install()

    def one(c, variant):
        name, spec = variant
        STATE.update(idx=None, w=None, spec=spec, loss_sum=None, margin_sum=None, epochs=0)
        return {"config": c, "variant": name, "spec": spec} | run_variant(a.data, c, a.out / f"{c}-{name}",
                                                                          RunConfig())
    run_grid(a.configs.split(","), [parse(v) for v in a.variant], one, a.json)


if __name__ == "__main__":
    main()
