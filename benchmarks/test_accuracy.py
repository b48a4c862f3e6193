"""Accuracy of a run's model.pt on a labelled test set (e.g. ../shared/data/cifar10/test.parquet).

    python benchmarks/test_accuracy.py RUN_DIR ../shared/data/cifar10/test.parquet
"""
import sys
from pathlib import Path

import torch

from memscan.data import load_images, load_index
from memscan.data.loader import InMemorySource
from memscan.models import create_model
from memscan.train import evaluate


def main(run_dir, test):
    ck = torch.load(Path(run_dir) / "model.pt", map_location="cpu", weights_only=True)
    model = create_model(ck["model"], ck["num_classes"])
    model.load_state_dict(ck["state_dict"])
    t = load_index(test)
    assert t.class_names == ck["class_names"], "test classes differ from the run's"
    d = load_images(t, image_size=ck["image_size"])
    src = InMemorySource(d.images, d.table.labels, mean=ck["mean"], std=ck["std"])
    r = evaluate(model, src, batch_size=512, dtype=torch.float32)
    print(f"{run_dir}: {len(src)} test images, accuracy {r['val_acc']:.4f}, loss {r['val_loss']:.4f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
