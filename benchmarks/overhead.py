"""Recording overhead and precision/layout speed, measured side by side in one process.

(a) a bare, well-written training loop (same model, in-memory data, augmentation, batch size);
(b) the same loop with memscan's per-sample recording (``train_step`` + ``Recorder``);
(c) optionally ``memscan.run`` end to end on the same images (decode cache already built).
(a), (b) and a second copy of (a) (the noise floor: two identical loops) alternate epoch by epoch in
ABBA order so machine noise hits all alike; ratios are reported, also per epoch-pair.

    python benchmarks/overhead.py --per-class 500 --epochs 3 [--model memscan-cnn] [--run]
    python benchmarks/overhead.py --variants            # fp32 / channels_last / bf16 train-step speed
"""
import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from memscan.config import RunConfig
from memscan.data import load_index
from memscan.data.loader import batch_slices, epoch_generator, epoch_order
from memscan.models import create_model
from memscan.prepare import prepare
from memscan.signals import Recorder
from memscan.stem_grad import StemGrad
from memscan.train import make_optimizer, train_step

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "train.parquet"


def dataset(per_class: int, tmp: Path):
    """The first ``per_class`` CIFAR-10 training images of each class (../shared/data), or random 32 px
    images in 10 classes where that file is absent (a lent GPU machine may lack it)."""
    if DATA.exists():
        t = load_index(DATA)
        keep = np.concatenate([np.flatnonzero(t.labels == c)[:per_class] for c in range(t.num_classes)])
        return t.subset(np.sort(keep))
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    rng = np.random.default_rng(0)
    png = []
    for _ in range(per_class * 10):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
        png.append(buf.getvalue())
    manifest = tmp / "random.parquet"
    pq.write_table(pa.table({"path": [f"{i:06d}.png" for i in range(len(png))],
                             "label": rng.integers(0, 10, len(png)), "image": pa.array(png, pa.binary())}), manifest)
    return load_index(manifest)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


STEMS = {}   # model id -> StemGrad, as ``fit`` keeps it: found and checked on the first step


def epoch(model, src, opt, cfg, ep, *, record, dtype=torch.float32, recorder=None, stem_grad=True):
    model.train()
    gen = epoch_generator(cfg.seed, ep, 1)
    dev = src.device
    # fp16 needs loss scaling; the recorded input gradient is unscaled by train_step
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
    sync(dev)
    t = time.perf_counter()
    for idx in batch_slices(epoch_order(len(src), cfg.seed, ep), cfg.batch_size):
        x, y = src.batch(idx, augment=cfg.augment, generator=gen)
        if record:
            if stem_grad and id(model) not in STEMS:
                STEMS[id(model)] = StemGrad.find(model, x)
            stem = STEMS.get(id(model))
            _, signals = train_step(model, x, y, opt, scaler, dtype=dtype, stem=stem)
            if stem is not None and stem.rejected:
                stem.detach()
                STEMS[id(model)] = None
            recorder.record_step(idx, signals)
        else:
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    if record:
        recorder.end_epoch()
        if STEMS.get(id(model)) is not None:
            STEMS[id(model)].detach()
    sync(dev)
    return len(src) / (time.perf_counter() - t)


def overhead(a):
    with tempfile.TemporaryDirectory() as tmp:
        return _overhead(a, dataset(a.per_class, Path(tmp)))


def _overhead(a, table):
    cfg = RunConfig(model=a.model, batch_size=a.batch_size, device=a.device, precision=a.precision,
                    channels_last=True, stem=a.stem)
    prep = prepare(table, cfg)   # decode cache, normalisation, device, precision: as memscan run does
    device, dtype, src, table = prep.device, prep.dtype, prep.source, prep.table
    # "control" is a second bare loop: its difference from "bare" is the measurement's noise floor
    res = {"bare": [], "recording": [], "control": []}
    models = {}
    for kind in res:
        torch.manual_seed(0)
        m = prep.fresh_model()
        models[kind] = (m, make_optimizer(m, cfg))
    rec = Recorder(len(src), device=device)
    pairs, controls = [], []
    for ep in range(a.epochs + 1):  # epoch 0 is warm-up, not counted
        # ABBA order: a drift of the machine's speed within a pair hits (a) and (b) alike
        order = list(models.items()) if ep % 2 == 0 else list(models.items())[::-1]
        pair = {}
        for kind, (m, opt) in order:
            if kind == "recording":
                rec.start_epoch(ep)
            pair[kind] = epoch(m, src, opt, cfg, ep, record=kind == "recording", recorder=rec, dtype=dtype,
                               stem_grad=not a.no_stem)
            if ep:
                res[kind].append(pair[kind])
        if ep:
            pairs.append(pair["bare"] / pair["recording"] - 1)
            controls.append(pair["bare"] / pair["control"] - 1)
    out = {k: statistics.median(v) for k, v in res.items()}
    out["recording_overhead"] = out["bare"] / out["recording"] - 1
    # the same, from each epoch's side-by-side pair: median and the spread across pairs
    out["recording_overhead_paired_median"] = statistics.median(pairs)
    out["recording_overhead_pairs"] = [round(p, 4) for p in pairs]
    out["control_difference_paired_median"] = statistics.median(controls)
    out["control_differences"] = [round(p, 4) for p in controls]
    if a.run:
        from memscan.pipeline import run
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "data").mkdir()
            manifest = Path(tmp) / "data" / "subset.parquet"
            import pyarrow as pa
            import pyarrow.parquet as pq
            pq.write_table(pa.table({"path": table.paths, "label": table.labels,
                                     "image": pa.array(table.image_bytes, pa.binary())}), manifest)
            rcfg = RunConfig(model=a.model, batch_size=a.batch_size, stop="none", max_epochs=a.epochs + 1,
                             device=a.device, precision=a.precision, stem=a.stem)
            run(manifest, rcfg.replace(max_epochs=1), out=Path(tmp) / "warm")     # builds the decode cache
            r = run(manifest, rcfg, out=Path(tmp) / "r")
            t = r.summary["timings"]
            out["memscan_run_total_s"] = t["total_s"]
            # per-epoch speed inside memscan.run, first epoch excluded as for (a) and (b)
            secs = pq.read_table(Path(tmp) / "r" / "epochs.parquet").column("seconds").to_pylist()
            out["memscan_run_epoch_ips"] = len(table) / statistics.median(secs[1:])
            out["run_epoch_vs_bare"] = out["memscan_run_epoch_ips"] / out["bare"]
            out["memscan_run_train_ips"] = len(table) * (a.epochs + 1) / t["train_s"]
            out["memscan_run_end_to_end_ips"] = len(table) * (a.epochs + 1) / t["total_s"]
            out["run_vs_bare"] = out["memscan_run_end_to_end_ips"] / out["bare"]
            # (c') the same run with the decoded images memory-mapped from disk (--cache-memory 0)
            run(manifest, rcfg.replace(max_epochs=1, cache_memory=0), out=Path(tmp) / "warm2")
            r2 = run(manifest, rcfg.replace(cache_memory=0), out=Path(tmp) / "r2")
            t2 = r2.summary["timings"]
            out["memscan_run_mapped_train_ips"] = len(table) * (a.epochs + 1) / t2["train_s"]
            out["mapped_vs_ram_train"] = out["memscan_run_mapped_train_ips"] / out["memscan_run_train_ips"]
        # (a) again, right after (c): (c) cannot alternate with (a) epoch by epoch, so it is compared with
        # the mean of the bare loop measured before and after it (this VM drifts by tens of % over minutes)
        m, opt = models["bare"]
        after = [epoch(m, src, opt, cfg, a.epochs + 1 + ep, record=False, dtype=dtype) for ep in range(a.epochs)]
        out["bare_after"] = statistics.median(after)
        ref = (out["bare"] + out["bare_after"]) / 2
        out["run_epoch_vs_bare_bracketed"] = out["memscan_run_epoch_ips"] / ref
        out["run_vs_bare_bracketed"] = out["memscan_run_end_to_end_ips"] / ref
    return out


def variants(a):
    torch.manual_seed(0)
    x = torch.randn(a.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (a.batch_size,))
    out = {}
    combos = [("fp32", False, torch.float32), ("channels_last", True, torch.float32),
              ("bf16", False, torch.bfloat16), ("channels_last+bf16", True, torch.bfloat16)]
    if a.compile:
        combos.append(("channels_last+compile", True, torch.float32))
    for name, cl, dtype in combos:
        for record in (False, True):
            m = create_model(a.model, 10)
            xx = x
            if cl:
                m, xx = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
            if "compile" in name:
                m = torch.compile(m)
            opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
            scaler = torch.amp.GradScaler("cpu", enabled=False)
            times = []
            for i in range(a.steps + (4 if "compile" in name else 2)):
                t = time.perf_counter()
                if record:
                    train_step(m, xx, y, opt, scaler, dtype=dtype)
                else:
                    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                        loss = F.cross_entropy(m(xx).float(), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                if i >= (4 if "compile" in name else 2):
                    times.append(time.perf_counter() - t)
            out[f"{name}{' +recording' if record else ''}"] = a.batch_size / statistics.median(times)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--model", default="memscan-cnn")
    ap.add_argument("--stem", default="auto", choices=["auto", "whiten", "learned"],
                    help="memscan's CNNs: the whitened, fixed first layer (auto: as memscan run) or a learned one")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--run", action="store_true", help="also time memscan.run end to end")
    ap.add_argument("--variants", action="store_true", help="precision/layout train-step speed instead")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--compile", action="store_true", help="with --variants: add torch.compile")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto (overhead mode)")
    ap.add_argument("--precision", default="fp32", help="fp32 | bf16 | fp16 | auto (overhead mode)")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--no-stem", action="store_true",
                    help="(b) takes the input gradient from autograd even where a strided stem allows the faster path")
    a = ap.parse_args()
    res = variants(a) if a.variants else overhead(a)
    res["machine"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if torch.cuda.is_available() and a.device != "cpu":
        res["gpu"] = torch.cuda.get_device_name()
    res["device"], res["precision"] = a.device, a.precision
    res["stem_path"] = not a.no_stem
    if not a.variants:   # --variants builds bare models (create_model): no whitened stem there
        res["stem"] = a.stem
    text = json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}, indent=1)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
