import numpy as np
import pytest

from memscan.scores import (Signals, accumulate, compute_scores, confident_alternative, percentile, rank_of,
                            upper_fence)
from memscan.signals import EpochRecord


def rec(epoch, g, l, m, c):
    return EpochRecord(epoch, np.array(g, float), np.array(l, float), np.array(m, float), np.array(c, bool))


def test_accumulate_matches_hand_computed():
    records = [rec(0, [1, 2], [1.0, 2.0], [0.5, -1], [True, False]),
               rec(1, [3, 4], [0.5, 2.5], [1.0, -2], [False, True]),
               rec(2, [5, 6], [0.1, 1.0], [2.0, 1.0], [True, True])]
    s = accumulate(records, 2, peak_epoch=1)
    np.testing.assert_allclose(s.csg, [4, 6])        # epochs 0..1
    np.testing.assert_allclose(s.sgal, [1.5, 4.5])
    np.testing.assert_allclose(s.csl, [1.6, 5.5])    # all epochs
    np.testing.assert_allclose(s.aum, [3.5 / 3, -2 / 3])
    assert s.forgetting.tolist() == [1, 0]           # sample 0: correct -> wrong at epoch 1
    assert s.learning_time.tolist() == [2, 1]        # stays correct from epoch 2 / 1
    assert (s.epochs, s.peak_epochs) == (3, 2)
    all_epochs = accumulate(records, 2, peak_epoch=None)
    np.testing.assert_allclose(all_epochs.csg, [9, 12])
    # the late window behind mislabel_score: epochs >= window_start (default: the second half, here 1..2)
    np.testing.assert_allclose(s.late_aum, [1.5, -0.5])
    np.testing.assert_allclose(s.late_loss, [0.6, 3.5])
    late = accumulate(iter(records), 2, peak_epoch=None, window_start=2)   # streams: any iterable
    np.testing.assert_allclose(late.late_aum, [2.0, 1.0])
    np.testing.assert_allclose(late.late_loss, [0.1, 1.0])


def test_mislabel_statistic_uses_the_late_window():
    from memscan.scores import mislabel_statistic
    # sample 0 looks bad early (chance-level epochs) and fine late; sample 1 the other way round
    records = [rec(0, [1, 1], [5.0, 0.1], [-3, 3], [False, True]),
               rec(1, [1, 1], [0.1, 2.0], [2, -1], [True, False]),
               rec(2, [1, 1], [0.1, 2.0], [2, -1], [True, False])]
    stat = mislabel_statistic(accumulate(records, 2, peak_epoch=None, window_start=1))
    assert stat[1] > stat[0]
    whole = mislabel_statistic(accumulate(records, 2, peak_epoch=None, window_start=0))
    assert whole[0] > whole[1]                       # over all epochs the early noise would win


def test_never_learned_gets_full_learning_time_and_a_missing_gradient_is_estimated():
    records = [rec(0, [np.nan, 1], [1, 1], [0, 0], [False, True]), rec(1, [1, 1], [1, 1], [0, 0], [False, True])]
    s = accumulate(records, 2, peak_epoch=None)
    assert s.learning_time.tolist() == [2, 0]
    # sample 0's gradient was not taken in epoch 0 (an overflowed fp16 step, --input-grad-every): its one
    # value stands for both epochs, rather than counting as 0
    np.testing.assert_allclose(s.csg, [2, 2])
    np.testing.assert_allclose(s.sgal, [2, 2])


def test_percentile_and_rank():
    x = np.array([3.0, 1.0, 2.0, 2.0])
    np.testing.assert_allclose(percentile(x), [1.0, 0.25, 0.625, 0.625])
    assert rank_of(np.array([0.1, 0.9, 0.5])).tolist() == [3, 1, 2]
    assert rank_of(np.array([0.5, 0.5])).tolist() == [1, 2]  # ties: by sample id


def test_confident_alternative_thresholds():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 0, 1, 1])
    # t0 = mean p0 over label 0 = 0.85, t1 = mean p1 over label 1 = 0.55
    assert confident_alternative(probs, labels).tolist() == [0, -1, 1, -1]


def test_upper_fence_flags_outliers_only():
    rng = np.random.default_rng(0)
    x = np.exp(rng.normal(0, 1, 10000))
    frac = (x > upper_fence(x, log=True)).mean()
    assert 0.0 < frac < 0.02
    assert upper_fence(np.append(x, 1e6), log=True) < 1e6
    q1, q3 = np.percentile(x, [25, 75])
    assert upper_fence(x) == pytest.approx(q3 + 1.5 * (q3 - q1))


def test_raw_fence_finds_the_tail_a_log_fence_misses():
    # SGAL-like: a broad bulk of loss sums and a thin far tail; the log of the bulk is left-skewed, so a fence
    # on log values lies above every value (28) while the raw fence (about 14.5) finds the tail
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(1.0, 10.0, 950), rng.uniform(20.0, 22.0, 50)])
    assert (x > upper_fence(x, log=True)).sum() == 0
    assert set(np.flatnonzero(x > upper_fence(x))) == set(range(950, 1000))


def test_compute_scores_ranges_and_categories():
    rng = np.random.default_rng(1)
    n, k = 200, 3
    labels = rng.integers(0, k, n)
    probs = np.full((n, k), 0.05)
    probs[np.arange(n), labels] = 0.9
    bad = np.arange(10)                     # confidently predicted as another class
    probs[bad] = 0.05
    probs[bad, (labels[bad] + 1) % k] = 0.9
    probs /= probs.sum(1, keepdims=True)
    csg = np.exp(rng.normal(0, 0.3, n))
    csg[bad] *= 20
    csg[10] = 500.0                         # huge CSG, still predicted as given: memorized
    probs[11] = [1 / 3] * 3
    csg[11] = 400.0                         # huge CSG, no confident class: atypical
    sgal = csg.copy()
    sig = Signals(csg=np.ones(n), sgal=sgal, csl=csg, aum=-csg, forgetting=np.zeros(n, int),
                  learning_time=np.zeros(n, int), epochs=5, peak_epochs=5)
    s = compute_scores(sig, probs, labels)
    for key in ("mislabel_score", "memorization_score", "atypicality_score"):
        assert s[key].min() > 0 and s[key].max() <= 1
        assert sorted(s[key.replace("score", "rank")]) == list(range(1, n + 1))
    assert set(np.flatnonzero(s["category"] == "mislabeled")) == set(bad)
    assert s["category"][10] == "memorized"
    assert s["category"][11] in ("atypical", "mislabeled")
    assert (s["mislabel_rank"][bad] <= 12).all()


def test_average_rank_matches_scipy():
    from scipy.stats import rankdata
    from memscan.scores import average_rank
    rng = np.random.default_rng(0)
    for x in (rng.normal(size=1000), rng.integers(0, 5, 300).astype(float), np.array([2.0]), np.zeros(7)):
        np.testing.assert_array_equal(average_rank(x), rankdata(x, method="average"))


def _reference_alternative(probs, labels):
    """The rule written the direct, whole-array way."""
    k = probs.shape[1]
    t = np.array([probs[labels == j, j].mean() if (labels == j).any() else 1.0 for j in range(k)])
    above = np.where(probs >= t[None, :], probs, -1.0)
    return np.where(above.max(1) >= 0, above.argmax(1), -1)


def test_chunked_scoring_equals_whole_array_and_reads_a_memmap(tmp_path, monkeypatch):
    import memscan.scores as scores
    monkeypatch.setattr(scores, "SCORE_CHUNK_BYTES", 7 * 4 * 6)   # 7 rows of 6 classes: ragged last chunk
    rng = np.random.default_rng(3)
    n, k = 101, 6
    labels = rng.integers(0, k - 1, n)                     # class k-1 has no samples: threshold 1.0
    probs = rng.dirichlet(np.full(k, 0.5), size=n).astype(np.float32)
    mm = np.memmap(tmp_path / "p.f32", dtype=np.float32, mode="w+", shape=(n, k))
    mm[:] = probs
    for p in (probs, mm):
        np.testing.assert_array_equal(confident_alternative(p, labels), _reference_alternative(probs, labels))
        p_given, pred, p_max = scores.prediction_summary(p, labels)
        np.testing.assert_array_equal(p_given, probs[np.arange(n), labels])
        np.testing.assert_array_equal(pred, probs.argmax(1))
        np.testing.assert_array_equal(p_max, probs.max(1))
    np.testing.assert_allclose(scores.class_thresholds(mm, labels)[:k - 1],
                               [probs[labels == j, j].mean() for j in range(k - 1)], rtol=1e-6)
    assert scores.class_thresholds(mm, labels)[k - 1] == 1.0


def test_trust_warnings_name_an_underfit_model_a_fitted_one_and_a_small_set():
    from memscan.scores import trust_warnings
    y = np.arange(6000) % 10
    good = y.copy()
    good[:60] = (good[:60] + 1) % 10                           # 99% fitted: nothing to say
    assert trust_warnings(y, good) == []
    (fitted,) = trust_warnings(y, y)                           # every label learned, wrong ones included
    assert "fits 100.00% of the given labels" in fitted and "'memorized' category" in fitted
    assert "augmentation" not in fitted
    (bare,) = trust_warnings(y, y, augmented=False)            # the likely cause is named, once
    assert bare.startswith(fitted) and "without augmentation" in bare and "--augment crop-flip" in bare
    assert trust_warnings(y, good, augmented=False) == []
    pred = y.copy()
    pred[:1200] = (pred[:1200] + 1) % 10                       # 80% fitted
    (w,) = trust_warnings(y, pred)
    assert "fits 80% of the given labels" in w and "--baseline" in w
    small = trust_warnings(y[:2000], good[:2000])
    assert len(small) == 1 and small[0].startswith("2000 samples")


def test_mislabeled_needs_the_given_label_never_predicted_late():
    """Two samples whose confident class differs and whose late margin is negative: the one the model
    predicted correctly in some late epoch (hard, being learned) is not flagged."""
    from memscan.scores import accumulate, compute_scores
    from memscan.signals import EpochRecord
    n, k = 40, 2
    labels = np.arange(n) % k
    probs = np.full((n, k), 0.05)
    probs[np.arange(n), labels] = 0.95
    probs[[0, 1]] = [[0.02, 0.98], [0.02, 0.98]]       # samples 0, 1 (labelled 0): the model prefers class 1
    recs = []
    for e in range(4):
        margin = np.full(n, 2.0, np.float32)
        margin[[0, 1]] = -3.0
        correct = np.ones(n, bool)
        correct[[0, 1]] = False
        if e == 3:
            correct[1] = True                           # sample 1 was right once in the late window
        recs.append(EpochRecord(e, np.ones(n, np.float32), np.ones(n, np.float32), margin, correct))
    sig = accumulate(recs, n, peak_epoch=None, window_start=2)
    cat = compute_scores(sig, probs, labels)["category"]
    assert cat[0] == "mislabeled" and cat[1] != "mislabeled"
    assert sig.late_correct[:2].tolist() == [0, 1]


def test_mislabel_score_weight_of_the_stop_verdict_follows_annealing():
    """Half the weight on 1 - p(given) after annealing, a fifth without: a sample the trajectory finds
    clean but the annealed model doubts rises further in the annealed ranking."""
    from memscan.scores import MISLABEL_WEIGHTS, Signals, compute_scores, mislabel_statistic, percentile
    rng = np.random.default_rng(0)
    n, k = 200, 4
    labels = np.arange(n) % k
    aum = rng.normal(size=n)
    sig = Signals(csg=rng.random(n) + 0.1, sgal=rng.random(n), csl=rng.random(n), aum=aum,
                  forgetting=np.zeros(n, np.int32), learning_time=np.ones(n, np.int32), epochs=4, peak_epochs=4,
                  late_aum=aum, late_loss=-aum, late_correct=np.full(n, 2, np.int32))
    probs = rng.dirichlet(np.ones(k), size=n).astype(np.float32)
    for annealed, (wt, wp) in MISLABEL_WEIGHTS.items():
        p_given = probs[np.arange(n), labels]
        want = percentile(wt * percentile(mislabel_statistic(sig)) + wp * percentile(1.0 - p_given))
        got = compute_scores(sig, probs, labels, annealed=annealed)["mislabel_score"]
        np.testing.assert_allclose(got, want)
    assert MISLABEL_WEIGHTS[True][1] > MISLABEL_WEIGHTS[False][1]
    doubted = int(np.argmin(mislabel_statistic(sig) - (1 - probs[np.arange(n), labels])))
    assert compute_scores(sig, probs, labels)["mislabel_rank"][doubted] <= \
        compute_scores(sig, probs, labels, annealed=False)["mislabel_rank"][doubted]


def test_memorization_score_weighs_the_stop_verdict_sgal_and_the_late_window():
    """Half 1 - p(given), a quarter SGAL, a quarter the late-window statistic: of samples alike in the other
    two, the one the late window finds harder ranks as more memorized; the stop verdict weighs twice as much
    as either trajectory part."""
    n, k = 400, 4
    rng = np.random.default_rng(1)
    labels = np.arange(n) % k
    probs = rng.dirichlet(np.ones(k) * 4, size=n)
    p_given = probs[np.arange(n), labels]
    sgal, late = rng.random(n), rng.normal(size=n)
    sig = Signals(csg=np.ones(n), sgal=sgal, csl=sgal, aum=late, forgetting=np.zeros(n, int),
                  learning_time=np.zeros(n, int), epochs=4, peak_epochs=4, late_aum=late, late_loss=-late,
                  late_correct=np.full(n, 2, np.int32))
    from memscan.scores import mislabel_statistic
    want = percentile(0.5 * percentile(1 - p_given) + 0.25 * percentile(sgal) + 0.25 * percentile(mislabel_statistic(sig)))
    got = compute_scores(sig, probs, labels)["memorization_score"]
    np.testing.assert_allclose(got, want)
    # two samples with the same p(given) and SGAL: the one with the lower late margin ranks higher
    a, b = 0, 4
    probs[b], sgal[b] = probs[a], sgal[a]
    late[a], late[b] = 3.0, -3.0
    s = compute_scores(sig, probs, labels)
    assert s["memorization_rank"][b] < s["memorization_rank"][a]


def test_memorized_needs_a_mean_loss_above_one_nat():
    """Where nearly all samples are learned at once the fence sits at a tiny loss: a sample above it that was
    still fitted most of the time (mean loss under 1 nat) is not memorized; one that was not, is."""
    n, k, epochs = 300, 3, 4
    labels = np.arange(n) % k
    probs = np.full((n, k), 0.01)
    probs[np.arange(n), labels] = 0.98
    sgal = np.full(n, 0.05 * epochs)
    sgal[:10] = np.linspace(0.02, 0.08, 10) * epochs    # spread the bulk a little: a non-degenerate fence
    sgal[20] = 0.5 * epochs                             # far above the fence, mean loss 0.5: fitted early
    sgal[21] = 1.5 * epochs                             # mean loss 1.5 nats: fitted late
    sig = Signals(csg=np.ones(n), sgal=sgal, csl=sgal, aum=np.ones(n), forgetting=np.zeros(n, int),
                  learning_time=np.zeros(n, int), epochs=epochs, peak_epochs=epochs)
    cat = compute_scores(sig, probs, labels)["category"]
    assert cat[21] == "memorized" and cat[20] == "ok"
    assert (cat == "memorized").sum() == 1
