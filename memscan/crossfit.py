"""Out-of-sample class probabilities by K-fold cross-fitting: each sample is predicted by a model that
never trained on it.

Two users: the reference model behind instance-dependent noise (``eval-noise --kind instance``: its
probabilities say how ambiguous each image is and which class it resembles), and cleanlab's K-fold
pipeline in ``benchmarks/baselines.py``. Both call ``prepare`` once and train ``folds`` models here.
"""
from __future__ import annotations

import numpy as np
import torch

from .config import RunConfig
from .errors import ConfigError
from .prepare import Prepared, prepare
from .signals import Recorder
from .train import fit, predict_probs

#: the reference model of instance-dependent noise: 2-fold cross-fitting (each half predicted by a model
#: trained on the other half), 12 epochs each without early stop: about the cost of one 12-epoch run
REFERENCE_FOLDS = 2
REFERENCE_EPOCHS = 12


def cross_val_probs(prep: Prepared, cfg: RunConfig, *, folds: int = REFERENCE_FOLDS, seed: int = 0,
                    progress=None, flip: bool = False) -> np.ndarray:
    """[N, K] float32 probabilities (eval mode, no augmentation) of ``prep``'s samples, each from the fold
    model that did not see it. Folds are stratified by ``prep.labels`` and seeded; fold k trains with
    seed ``seed + k`` for ``cfg.max_epochs`` epochs (no early stop). ``flip``: mirror-image test-time
    augmentation, as ``memscan run`` predicts (the baselines compare like with like)."""
    from sklearn.model_selection import StratifiedKFold
    labels = prep.labels
    smallest = int(np.bincount(labels, minlength=prep.table.num_classes).min()) if len(labels) else 0
    if folds < 2 or smallest < folds:
        raise ConfigError(f"{folds}-fold cross-fitting needs at least {max(folds, 2)} samples in every class "
                          f"(the smallest class has {smallest})")
    probs = np.zeros((len(labels), prep.table.num_classes), dtype=np.float32)
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)
    for k, (train_idx, eval_idx) in enumerate(split):
        fold_cfg = cfg.replace(seed=seed + k, stop="none")
        torch.manual_seed(fold_cfg.seed)
        model = prep.fresh_model(fold_cfg)
        src = prep.subset(train_idx)
        fit(model, src, fold_cfg, recorder=Recorder(len(src), device=prep.device))
        # predicted in fp32 whatever the training precision: these are references, not a hot path
        probs[eval_idx] = predict_probs(model, prep.subset(eval_idx), batch_size=512, dtype=torch.float32,
                                        flip=flip)
        if progress is not None:
            progress("fold", done=k + 1, total=folds)
    return probs


#: what the reference model takes from the audit's options: the data and where it runs. Its network and recipe
#: are memscan's defaults, from scratch, so every detector measured on a dataset (another network, a prior, another
#: learning rate) meets the same flips: the noise is a property of the data
REFERENCE_KEEPS = ("image_size", "augment", "device", "precision", "channels_last", "workers", "cache_memory",
                   "strict", "max_image_pixels")


def reference_config(cfg: RunConfig, epochs: int = REFERENCE_EPOCHS) -> RunConfig:
    """The reference model's options: ``cfg``'s data and execution fields, memscan's default network and recipe,
    ``epochs`` epochs without early stop or annealing, seed 0 (the noise seed only decides which samples flip)."""
    # no annealing: the generator stays the one documented (and measured) before annealing existed
    # and a learned stem: the flips of every benchmark stay those measured before the whitened stem
    return RunConfig(**{k: getattr(cfg, k) for k in REFERENCE_KEEPS}, stop="none", max_epochs=epochs, seed=0,
                     anneal_epochs=0, stem="learned")


def reference_probabilities(table, cfg: RunConfig, *, cache_dir=None, epochs: int = REFERENCE_EPOCHS,
                            progress=None):
    """(paths, [N, K] probabilities) of the reference model behind instance-dependent noise: the
    dataset's own labels taken as clean, ``REFERENCE_FOLDS``-fold cross-fitting, ``epochs`` epochs
    per fold with the options of ``reference_config(cfg)``."""
    prep = prepare(table, reference_config(cfg, epochs), cache_dir=cache_dir)
    return prep.table.paths, cross_val_probs(prep, prep.cfg, folds=REFERENCE_FOLDS, seed=0, progress=progress)
