"""Per-sample scores and categories from recorded signals: pure numpy, no I/O.

Directions (every score here): higher = more suspicious, except ``aum`` and ``p_given`` where
lower is more suspicious (they are turned around before entering any ``*_score``).

Signals accumulated over epochs (``accumulate``):
  csg            sum of ||d loss / d x||^2 up to the stop-curve peak (memorization proxy)
  sgal           sum of per-sample loss up to the peak
  csl            sum of per-sample loss over every trained epoch
  aum            mean margin (given-label logit minus the largest other) over epochs (Pleiss et al.)
  forgetting     number of epochs where a correctly classified sample became incorrect (Toneva et al.)
  learning_time  first epoch after which the sample stays correctly classified (epochs if never)
Scores in [0, 1] (``compute_scores``): the percentile of a raw statistic among all samples, so
0.99 means "more suspicious than 99% of samples"; each comes with a 1-based rank (1 = most).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CATEGORIES = ("mislabeled", "atypical", "memorized", "ok")


@dataclass
class Signals:
    csg: np.ndarray
    sgal: np.ndarray
    csl: np.ndarray
    aum: np.ndarray
    forgetting: np.ndarray
    learning_time: np.ndarray
    epochs: int          # epochs accumulated (csl, aum, forgetting, learning time)
    peak_epochs: int     # epochs accumulated into csg and sgal
    late_aum: np.ndarray | None = None   # mean margin over the late window (epochs >= window_start)
    late_loss: np.ndarray | None = None  # summed loss over the late window
    late_correct: np.ndarray | None = None   # epochs of the late window in which the given label was predicted
    last_correct: np.ndarray | None = None   # 0-based last epoch in which the given label was predicted, -1 never

    @property
    def window_aum(self) -> np.ndarray:
        """Mean margin behind mislabel_score: the late window's, or all epochs' when not accumulated."""
        return self.aum if self.late_aum is None else self.late_aum

    @property
    def window_loss(self) -> np.ndarray:
        return self.csl if self.late_loss is None else self.late_loss


def accumulate(records, n: int, *, peak_epoch: int | None, window_start: int | None = None) -> Signals:
    """Stream ``EpochRecord``s (in epoch order) into per-sample totals; O(n) memory.

    csg and sgal sum epochs 0..peak_epoch inclusive (all epochs when ``peak_epoch`` is None).
    ``window_start``: first epoch of the late window behind ``mislabel_statistic`` (default: the
    second half of the records). Loss and margin not recorded for a sample in an epoch (NaN) count as
    0. An input gradient not taken (``--input-grad-every K``: one epoch in K; an overflowed fp16 step)
    is estimated from the epochs taken, relative to each epoch's mean over the samples taken (a ratio
    estimator: gradients shrink as training goes on, so a sample taken only in the first epoch must
    not look larger than one taken only in the third): csg_i = sum_taken g_ie / sum_taken m_e x
    sum_e m_e. A sample with none taken up to the peak gets the same over all epochs taken.
    """
    records = list(records) if window_start is None else records
    if window_start is None:
        window_start = records[len(records) // 2].epoch if records else 0
    z = lambda: np.zeros(n, dtype=np.float64)
    csg, sgal, csl, margin_sum = z(), z(), z(), z()
    # for gradients not taken: sums over the epochs taken of g and of the epoch's mean m, to the peak / in all
    m_taken, g_all, m_all_taken = z(), z(), z()
    m_peak = missing = 0.0
    late_margin, late_loss, late_epochs = z(), z(), 0
    late_correct = np.zeros(n, dtype=np.int32)
    forgetting = np.zeros(n, dtype=np.int32)
    last_wrong = np.full(n, -1, dtype=np.int32)   # last epoch the sample was misclassified
    last_right = np.full(n, -1, dtype=np.int32)
    prev = None
    epochs = peak_epochs = 0
    for rec in records:
        taken = ~np.isnan(rec.grad_sq)
        g, l, m = (np.nan_to_num(a.astype(np.float64)) for a in (rec.grad_sq, rec.loss, rec.margin))
        mean_g = float(g[taken].mean()) if taken.any() else 0.0
        missing += float((~taken).sum())
        g_all += g
        m_all_taken += taken * mean_g
        if peak_epoch is None or rec.epoch <= peak_epoch:
            csg += g
            m_taken += taken * mean_g
            m_peak += mean_g
            sgal += l
            peak_epochs += 1
        csl += l
        margin_sum += m
        if rec.epoch >= window_start:
            late_margin += m
            late_loss += l
            late_epochs += 1
        c = rec.correct.astype(bool)
        if rec.epoch >= window_start:
            late_correct += c
        if prev is not None:
            forgetting += (prev & ~c)
        last_wrong[~c] = epochs
        last_right[c] = rec.epoch
        prev = c
        epochs += 1
    if epochs == 0:
        raise ValueError("no epochs recorded")
    if missing:
        with np.errstate(invalid="ignore", divide="ignore"):
            csg = np.where(m_taken > 0, csg / m_taken * m_peak,
                           np.where(m_all_taken > 0, g_all / m_all_taken * m_peak, 0.0))
    return Signals(csg, sgal, csl, margin_sum / epochs, forgetting, (last_wrong + 1).astype(np.int32),
                   epochs, peak_epochs, late_margin / max(late_epochs, 1), late_loss, late_correct, last_right)


def percentile(x: np.ndarray) -> np.ndarray:
    """Fraction of samples with a value <= x's (ties averaged): in (0, 1], higher x -> higher."""
    return average_rank(np.asarray(x, dtype=np.float64)) / len(x)


def average_rank(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their mean rank (scipy's rankdata 'average', without importing
    scipy.stats: that import alone took seconds of every `memscan rank`)."""
    sorter = np.argsort(x, kind="mergesort")
    inv = np.empty(len(x), dtype=np.intp)
    inv[sorter] = np.arange(len(x))
    xs = x[sorter]
    first = np.r_[True, xs[1:] != xs[:-1]]
    dense = first.cumsum()[inv]
    bounds = np.r_[np.flatnonzero(first), len(x)]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def rank_of(score: np.ndarray) -> np.ndarray:
    """1-based rank, 1 = highest score; ties broken by sample id (stable)."""
    order = np.argsort(-np.asarray(score), kind="stable")
    r = np.empty(len(order), dtype=np.int64)
    r[order] = np.arange(1, len(order) + 1)
    return r


# (trajectory statistic, 1 - p(given) at the stop point), as percentiles. After the annealing epoch the
# stop point's verdict is worth as much as the trajectory (AUROC up on every configuration measured,
# BENCHMARKS.md §11); straight from the stop it is a fifth (§0, "The score at the stop")
MISLABEL_WEIGHTS = {True: (0.5, 0.5), False: (0.8, 0.2)}   # keyed by "annealed"
# memorization_score's blend of percentiles (chosen against Feldman & Zhang references, compute_scores)
MEMORIZATION_WEIGHTS = {"1-p_given": 0.5, "sgal": 0.25, "trajectory": 0.25}


def mislabel_statistic(sig: Signals) -> np.ndarray:
    """Raw trajectory statistic, higher = more suspicious: the mean of the percentiles of the negated
    AUM and of the cumulative loss, both over the late window (the second half of the epochs trained).
    Chosen on measurements (BENCHMARKS.md, "Which score"): with injected noise on CIFAR-10, MNIST and
    digits these two are the strongest signals at every epoch; adding CSG lowered the AUROC; and the
    first epochs, where the network is still near chance, only add noise: the late window raised the
    AUROC at 30 of 35 (run, stop epoch) points measured, by up to 0.009; 4 were equal and one 0.001
    lower. ``compute_scores`` blends in the stop point's 1 - p(given) (``MISLABEL_WEIGHTS``); the stop
    rule's replays use this statistic alone."""
    return (percentile(-sig.window_aum) + percentile(sig.window_loss)) / 2


SCORE_CHUNK_BYTES = 2 ** 26   # [rows, K] fp32 block handled at a time (64 MiB): no N x K temporaries


def _chunks(n: int, k: int):
    rows = max(1, SCORE_CHUNK_BYTES // (4 * k))
    for i in range(0, n, rows):
        yield slice(i, min(n, i + rows))


def class_thresholds(probs: np.ndarray, labels: np.ndarray, p_given: np.ndarray | None = None) -> np.ndarray:
    """Confident learning's per-class thresholds t_j = mean p_j over the samples labelled j (1.0 for a
    class with no samples): the mean of p(given) per class, so ``p_given`` (when the caller has it)
    is all it needs; otherwise it is gathered from ``probs`` in row chunks."""
    labels = np.asarray(labels)
    if p_given is None:
        p_given = prediction_summary(probs, labels)[0]
    k = probs.shape[1]
    count = np.bincount(labels, minlength=k)
    total = np.bincount(labels, weights=np.asarray(p_given, np.float64), minlength=k)
    return np.where(count > 0, total / np.maximum(count, 1), 1.0)


def confident_alternative(probs: np.ndarray, labels: np.ndarray, p_given: np.ndarray | None = None) -> np.ndarray:
    """Confident learning's rule (Northcutt et al. 2021): per-class thresholds t_j = mean p_j over
    samples labelled j; a sample's confident class is the argmax over classes j with p_j >= t_j.
    Returns that class, or -1 when no class clears its threshold."""
    labels = np.asarray(labels)
    t = class_thresholds(probs, labels, p_given)
    out = np.empty(len(labels), dtype=np.int64)
    for sl in _chunks(len(labels), probs.shape[1]):
        p = np.asarray(probs[sl])
        above = np.where(p >= t[None, :], p, -1.0)
        best = above.argmax(1)
        out[sl] = np.where(above[np.arange(len(best)), best] >= 0, best, -1)
    return out


def prediction_summary(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p_given, predicted class, p_pred) per sample, streamed in row chunks."""
    n = len(labels)
    p_given, p_max, pred = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.int64)
    for sl in _chunks(n, probs.shape[1]):
        p = np.asarray(probs[sl])
        p_given[sl] = p[np.arange(len(p)), labels[sl]]
        pred[sl] = p.argmax(1)
        p_max[sl] = p[np.arange(len(p)), pred[sl]]
    return p_given, pred, p_max


def upper_fence(x: np.ndarray, *, log: bool = False) -> float:
    """Tukey's upper fence, Q3 + 1.5 IQR, on the values (or on their logs with ``log``, for positives
    that are near log-normal)."""
    v = np.log(np.maximum(x, 1e-30)) if log else np.asarray(x, np.float64)
    q1, q3 = np.percentile(v, [25, 75])
    fence = q3 + 1.5 * (q3 - q1)
    return float(np.exp(fence) if log else fence)


# memorized/atypical also need a mean training loss above 1 nat up to the peak (the given label's geometric-mean
# probability below 0.37): where nearly every sample is learned at once (MNIST) the fence alone sits at a tiny
# loss and took 9% of MNIST's test set; with it, 1.3%, and precision against the reference 0.30 -> 0.50 on MNIST,
# CIFAR-10 unchanged (BENCHMARKS.md §15)
MEMORIZED_MIN_LOSS = 1.0
UNDERFIT_ACCURACY = 0.9   # accuracy on the given labels at the stop below which the flags are mostly hard images
# ... and above which the model has learned nearly every label, wrong ones included: on MNIST's test set (99.98%)
# none of the 15 human-validated errors was flagged 'mislabeled' on any of 3 seeds, 8-10 'memorized' (BENCHMARKS.md §20)
FITTED_ACCURACY = 0.995
SMALL_SET = 5000          # samples below which a short run learns too little for a noise estimate


def trust_warnings(labels: np.ndarray, pred: np.ndarray, *, augmented: bool = True) -> list[str]:
    """What a reader of the categories must know about this run: an underfit model (many hard but correct
    images look like label errors to it), a model that fits nearly every label (the label errors it learned
    are not flagged 'mislabeled'; ``augmented=False`` names the likely cause), or a small set. Empty when
    none applies."""
    acc, n = float((np.asarray(pred) == np.asarray(labels)).mean()), len(labels)
    out = []
    if acc < UNDERFIT_ACCURACY:
        out.append(f"the model fits {acc:.0%} of the given labels at the stop: to a model this far from fitted, "
                   "hard but correctly labelled images look like label errors, so the 'mislabeled' count "
                   "overstates the noise; review the ranking from the top, gate with --baseline/--max-new "
                   "rather than --max-mislabeled, or fit further (--rank-threshold 0.95, --weights)")
    if acc >= FITTED_ACCURACY:
        out.append(f"the model fits {acc:.2%} of the given labels at the stop, wrong ones included: a label error "
                   "it has learned is predicted as given and is rarely flagged 'mislabeled', but it still ranks "
                   "high in mislabel_score and often shows as 'memorized'; review the top of the ranking and the "
                   "'memorized' category too")
        if not augmented:
            # without augmentation a small CNN fits every CIFAR-10 label before the stop: AUROC 0.12-0.26 lower
            # and no sample 'mislabeled' on six noisy 5,000-image sets (BENCHMARKS.md §25)
            out[-1] += ("; this run trained without augmentation, which lets the model learn the label errors "
                        "before the stop: use --augment crop-flip (the default) unless crops or flips change what "
                        "your classes mean")
    if n < SMALL_SET:
        out.append(f"{n} samples: on small sets a short run learns little, so flags are a ranking to review, "
                   "not a noise estimate")
    return out


def compute_scores(sig: Signals, probs: np.ndarray, labels: np.ndarray, *, annealed: bool = True) -> dict:
    """Scores, ranks and categories for every sample. ``probs`` [N, K] at the stop point (an array or
    a ``np.memmap``: it is read in row chunks and never copied whole); ``annealed``: they come from the
    model after the annealing epochs (``train._anneal``), which decides the weight of 1 - p(given)."""
    labels = np.asarray(labels)
    n = len(labels)
    p_given, pred, p_max = prediction_summary(probs, labels)
    # the trajectory statistic blended with the stop point's own verdict (eval mode, no augmentation)
    w_traj, w_prob = MISLABEL_WEIGHTS[bool(annealed)]
    traj_pct = percentile(mislabel_statistic(sig))
    mis = percentile(w_traj * traj_pct + w_prob * percentile(1.0 - p_given))
    # half the stop point's 1 - p(given), a quarter SGAL (the loss summed to the peak, or over every epoch when
    # none came: the best of the paper's cheap proxies here, §12) and a quarter the late-window statistic: against
    # Feldman & Zhang's estimator this beat SGAL + 1 - p(given) and mislabel_score on all four references
    # measured (5,000 CIFAR-10 images: Spearman 0.780 = 0.95 of the reference's reliability, Pearson 0.734;
    # BENCHMARKS.md §17). In a short run memorization and label errors rank alike; the categories tell them
    # apart. CSG stays as `csg`
    w = MEMORIZATION_WEIGHTS
    mem = percentile(w["1-p_given"] * percentile(1.0 - p_given) + w["sgal"] * percentile(sig.sgal)
                     + w["trajectory"] * traj_pct)
    aty = percentile((percentile(sig.csg) + percentile(1 - p_max)) / 2)

    alt = confident_alternative(probs, labels, p_given)
    # confident learning alone over-flags while a short run is still underfit (hard, correct images); the
    # given label must also lose on average over the late window (negative AUM there: precision +0.05-0.10,
    # BENCHMARKS.md §5) and never be predicted in it: on nearly clean CIFAR-10 that halves the false flags,
    # and the estimated rate moved toward the truth at every noise level measured (BENCHMARKS.md §10)
    never_learned = sig.late_correct == 0 if sig.late_correct is not None else True
    mislabeled = (alt >= 0) & (alt != labels) & (sig.window_aum < 0) & never_learned
    # the far tail of SGAL (a quarter of the memorization score), on its raw scale: SGAL is a sum of losses,
    # right-skewed, whereas log CSG is left-skewed and its fence flagged no sample in any run measured. Against
    # Feldman & Zhang's estimator the `memorized` flags have precision 0.87-0.88 at memorization > 0.3; at > 0.5,
    # 0.52-0.67 against 0.90-0.97 for half of a 64-model reference (BENCHMARKS.md §25); fitted or not at the
    # stop splits memorized from atypical, and an image some other class claims confidently is a label suspect
    # (its rank says how strong), not an atypical member of its class
    high = (sig.sgal > upper_fence(sig.sgal)) & (sig.sgal > MEMORIZED_MIN_LOSS * max(sig.peak_epochs, 1))
    memorized = high & ~mislabeled & (pred == labels)
    atypical = high & ~mislabeled & (pred != labels) & ((alt < 0) | (alt == labels))
    category = np.full(n, "ok", dtype=object)
    category[memorized] = "memorized"
    category[atypical] = "atypical"
    category[mislabeled] = "mislabeled"
    return {
        "pred": pred, "p_pred": p_max, "p_given": p_given, "confident_class": alt,
        "mislabel_score": mis, "mislabel_rank": rank_of(mis),
        "memorization_score": mem, "memorization_rank": rank_of(mem),
        "atypicality_score": aty, "atypicality_rank": rank_of(aty),
        "category": category,
    }
