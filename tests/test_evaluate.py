import math

import numpy as np
import pytest

from memscan.evaluate import detection_metrics, flag_metrics, precision_at_k, tpr_at_fpr

SCORES = [0.9, 0.8, 0.7, 0.1]
TRUTH = [1, 0, 1, 0]


def test_detection_metrics_hand_computed():
    m = detection_metrics(SCORES, TRUTH)
    # positive/negative pairs ranked right: (0.9>0.8), (0.9>0.1), (0.7>0.1); wrong: (0.7<0.8) -> 3/4
    assert m["auroc"] == pytest.approx(0.75)
    # ranking 1,0,1,0: precision at each positive = 1/1 and 2/3 -> AP = (1 + 2/3) / 2
    assert m["ap"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["k"] == 2
    assert m["precision_at_k"] == pytest.approx(0.5)          # top 2 = {0.9: bad, 0.8: clean}
    assert m["tpr_at_5fpr"] == pytest.approx(0.5)             # no false positive allowed: only 0.9
    assert set(m) == {"auroc", "ap", "precision_at_k", "tpr_at_5fpr", "k"}


def test_perfect_and_inverted_rankings():
    truth = np.array([1, 1, 0, 0, 0])
    good = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    m = detection_metrics(good, truth)
    assert m["auroc"] == 1.0 and m["ap"] == 1.0 and m["precision_at_k"] == 1.0 and m["tpr_at_5fpr"] == 1.0
    m = detection_metrics(-good, truth)
    assert m["auroc"] == 0.0
    assert m["precision_at_k"] == 0.0
    assert m["tpr_at_5fpr"] == 0.0
    # inverted: positives at ranks 4 and 5 -> AP = (1/4 + 2/5) / 2
    assert m["ap"] == pytest.approx((1 / 4 + 2 / 5) / 2)


def test_ties_count_half_in_auroc():
    m = detection_metrics([1.0, 1.0, 0.0], [1, 0, 0])
    assert m["auroc"] == pytest.approx(0.75)   # pair (pos, tied neg) = 0.5, (pos, lower neg) = 1


def test_precision_at_k():
    s = [0.1, 0.9, 0.5, 0.7, 0.3]
    t = [0, 1, 0, 0, 1]
    assert precision_at_k(s, t, 1) == 1.0
    assert precision_at_k(s, t, 2) == 0.5
    assert precision_at_k(s, t, 4) == pytest.approx(0.5)
    assert precision_at_k(s, t, 5) == pytest.approx(0.4)
    assert math.isnan(precision_at_k(s, t, 0))


def test_tpr_at_fpr_hand_computed():
    # 20 negatives with scores 0..19, 10 positives: 5 above every negative, 5 between negatives 17 and 18
    neg = np.arange(20, dtype=float)
    pos = np.array([30, 31, 32, 33, 34, 17.5, 17.6, 17.7, 17.8, 17.9])
    scores = np.concatenate([pos, neg])
    truth = np.r_[np.ones(10), np.zeros(20)]
    assert tpr_at_fpr(scores, truth, 0.0) == pytest.approx(0.5)
    # fpr 0.05 allows 1 false positive (score 19) -> tpr still 0.5; 0.10 allows 2 (19, 18) -> all 10 found
    assert tpr_at_fpr(scores, truth, 0.05) == pytest.approx(0.5)
    assert tpr_at_fpr(scores, truth, 0.0999) == pytest.approx(0.5)
    assert tpr_at_fpr(scores, truth, 0.10) == pytest.approx(1.0)
    assert tpr_at_fpr(SCORES, TRUTH, 0.5) == pytest.approx(1.0)


def test_flag_metrics():
    flagged = [1, 1, 0, 0, 0, 0]
    truth = [1, 0, 1, 1, 0, 0]
    m = flag_metrics(flagged, truth)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["estimated_noise_fraction"] == pytest.approx(2 / 6)
    assert m["true_noise_fraction"] == pytest.approx(3 / 6)


def test_flag_metrics_nothing_flagged_or_no_truth():
    m = flag_metrics([0, 0, 0], [1, 0, 0])
    assert math.isnan(m["precision"]) and m["recall"] == 0 and m["estimated_noise_fraction"] == 0
    m = flag_metrics([1, 0, 0], [0, 0, 0])
    assert m["precision"] == 0 and math.isnan(m["recall"]) and m["true_noise_fraction"] == 0


@pytest.mark.parametrize("truth", [[1, 1, 1, 1], [0, 0, 0, 0], [True] * 4])
def test_truth_all_one_class_raises(truth):
    with pytest.raises(ValueError, match="both flipped and clean"):
        detection_metrics(SCORES, truth)
