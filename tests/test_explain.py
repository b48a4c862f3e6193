import numpy as np
import pytest

from memscan.explain import before_learned, prediction_agreement, reasons, suggestion
from memscan.scores import accumulate
from memscan.signals import EpochRecord
from memscan.trajectories import read_epochs, read_predictions, sample_history, write_epoch

CLASSES = ["cat", "dog", "ship"]


def history(preds, labels, margins=None):
    """EpochRecords from a hand-written [epochs][samples] table of predicted classes."""
    preds = np.asarray(preds, np.int16)
    labels = np.asarray(labels)
    out = []
    for e, p in enumerate(preds):
        correct = p == labels
        m = np.where(correct, 1.0, -2.0) if margins is None else np.asarray(margins[e], float)
        out.append(EpochRecord(e, np.ones(len(p)), np.where(correct, 0.1, 2.0), m, correct, pred=p))
    return out


def test_agreement_counts_the_late_window_only():
    recs = history([[0, 1, 2], [2, 1, 2], [2, 2, -1], [2, 1, 2]], labels=[0, 1, 2])
    got = prediction_agreement(((r.epoch, r.pred) for r in recs), np.array([2, 1, 2]), window_start=2)
    # sample 2 was not seen in epoch 2: one of one seen late epochs
    np.testing.assert_allclose(got, [1.0, 0.5, 1.0])
    none = prediction_agreement([(0, None), (1, None)], np.array([0, 1]), window_start=0)
    assert np.isnan(none).all()


def test_reasons_from_hand_made_trajectories():
    labels = np.array([0, 1, 2, 0])
    # 0: labelled cat, always predicted ship (a flip); 1: dog, learned at epoch 3 after a forgetting event;
    # 2: ship, fine throughout ("ok": no reason); 3: cat, right in epoch 1 only, then dog
    preds = [[2, 1, 2, 0], [2, 0, 2, 1], [2, 1, 2, 1], [2, 1, 2, 1]]
    recs = history(preds, labels)
    sig = accumulate(recs, 4, peak_epoch=None, window_start=2)
    scores = {"pred": np.array([2, 1, 2, 1]), "p_pred": np.array([0.93, 0.8, 0.99, 0.6]),
              "category": np.array(["mislabeled", "memorized", "ok", "atypical"], dtype=object)}
    sugg, p = suggestion(scores)
    agree = prediction_agreement(((r.epoch, r.pred) for r in recs), sugg, window_start=2)
    why = reasons(sig, scores, labels, CLASSES, agreement=agree, late_epochs=2)
    assert why[0].startswith("given label never predicted in training; predicted ship in 2 of 2 late epochs "
                             "(p 0.93 at the stop); margin -2.0 over the late window; learned: never")
    assert why[1] == ("the stop point predicts the given label (p 0.80); margin +1.0 over the late window; "
                      "learned: at epoch 3 of 4, after 1 forgetting event")
    assert why[2] == ""
    assert why[3].startswith("given label last predicted in training at epoch 1 of 4; predicted dog in 2 of 2 "
                             "late epochs")
    assert "learned: never, after 1 forgetting event" in why[3]


def test_what_training_predicted_before_a_sample_was_learned():
    labels = np.array([0, 1, 2, 0])
    # 0: cat, predicted ship twice and dog once, learned at epoch 4 (a learned label error: "ship" is the hint);
    # 1: dog, right from the start (nothing before); 2: ship, never learned (every epoch counts); 3: not seen once
    preds = [[2, 1, 1, 1], [1, 1, 1, -1], [2, 1, 1, 1], [0, 1, 0, 0]]
    recs = history(preds, labels)
    sig = accumulate(recs, 4, peak_epoch=None, window_start=2)
    cls, count, seen = before_learned(((r.epoch, r.pred) for r in recs), labels, sig.learning_time, 3)
    assert sig.learning_time.tolist() == [3, 0, 4, 3]
    assert cls.tolist() == [2, -1, 1, 1] and count.tolist() == [2, 0, 3, 2] and seen.tolist() == [3, 0, 4, 2]
    scores = {"pred": np.array([0, 1, 2, 0]), "p_pred": np.full(4, 0.9),
              "category": np.array(["memorized", "ok", "atypical", "memorized"], dtype=object)}
    agree = prediction_agreement(((r.epoch, r.pred) for r in recs), scores["pred"], window_start=2)
    why = reasons(sig, scores, labels, CLASSES, agreement=agree, late_epochs=2, earlier=(cls, count, seen))
    assert "learned: at epoch 4 of 4; before it was learned, predicted ship in 2 of 3 epochs" in why[0]
    assert "learned: never; in training, predicted dog in 3 of 4 epochs" in why[2]
    assert "predicted dog in 2 of 2 epochs" in why[3]
    assert before_learned([(0, None)], labels, sig.learning_time, 3)[0].tolist() == [-1] * 4


def test_top_loss_is_named():
    n = 100
    labels = np.zeros(n, int)
    preds = np.zeros((3, n), int)
    preds[:, 7] = 1                                       # one sample never fits: the largest loss sum
    sig = accumulate(history(preds, labels), n, peak_epoch=None)
    cat = np.full(n, "ok", dtype=object)
    cat[7] = "atypical"
    scores = {"pred": preds[-1], "p_pred": np.full(n, 0.9), "category": cat}
    why = reasons(sig, scores, labels, ["a", "b"], agreement=np.ones(n, np.float32), late_epochs=2)
    assert why[7].endswith("; loss to the peak in the top 1%")


def test_trajectory_round_trip_of_predictions(tmp_path):
    recs = history([[0, 1, 2], [2, 1, -1]], labels=[0, 1, 2], margins=[[0.5, 1.5, -1.0], [-0.25, 2.0, np.nan]])
    for r in recs:
        write_epoch(tmp_path, r)
    back = list(read_epochs(tmp_path))
    assert [b.pred.tolist() for b in back] == [[0, 1, 2], [2, 1, -1]]
    assert [(e, p.tolist()) for e, p in read_predictions(tmp_path)] == [(0, [0, 1, 2]), (1, [2, 1, -1])]
    h = sample_history(tmp_path, [2, 0])
    np.testing.assert_allclose(h, [[-1.0, np.nan], [0.5, -0.25]])


def test_trajectories_without_predictions_read_as_none(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"epoch": pa.array([0, 0], pa.int32()), "sample_id": pa.array([1, 0], pa.int64()),
                             "grad_sq": pa.array([1.0, 2.0], pa.float32()), "loss": pa.array([1.0, 2.0], pa.float32()),
                             "margin": pa.array([1.0, 2.0], pa.float32()), "correct": [True, False]}),
                   tmp_path / "epoch-0000.parquet")
    (rec,) = read_epochs(tmp_path)
    assert rec.pred is None and rec.loss.tolist() == [2.0, 1.0]
    assert list(read_predictions(tmp_path)) == [(0, None)]


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_agreement_is_a_fraction(value):
    recs = history([[1, 1]] * 4, labels=[1, 0])
    target = np.array([1, 1]) if value == 1.0 else np.array([0, 0])
    got = prediction_agreement(((r.epoch, r.pred) for r in recs), target, window_start=0)
    assert got.tolist() == [value, value]


@pytest.fixture(scope="module")
def flipped_run(tmp_path_factory):
    """Digits of 3 classes, 60 each, every 7th image filed under the next class; 6 epochs, no early stop."""
    from helpers import digits_folder
    from memscan.config import RunConfig
    from memscan.pipeline import run
    d = tmp_path_factory.mktemp("flips")
    data = digits_folder(d / "digits", per_class=60, classes=3, flip_every=7)
    cfg = RunConfig(max_epochs=6, min_epochs=1, batch_size=32, image_size=8, augment="crop", stop="none")
    return run(data, cfg, out=d / "run", cache_dir=d / "cache").out_dir


def test_suggestions_on_a_run_with_known_flips(flipped_run):
    """For the flipped images the suggestion is the true digit, with a steady late-window verdict, and
    each is explained."""
    from sklearn.datasets import load_digits
    from memscan.report import read_frame
    df = read_frame(flipped_run)
    target = load_digits().target
    true = np.array([target[int(p.rsplit("/", 1)[-1][:4])] for p in df["path"]])
    given = df["label_name"].str[1:].astype(int).to_numpy()
    flipped = true != given
    assert flipped.sum() >= 20
    sugg = df["suggested_label_name"].str[1:].astype(int).to_numpy()
    assert (sugg[flipped] == true[flipped]).mean() >= 0.8          # measured 0.96
    assert df.loc[flipped, "suggestion_agreement"].mean() >= 0.7   # measured 0.91
    assert (sugg[~flipped] == given[~flipped]).mean() >= 0.9       # clean images: "keep"
    assert (df.loc[flipped, "reason"] != "").mean() >= 0.8         # measured 0.96: flagged and explained
