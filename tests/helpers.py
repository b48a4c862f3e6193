"""Small datasets built in tests (no downloads)."""
from pathlib import Path

import numpy as np
from PIL import Image


def digits_folder(root: Path, per_class: int = 30, classes: int = 4, flip_every: int = 0) -> Path:
    """scikit-learn digits as an 8x8 PNG folder; every ``flip_every``-th image filed under a wrong class."""
    from sklearn.datasets import load_digits
    d = load_digits()
    images = np.clip(d.images * 16, 0, 255).astype(np.uint8)
    count = {c: 0 for c in range(classes)}
    for i, (img, y) in enumerate(zip(images, d.target)):
        if y >= classes or count[y] >= per_class:
            continue
        count[y] += 1
        given = (y + 1) % classes if flip_every and i % flip_every == 0 else y
        dest = root / f"c{given}" / f"{i:04d}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "L").save(dest)
    return root


def checkpoint_dict(**fields) -> dict:
    """A checkpoint with every key ``RunFolder.load_checkpoint`` requires, empty where a test does not care."""
    import torch
    ck = {"epoch": 0, "config": {}, "fingerprint": "x", "model": {}, "optimizer": {}, "scheduler": {}, "scaler": {},
          "rng": torch.get_rng_state(), "rule": {}, "curves": [], "stopped": False}
    return dict(ck, **fields)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*"))}


def trained_digits_run(root: Path, *, flip_every: int = 7, per_class: int = 25, classes: int = 3, epochs: int = 3):
    """A real (tiny) memscan run on digits: (dataset folder, run folder)."""
    from memscan.config import RunConfig
    from memscan.pipeline import run
    data = digits_folder(root / "digits", per_class=per_class, classes=classes, flip_every=flip_every)
    # the learned stem: the report tests need a few flags of each kind from 3 epochs on 75 8-px images, where
    # the learned stem flags 5 'mislabeled' and the whitened one 2 (whitened runs: test_pipeline, test_whitening)
    cfg = RunConfig(max_epochs=epochs, batch_size=32, image_size=8, augment="crop", min_epochs=1, stem="learned")
    res = run(data, cfg, out=root / "runs" / "digits", cache_dir=root / "cache")
    return data, res.out_dir


def rewrite_report(src, dest: Path, df) -> Path:
    """Write ``df`` as a report with ``src``'s memscan metadata (reports edited for tests)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    meta = pq.read_schema(Path(src) / "report.parquet" if Path(src).is_dir() else src).metadata
    dest.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(meta), dest)
    return dest


def report_meta(*, location: str, classes, n: int, source: str = "folder") -> dict:
    """Complete report metadata (as ``ReportMeta.to_dict()``) for reports made in tests without a run."""
    from memscan.report import DatasetInfo, ReportMeta, StopInfo
    return ReportMeta(memscan_version="test", config={}, curves={},
                      dataset=DatasetInfo(location=location, source=source, n=n, classes=list(classes),
                                          fingerprint="test", image_size=8),
                      stop=StopInfo(reason="test", epochs_trained=1, peak_epoch=None, csg_epochs=1,
                                    mislabel_window=[1, 1])).to_dict()
