"""bench.ensemble on hand-built predictions with known answers, and on hand-built run folders."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from bench.ensemble import estimators as ens
from bench.ensemble import folders as ens_runs
from bench.ensemble import voting as vote
from bench.results import leaderboard as lb
from bench import runs
from bench.metrics import classification_metrics
from bench.cli import ensemble as ensemble_cli

CLASSES = ["basophil", "eosinophil", "ig"]


def _probs(correct_rows, y, p_right=0.8, n_classes=2):
    """One member: probability p_right on the true class where correct, else on the next class."""
    out = np.full((len(y), n_classes), (1 - p_right) / (n_classes - 1))
    for i, (ok, label) in enumerate(zip(correct_rows, y)):
        out[i, label if ok else (label + 1) % n_classes] = p_right
    return out


def _random_stack(rng, m, n, c, skill=1.5):
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(m, n, c))
    logits[:, np.arange(n), y] += rng.uniform(0.5, skill, size=(m, 1))
    p = np.exp(logits)
    return p / p.sum(axis=2, keepdims=True), y


# --------------------------------------------------------------------------- combining
def test_majority_known_answer():
    # 3 members, 3 images, 3 classes: plain majorities.
    probs = np.array([
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]],
        [[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]],
        [[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.3, 0.4, 0.3]],
    ])
    out = vote.combine(probs, voting="hard")
    assert out.pred.tolist() == [0, 1, 2]
    assert out.votes.tolist() == [[2, 1, 0], [1, 2, 0], [0, 1, 2]]
    np.testing.assert_allclose(out.proba, probs.mean(axis=0))


def test_vote_tie_rules():
    # 4 members in rank order, 2-2 votes between class 0 and 1 on every image.
    probs = np.array([
        # image 0: sums A=1.3, B=2.05 -> B although the best-ranked member voted A
        # image 1: sums equal -> the best-ranked member's vote (A)
        # image 2: sums equal, best-ranked member voted B -> B
        [[0.50, 0.30, 0.20], [0.6, 0.4, 0.0], [0.4, 0.6, 0.0]],
        [[0.10, 0.80, 0.10], [0.4, 0.6, 0.0], [0.6, 0.4, 0.0]],
        [[0.40, 0.35, 0.25], [0.6, 0.4, 0.0], [0.4, 0.6, 0.0]],
        [[0.30, 0.60, 0.10], [0.4, 0.6, 0.0], [0.6, 0.4, 0.0]],
    ])
    out = vote.combine(probs, voting="hard")
    assert out.votes[:, :2].tolist() == [[2, 2]] * 3
    assert out.pred.tolist() == [1, 0, 1]
    # Reversing the rank order flips only the rank-decided images.
    assert vote.combine(probs[::-1], voting="hard").pred.tolist() == [1, 1, 0]


def test_vote_tie_lowest_index_last():
    # Soft tie, equal votes, and no member votes for a tied class: lowest class index.
    probs = np.array([[[0.3, 0.3, 0.4]], [[0.3, 0.3, 0.4]]])
    probs_soft = np.array([[[0.45, 0.45, 0.10]], [[0.45, 0.45, 0.10]]])
    assert vote.combine(probs, voting="soft").pred.tolist() == [2]
    assert vote.combine(probs_soft, voting="soft").pred.tolist() == [0]  # argmax ties to class 0 in both members


def test_soft_tie_goes_to_more_votes():
    probs = np.array([[[0.9, 0.1]], [[0.3, 0.7]], [[0.3, 0.7]]])  # means 0.5/0.5, votes 1/2
    assert vote.combine(probs, voting="soft").pred.tolist() == [1]


def test_soft_and_hard_disagree():
    # One confident member against two lukewarm ones.
    probs = np.array([[[0.95, 0.05]], [[0.4, 0.6]], [[0.4, 0.6]]])
    assert vote.combine(probs, voting="hard").pred.tolist() == [1]
    assert vote.combine(probs, voting="soft").pred.tolist() == [0]
    y = np.array([0])
    assert ens.MajorityVote(k=3).fit(probs, y).predict(probs).tolist() == [1]
    assert ens.SoftVote(k=3).fit(probs, y).predict(probs).tolist() == [0]


def test_zero_weight_member_does_not_count():
    probs = np.array([[[0.9, 0.1]], [[0.2, 0.8]], [[0.3, 0.7]]])
    assert vote.combine(probs, [1, 1, 0], voting="hard").pred.tolist() == [0]  # 1-1 tie, sums 1.1 vs 0.9
    with pytest.raises(ValueError, match="weights"):
        vote.combine(probs, [1, -1, 0])


# --------------------------------------------------------------------------- member selection
@pytest.fixture
def tie_stack():
    """k=3: A and B are sure; C, D, E tie for the last place on validation (3/6 each).
    With A and B, C or D give 5/6, E gives 6/6."""
    y = np.zeros(6, dtype=int)
    patterns = {
        "A": [1, 1, 1, 1, 1, 0],
        "B": [1, 1, 0, 0, 1, 1],
        "C": [0, 0, 1, 1, 1, 0],
        "D": [0, 0, 0, 1, 1, 1],
        "E": [0, 0, 1, 1, 0, 1],
    }
    X = np.stack([_probs(p, y) for p in patterns.values()])
    return list(patterns), X, y


@pytest.mark.parametrize("cls", [ens.MajorityVote, ens.SoftVote, ens.WeightedVote])
def test_member_tie_maximises_ensemble_val_accuracy(tie_stack, cls):
    ids, X, y = tie_stack
    est = cls(ids, k=3).fit(X, y)
    assert est.members_ == ["A", "B", "E"]
    assert est.val_accuracy_ == 1.0
    sel = est.selection_
    assert sel["tied_at_kth"] == ["C", "D", "E"] and sel["chosen_from_tie"] == ["E"]
    assert sel["subsets_evaluated"] == 3


def test_member_tie_falls_back_to_rank_order(tie_stack):
    ids, X, y = tie_stack
    keep = [0, 1, 2, 3]  # without E, C and D both give 5/6: the first in the given order wins
    est = ens.MajorityVote([ids[i] for i in keep], k=3).fit(X[keep], y)
    assert est.members_ == ["A", "B", "C"]
    swapped = [0, 1, 3, 2]
    est = ens.MajorityVote([ids[i] for i in swapped], k=3).fit(X[swapped], y)
    assert est.members_ == ["A", "B", "D"]


def test_six_tied_for_last_places_is_exhaustive():
    rng = np.random.default_rng(3)
    n = 60
    y = rng.integers(0, 3, n)
    sure = _probs(np.arange(n) % 10 != 0, y, n_classes=3)  # 54/60
    tied = []
    for _ in range(6):  # each 42/60 correct, errors in different places
        ok = np.ones(n, bool)
        ok[rng.choice(n, 18, replace=False)] = False
        tied.append(_probs(ok, y, n_classes=3))
    X = np.stack([sure, *tied])
    ids = ["best", *(f"t{i}" for i in range(6))]
    est = ens.MajorityVote(ids, k=4).fit(X, y)
    assert est.selection_["subsets_evaluated"] == 20
    assert est.members_[0] == "best"
    scores = {c: ens._accuracy(vote.combine(X[[0, *c]]).pred, y) for c in itertools.combinations(range(1, 7), 3)}
    best = max(scores.values())
    first_best = next(c for c in itertools.combinations(range(1, 7), 3) if scores[c] == best)
    assert est.val_accuracy_ == best
    assert est.members_[1:] == [ids[i] for i in first_best]


def test_no_tie_takes_top_k():
    rng = np.random.default_rng(0)
    X, y = _random_stack(rng, 6, 200, 4)
    est = ens.MajorityVote(k=3).fit(X, y)
    acc = (X.argmax(2) == y).mean(1)
    assert sorted(est.member_indices_) == sorted(np.argsort(-acc, kind="stable")[:3])
    assert list(est.member_indices_) == list(est.ranking_[:3])


# --------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("make", [
    lambda: ens.MajorityVote(k=4), lambda: ens.SoftVote(k=4), lambda: ens.WeightedVote(k=4),
    lambda: ens.WeightedVote(k=4, voting="hard"), lambda: ens.GreedySelection(max_steps=5),
    lambda: ens.BestSubset(k=4, top_n=4),
])
def test_identical_members_equal_the_member(make):
    rng = np.random.default_rng(1)
    X1, y = _random_stack(rng, 1, 300, 5)
    X = np.repeat(X1, 4, axis=0)
    est = make().fit(X, y)
    np.testing.assert_array_equal(est.predict(X), X1[0].argmax(1))
    assert est.val_accuracy_ == pytest.approx((X1[0].argmax(1) == y).mean())


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("voting", ["soft", "hard"])
def test_greedy_never_worse_than_best_single_member_on_val(seed, voting):
    rng = np.random.default_rng(seed)
    X, y = _random_stack(rng, 8, 150, 4, skill=1.0)
    est = ens.GreedySelection(max_steps=10, voting=voting).fit(X, y)
    best_single = (X.argmax(2) == y).mean(1).max()
    assert est.val_accuracy_ >= best_single
    assert est.trace_[0]["added"] == str(est.ranking_[0])  # step 1 is the best single member
    assert len(est.trace_) == 10
    assert sum(est.weights_) <= 10


def test_greedy_with_replacement_weights_are_counts():
    rng = np.random.default_rng(7)
    X, y = _random_stack(rng, 5, 200, 3, skill=1.0)
    est = ens.GreedySelection(max_steps=15).fit(X, y)
    assert all(float(w).is_integer() and w >= 1 for w in est.weights_)
    counts = np.zeros(5)
    for step in est.trace_[: int(est.weights_.sum())]:
        counts[int(step["added"])] += 1
    np.testing.assert_array_equal(counts[est.member_indices_], est.weights_)


def test_best_subset_is_the_best_of_the_top_n():
    rng = np.random.default_rng(2)
    X, y = _random_stack(rng, 10, 200, 4, skill=1.2)
    est = ens.BestSubset(k=4, top_n=8).fit(X, y)
    assert est.selection_["subsets_evaluated"] == 70
    pool = list(est.ranking_[:8])
    best = max(ens._accuracy(vote.combine(X[sorted(c, key=pool.index)]).pred, y)
               for c in itertools.combinations(pool, 4))
    assert est.val_accuracy_ == best
    assert set(est.member_indices_) <= set(pool)


def test_weighted_vote_weights():
    # Member 0 is right alone; with a large enough given weight it wins the soft vote.
    probs = np.array([[[0.9, 0.1]], [[0.4, 0.6]], [[0.4, 0.6]]])
    y = np.array([0])
    ids = ["a", "b", "c"]
    assert ens.WeightedVote(ids, k=3, weights=[1, 1, 1], voting="hard").fit(probs, y).predict(probs).tolist() == [1]
    est = ens.WeightedVote(ids, k=3, weights={"a": 3.0, "b": 1.0, "c": 1.0}, voting="hard").fit(probs, y)
    assert est.predict(probs).tolist() == [0] and est.weights_.tolist() == [3.0, 1.0, 1.0]
    est = ens.WeightedVote(ids, k=3).fit(probs, y)  # default: weights = validation accuracies
    assert est.weights_.tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="k=3"):
        ens.WeightedVote(ids, k=3, weights=[1, 2]).fit(probs, y)


# --------------------------------------------------------------------------- scikit-learn style
def test_sklearn_conventions():
    rng = np.random.default_rng(4)
    X, y = _random_stack(rng, 5, 100, 3)
    est = ens.MajorityVote(["a", "b", "c", "d", "e"], k=3)
    assert est.get_params() == {"members": ["a", "b", "c", "d", "e"], "k": 3}
    assert clone(est).set_params(k=2).k == 2
    with pytest.raises(NotFittedError):
        est.predict(X)
    assert not hasattr(est, "predict_proba")  # hard voting: votes, no probabilities
    est.fit(X, y)
    for attr in ("members_", "member_indices_", "weights_", "ranking_", "candidate_val_acc_",
                 "val_accuracy_", "selection_", "classes_", "candidates_"):
        assert hasattr(est, attr)
    assert est.score(X, y) == pytest.approx(est.val_accuracy_)
    assert est.votes(X).sum(axis=1).tolist() == [3] * 100
    soft = ens.SoftVote(k=3).fit(X, y)
    np.testing.assert_allclose(soft.predict_proba(X).sum(axis=1), 1.0)
    np.testing.assert_array_equal(soft.predict(X), soft.predict_proba(X).argmax(1))
    with pytest.raises(ValueError, match="only 5 candidates"):
        ens.MajorityVote(k=6).fit(X, y)


def test_27_members_6000_images_is_fast():
    rng = np.random.default_rng(5)
    X, y = _random_stack(rng, 27, 6000, 8)
    start = time.perf_counter()
    est = ens.MajorityVote(k=4).fit(X[:, :4000], y[:4000])
    est.predict(X[:, 4000:])
    vote.combine(X, voting="hard")  # all 27 at once
    assert time.perf_counter() - start < 5.0  # ~0.05 s on 2 idle cores: 100x for a shared CPU


# --------------------------------------------------------------------------- run folders and the CLI
def _write_run(exp, model, seed, y_val, p_val, y_test, p_test, *, shuffle=0, status="completed"):
    run = runs.RunDir.for_run(exp, model, seed)
    run.write_status(status, config_hash="x", model=model, seed=seed)
    metrics = {"model": model, "seed": seed, "status": status, "classes": CLASSES, "params_m": 1.5, "gflops": 0.25}
    for split, y, p in (("val", y_val, p_val), ("test", y_test, p_test)):
        pred = p.argmax(1)
        frame = pd.DataFrame({"path": [f"{CLASSES[c]}/{split}{i:03d}.png" for i, c in enumerate(y)],
                              "label": [CLASSES[c] for c in y], "predicted": [CLASSES[c] for c in pred]})
        for j, c in enumerate(CLASSES):
            frame[f"prob_{c}"] = p[:, j].round(6)
        if shuffle:
            frame = frame.sample(frac=1.0, random_state=shuffle)
        runs.write_csv_atomic(run.predictions(split), frame)
        metrics[split] = classification_metrics(y, pred, CLASSES)
    runs.write_json_atomic(run.metrics, metrics)
    return run


@pytest.fixture
def exp(tmp_path):
    rng = np.random.default_rng(11)
    exp_dir = tmp_path / "exp"
    y_val, y_test = rng.integers(0, 3, 40), rng.integers(0, 3, 30)
    for i, model in enumerate(["resnet18", "vgg16", "alexnet", "densenet121", "timm/tiny"]):
        pv = _random_stack(np.random.default_rng(i), 1, 40, 3)[0][0]
        pt = _random_stack(np.random.default_rng(100 + i), 1, 30, 3)[0][0]
        # make each member informative about the true labels
        pv[np.arange(40), y_val] += 0.3 + 0.1 * i
        pt[np.arange(30), y_test] += 0.3 + 0.1 * i
        _write_run(exp_dir, model, 0, y_val, pv / pv.sum(1, keepdims=True), y_test,
                   pt / pt.sum(1, keepdims=True), shuffle=i)
    runs.RunDir.for_run(exp_dir, "failed_net", 0).write_status("failed", config_hash="x", error="boom")
    lb.write_leaderboard(exp_dir)
    return exp_dir


def test_load_candidates_aligns_by_path_in_leaderboard_order(exp):
    cands = ens_runs.load_candidates(exp)
    board = lb.build_leaderboard(exp)
    ranked = board[board["rank"].notna()]
    assert cands.ids == [f"{m}/seed{s}" for m, s in zip(ranked["model"], ranked["seed"])]
    assert cands.classes == CLASSES
    val = cands.splits["val"]
    assert list(val.paths) == sorted(val.paths) and val.probs.shape == (5, 40, 3)
    for i, rd in enumerate(cands.run_dirs):  # the recorded predictions are reproduced after sorting
        frame = pd.read_csv(rd.predictions("val")).sort_values("path")
        assert [CLASSES[c] for c in val.probs[i].argmax(1)] == frame["predicted"].tolist()


def test_cli_writes_folder_and_leaderboard_row(exp, capsys):
    assert ensemble_cli.main([str(exp), "k=3", "method=majority"]) == 0
    out = capsys.readouterr().out
    assert "majority-k3" in out and "test" in out
    folder = exp / "ensembles" / "majority-k3"
    metrics = runs.read_json(folder / "metrics.json")
    members = pd.read_csv(folder / "members.csv")
    assert metrics["method"] == "majority" and metrics["k"] == 3 and metrics["classes"] == CLASSES
    assert len(members) == 3 and list(members["member"]) == [m["member"] for m in metrics["members"]]
    cands = ens_runs.load_candidates(exp)
    assert list(members["member"]) == cands.ids[:3]  # no tie here: the top 3 by validation
    preds = pd.read_csv(folder / "predictions_test.csv")
    assert list(preds.columns[:3]) == ["path", "label", "predicted"]
    assert [f"votes_{c}" for c in CLASSES] == [c for c in preds.columns if c.startswith("votes_")]
    assert (preds[[f"votes_{c}" for c in CLASSES]].sum(axis=1) == 3).all()
    # the metric set is the one of bench.metrics, from the written predictions
    idx = {c: i for i, c in enumerate(CLASSES)}
    expected = classification_metrics(preds["label"].map(idx), preds["predicted"].map(idx), CLASSES)
    assert metrics["test"] == expected
    conf = pd.read_csv(folder / "confusion_test.csv")
    assert conf["true"].tolist() == CLASSES and conf.iloc[:, 1:].to_numpy().tolist() == expected["confusion_matrix"]

    board = pd.read_csv(exp / "leaderboard.csv")
    row = board[board["kind"] == "ensemble"]
    assert len(row) == 1
    row = row.iloc[0]
    assert row["model"] == "majority-k3" and row["status"] == "completed"
    assert row["members"] == ";".join(members["member"])
    assert row["test_acc"] == pytest.approx(expected["accuracy"])
    assert row["val_acc"] == pytest.approx(metrics["val"]["accuracy"])
    for c in CLASSES:
        assert row[c] == pytest.approx(expected["per_class"][c]["accuracy"])
    assert row["test_f1"] == pytest.approx(expected["macro"]["f1"])
    assert (board["kind"] == "model").sum() == 6

    # A later training run rewrites the leaderboard: the ensemble row survives.
    lb.write_leaderboard(exp)
    board = pd.read_csv(exp / "leaderboard.csv")
    kept = board[board["kind"] == "ensemble"]
    assert len(kept) == 1 and kept.iloc[0]["members"] == row["members"]
    assert kept.iloc[0]["test_acc"] == pytest.approx(row["test_acc"])

    # Same name again: replaced, not duplicated; another name: added.
    assert ensemble_cli.main([str(exp), "k=3", "method=majority"]) == 0
    assert ensemble_cli.main([str(exp), "k=2", "method=soft", "name=my-soft"]) == 0
    board = pd.read_csv(exp / "leaderboard.csv")
    assert sorted(board.loc[board["kind"] == "ensemble", "model"]) == ["majority-k3", "my-soft"]
    soft = pd.read_csv(exp / "ensembles" / "my-soft" / "predictions_val.csv")
    assert not any(c.startswith("votes_") for c in soft.columns)


@pytest.mark.parametrize("method", ["weighted", "greedy", "best_subset"])
def test_cli_other_methods(exp, method):
    assert ensemble_cli.main([str(exp), "k=2", f"method={method}", "top_n=4", "steps=5"]) == 0
    name = "greedy" if method == "greedy" else f"{method}-k2"
    metrics = runs.read_json(exp / "ensembles" / name / "metrics.json")
    assert metrics["method"] == method
    single_best = max(m["val_acc"] for m in metrics["candidates"])
    if method in ("greedy",):
        assert metrics["val"]["accuracy"] >= single_best


def test_cli_weights_option(exp):
    cands = ens_runs.load_candidates(exp)
    a, b = cands.ids[0], cands.ids[3]
    assert ensemble_cli.main([str(exp), "method=weighted", f"weights={a}=2;{b}=1", "name=w"]) == 0
    members = pd.read_csv(exp / "ensembles" / "w" / "members.csv")
    assert members["member"].tolist() == [a, b]
    assert members["weight"].tolist() == pytest.approx([2 / 3, 1 / 3], abs=1e-6)


def test_cli_errors(exp, tmp_path, capsys):
    assert ensemble_cli.main([str(exp), "k=6"]) == 2  # 5 completed runs
    assert "fewer than k=6" in capsys.readouterr().err
    assert ensemble_cli.main([str(exp), "kk=3"]) == 2
    assert "not an option" in capsys.readouterr().err
    assert ensemble_cli.main([str(exp), "method=stacking"]) == 2
    assert "stacking" in capsys.readouterr().err
    assert ensemble_cli.main([str(tmp_path / "nowhere")]) == 2
    assert "no runs/ folder" in capsys.readouterr().err


def test_mismatched_images_name_both_runs(exp):
    y = np.zeros(39, dtype=int)  # one validation image fewer
    p = np.tile([0.6, 0.3, 0.1], (39, 1))
    _write_run(exp, "zzz_net", 0, y, p, np.zeros(30, dtype=int), np.tile([0.6, 0.3, 0.1], (30, 1)))
    with pytest.raises(ens_runs.EnsembleError, match=r"zzz_net/seed0") as info:
        ens_runs.load_candidates(exp)
    assert "different val images" in str(info.value)


def test_recorded_prediction_wins_a_rounding_tie(tmp_path):
    exp = tmp_path / "exp"
    y = np.array([0, 1])
    p = np.array([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0]])
    run = _write_run(exp, "m", 0, y, p, y, p)
    frame = pd.read_csv(run.predictions("val"))
    frame.loc[0, "predicted"] = "eosinophil"  # the unrounded probability was higher for class 1
    runs.write_csv_atomic(run.predictions("val"), frame)
    cands = ens_runs.load_candidates(exp)
    assert cands.splits["val"].probs[0].argmax(1).tolist() == [1, 1]
