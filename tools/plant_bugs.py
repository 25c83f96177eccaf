"""Plant one bug at a time in a copy of the project and check that the fast suite catches it.

A reviewer's check of the test suite (issue 11): each entry below changes one line in a way
that would silently corrupt results; the suite must fail for every one. The project is
copied to a temporary folder per bug (the working tree is never touched), the copy is put
first on ``PYTHONPATH`` and ``pytest -m "not slow" -x`` runs there; the first failing test is
reported.

    .venv/bin/python tools/plant_bugs.py                 # every bug, one after the other
    .venv/bin/python tools/plant_bugs.py spec_fn cm_t    # some of them
    .venv/bin/python tools/plant_bugs.py --list
    .venv/bin/python tools/plant_bugs.py --rev 3095398   # against an older commit's suite

It takes seconds per caught bug and a whole fast-suite run (~3 min on 2 cores) per survivor.
Run it alone: two CPU-heavy jobs at once slow torch down 10-50x.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# id: (file, exact text, replacement, what the bug does)
BUGS: dict[str, tuple[str, str, str, str]] = {
    # ---- the nine bugs of issue 11
    "spec_fn": ("bench/metrics/classification.py", "tn, fp = mcm[:, 0, 0], mcm[:, 0, 1]", "tn, fp = mcm[:, 0, 0], mcm[:, 1, 0]",
                "specificity computed with FN instead of FP"),
    "cm_t": ("bench/metrics/classification.py", '"confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels)',
             '"confusion_matrix": confusion_matrix(y_pred, y_true, labels=labels)',
             "confusion matrix transposed (rows = predicted)"),
    "best_ge": ("bench/training/loop.py", "if score > progress.best_score:", "if score >= progress.best_score:",
                "best-epoch tie keeps the later epoch"),
    "test_last": ("bench/training/loop.py",
                  'task.model.load_state_dict(torch.load(run_dir.best_ckpt, map_location="cpu", weights_only=True)["model"])',
                  "pass",
                  "test metrics from the last epoch's weights, not best.pt"),
    "lr_batch": ("bench/training/classifier.py", "on_step=s.scheduler.step if s.per_step else None", "on_step=s.scheduler.step",
                 "learning rate stepped per batch"),
    "lr_never": ("bench/training/loop.py", "            task.scheduler.step()  # once per epoch, after it\n", "            pass\n",
                 "learning rate never decayed"),
    "aux_zero": ("bench/training/engine.py", "loss = loss + aux_weight * criterion(a, targets)",
                 "loss = loss + 0.0 * criterion(a, targets)", "Inception auxiliary loss weight 0.4 -> 0"),
    "sched_resume": ("bench/training/loop.py", '    task.scheduler.load_state_dict(state["scheduler"])\n', "",
                     "scheduler state not restored on resume"),
    "atomic_inplace": ("bench/runs/atomic.py", "        yield tmp\n        os.replace(tmp, path)\n", "        yield path\n",
                       "atomic write done in place"),
    "accum_nodiv": ("bench/training/engine.py", "(loss / grad_accum).backward()", "loss.backward()",
                    "gradient-accumulation loss not divided by the number of micro-batches"),
    # ---- bugs of the same kinds elsewhere
    "class_acc_prec": ("bench/metrics/classification.py", '"accuracy": None if absent else float(recall[i])',
                       '"accuracy": None if absent else float(precision[i])',
                       "class-wise accuracy taken as precision"),
    "macro_absent": ("bench/metrics/classification.py", "present = support > 0", "present = support >= 0",
                     "macro averages include classes absent from the truth"),
    "f1_prec": ("bench/metrics/classification.py", '"f1": None if absent else float(f1[i])',
                '"f1": None if absent else float(precision[i])', "F1 reported as precision"),
    "momentum_resume": ("bench/training/loop.py", '    task.optimizer.load_state_dict(state["optimizer"])\n', "",
                        "optimizer (momentum) state not restored on resume"),
    "aux_registry": ("bench/models/torchvision_zoo.py", "aux_weight=0.4,", "aux_weight=0.0,",
                     "inception_v3 registered without its auxiliary loss"),
    "eval_train_mode": ("bench/training/engine.py", "    model.eval()\n    losses, probs, labels", "    model.train()\n"
                        "    losses, probs, labels", "evaluation in train mode (dropout, batch statistics)"),
    "split_val_test": ("bench/data/split.py", "n_val = max(1, int(round(n * f_val / total)))",
                       "n_val = max(1, int(round(n * f_test / total)))", "validation share taken from the test fraction"),
    "norm_mean": ("bench/data/transforms.py",
                  "self.shift = (torch.tensor(mean, dtype=torch.float32) / torch.tensor(std))",
                  "self.shift = (torch.tensor(mean, dtype=torch.float32))", "normalisation forgets to divide the mean by std"),
    "rank_by_test": ("bench/results/ranking.py", '[key, "model", "_seed_key"], ascending=[False, True, True]',
                     '["test_acc", "model", "_seed_key"], ascending=[False, True, True]',
                     "leaderboard ranked by test accuracy"),
    "vote_tie_prob": ("bench/ensemble/voting.py", "keys = (votes, prob_sum) if voting == HARD else (proba, votes)",
                      "keys = (votes,) if voting == HARD else (proba, votes)",
                      "hard-vote ties skip the summed-probability rule"),
    "mcnemar_onesided": ("bench/metrics/statistics.py", 'binomtest(only_a, n, 0.5, alternative="two-sided")',
                         'binomtest(only_a, n, 0.5, alternative="greater")', "McNemar test made one-sided"),
    # ---- detection and the detector -> classifier chain
    # The best-epoch rule is the loop's, shared (best_ge); what is the detector's own is the score it gives it.
    "det_best_ap50": ("bench/training/detector.py", 'return row, val["map"], None', 'return row, val["ap50"], None',
                      "the detector's best epoch picked by validation AP50 instead of mAP"),
    "det_threshold_test": ("bench/training/detector.py", 'choose_thresholds(images["val"], preds["val"], classes)',
                           'choose_thresholds(images["test"], preds["test"], classes)',
                           "detector score thresholds chosen on the test fields"),
    "det_count_signed": ("bench/detection/metrics.py", "errors[i] = np.abs(pred - true)", "errors[i] = pred - true",
                         "count error signed (over- and under-counts cancel)"),
    "chain_iou_any": ("bench/cascade/scoring.py", "if iou[i, j] >= iou_threshold]", "if iou[i, j] > 0]",
                      "chain matches cells at any overlap instead of IoU >= 0.5"),
    "chain_count_signed": ("bench/cascade/scoring.py", "self.count_errors.append(np.abs(pred_counts - true_counts))",
                           "self.count_errors.append(pred_counts - true_counts)", "chain count error signed"),
    # ---- the published protocols' options (issue 14) and the run identity (issue 13)
    "conv_blocks_one_more": ("bench/models/blocks.py", "first = conv[len(conv) - n] if n else conv[-1] + 1",
                             "first = conv[len(conv) - n - 1] if n else conv[-1] + 1",
                             "trainable_conv_blocks trains one convolutional block too many"),
    "keep_fc_one_less": ("bench/models/heads.py", "cut = fcs[int(keep_fc)]", "cut = fcs[max(0, int(keep_fc) - 1)]",
                         "head_keep_fc keeps one fully connected layer too few"),
    "balance_short": ("bench/data/loader.py", "np.resize(idx[permutation(len(idx))], n - len(idx))",
                      "np.resize(idx[permutation(len(idx))], n - len(idx) - 1)",
                      "balance_to tops each class up to one image short"),
    "head_not_recorded": ("bench/training/classifier.py", "head=head_record(cfg.model),  # the head it trained",
                          "# no head recorded:",
                          "best.pt does not record the head it trained (a cut head cannot be rebuilt)"),
    "identity_store": ("bench/config/schema.py", 'store: str = not_a_result("auto")', 'store: str = "auto"',
                       "data.store (where images are read from) changes a run's identity: finished runs retrain"),
    # ---- issue 24: every departure shown, every number pinned
    "protocol_skips_added": ("bench/config/keys.py", "            keys.append(\".\".join(path))",
                             "            if f.metadata.get(_IDENTITY) != \"neutral\":\n"
                             "                keys.append(\".\".join(path))",
                             "options added later (sched_interval, select_by, warmup_steps, ...) are not compared: "
                             "the protocol column says paper"),
    "model_not_named": ("bench/config/recipe.py", "    if model in models:\n        return []",
                        "    if True:\n        return []", "a model the paper did not run is not named"),
    "split_counts_groups": ("bench/data/split.py", "split_counts(int(files_per_class[label]), fractions, rounding)",
                            "split_counts(n, fractions, rounding)",
                            "split shares counted in groups of identical files, not files (146 basophils)"),
    "paper_selected_on_val": ("bench/ensemble/folders.py",
                              '"selected_on": result_records.SELECTED_ON_TEST if method == "paper" else',
                              '"selected_on": result_records.SELECTED_ON_VALIDATION if method == "paper" else',
                              "the paper-members ensemble (chosen on test) is labelled as chosen on validation"),
    "absent_class_zero": ("bench/metrics/classification.py", '"accuracy": None if absent else float(recall[i])',
                          '"accuracy": 0.0 if absent else float(recall[i])',
                          "a class absent from the truth scores accuracy 0 instead of undefined"),
    "sweeper_val_acc": ("bench/cli/train.py", '    return result.get("val_score")', '    return result.get("val_acc")',
                        "a Hydra sweeper optimises validation accuracy whatever trainer.select_by says"),
    "frozen_random_ok": ("bench/preflight/models.py", "    if model_cfg.pretrained or model_cfg.get(\"weights\"):\n"
                         "        return None", "    if True:\n        return None",
                         "a frozen backbone at its random initialisation passes the preflight"),
    # ---- issue 25: detection boxes and classes written or read in the wrong format, the cap, crowds
    "det_results_xyxy": ("bench/detection/metrics.py",
                         '"category_id": int(label), "bbox": [x0, y0, x1 - x0, y1 - y0],',
                         '"category_id": int(label), "bbox": [x0, y0, x1, y1],',
                         "predictions written to COCO as xyxy where COCO reads x, y, width, height"),
    "det_truth_xyxy": ("bench/detection/metrics.py", '"bbox": [x0, y0, x1 - x0, y1 - y0], "area"',
                       '"bbox": [x0, y0, x1, y1], "area"',
                       "ground truth written to COCO as xyxy where COCO reads x, y, width, height"),
    "det_results_id_shift": ("bench/detection/metrics.py", '"category_id": int(label), "bbox"',
                             '"category_id": int(label) + 1, "bbox"',
                             "predicted boxes written with the category id of the next class"),
    "det_truth_id_shift": ("bench/detection/metrics.py", "index = {c: i + 1 for i, c in enumerate(classes)}",
                           "index = {c: i + 2 for i, c in enumerate(classes)}",
                           "true boxes written with the category id of the next class"),
    "det_coco_read_xyxy": ("bench/detection/data.py",
                           'a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]',
                           'a["bbox"][2], a["bbox"][3]]',
                           "COCO's x, y, width, height read as xmin, ymin, xmax, ymax"),
    "det_cap_100": ("bench/detection/metrics.py", "return [1, 10, 100] if max_detections <= 100 else",
                    "return [1, 10, 100] if True else", "COCO counts 100 detections per field whatever the cap"),
    "det_crowd_dropped": ("bench/detection/metrics.py",
                          "for crowd, pairs in ((0, zip(np.asarray(im.boxes, float).tolist(), im.labels)), (1, crowds)):",
                          "for crowd, pairs in ((0, zip(np.asarray(im.boxes, float).tolist(), im.labels)),):",
                          "COCO crowd regions dropped: predictions on them count as false positives"),
}


def _copy_project(dest: Path, rev: str | None) -> None:
    """The working tree, or the files of commit ``rev`` (``git archive``: what a clone would hold)."""
    if rev is None:
        anywhere = shutil.ignore_patterns(".venv", ".git", ".cache", "__pycache__", "*.egg-info", ".pytest_cache")

        def ignore(folder, names):  # results/ (the runs) only at the top: tests/results/ is the leaderboard's tests
            return set(anywhere(folder, names)) | ({"results"} & set(names) if Path(folder) == ROOT else set())

        shutil.copytree(ROOT, dest, ignore=ignore)
        return
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def plant(bug_id: str, pytest_args: list[str], rev: str | None = None) -> tuple[bool, str, float]:
    path, old, new, _ = BUGS[bug_id]
    with tempfile.TemporaryDirectory(prefix=f"bug-{bug_id}-") as tmp:
        copy = Path(tmp) / "project"
        _copy_project(copy, rev)
        source = (copy / path).read_text()
        if source.count(old) != 1:
            raise SystemExit(f"{bug_id}: the text to change occurs {source.count(old)} times in {path}; update BUGS.")
        (copy / path).write_text(source.replace(old, new))
        env = {**os.environ, "PYTHONPATH": str(copy), "BENCH_CACHE_DIR": str(Path(tmp) / "cache")}
        where = subprocess.run([sys.executable, "-c", "import bench; print(bench.__file__)"], cwd=copy, env=env,
                               capture_output=True, text=True).stdout.strip()
        if not where.startswith(str(copy)):
            raise SystemExit(f"the copy is not what Python imports (bench is {where}); cannot plant bugs safely.")
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "not slow", "-x", "-q", "-p", "no:cacheprovider",
                               *pytest_args], cwd=copy, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        failed = re.findall(r"^FAILED (\S+)", proc.stdout, flags=re.M)
        if proc.returncode == 0:
            return False, "", seconds
        # The first assertion line, so a reader sees the test failed for the planted bug, not another reason.
        why = next((line[1:].strip() for line in proc.stdout.splitlines() if line.startswith("E ")), "")
        return True, (failed[0] if failed else proc.stdout.strip().splitlines()[-1]) + (f"\n      {why[:200]}" if why
                                                                                       else ""), seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bugs", nargs="*", help="bug ids (default: all)")
    p.add_argument("--list", action="store_true", help="list the bugs and exit")
    p.add_argument("--pytest", default="", help="extra pytest arguments, e.g. a folder to run instead of all "
                   "(tests/metrics) or a marker (-m known_answer)")
    p.add_argument("--rev", default=None, help="plant into this commit's files (git archive) instead of the working "
                                               "tree, e.g. to see which bugs an older suite let through")
    args = p.parse_args(argv)
    if args.list:
        for bug_id, (path, *_, what) in BUGS.items():
            print(f"{bug_id:18s} {path:34s} {what}")
        return 0
    unknown = [b for b in args.bugs if b not in BUGS]
    if unknown:
        print(f"unknown bug id(s) {unknown}; --list shows them", file=sys.stderr)
        return 2
    survivors = []
    for bug_id in args.bugs or list(BUGS):
        caught, test, seconds = plant(bug_id, args.pytest.split(), args.rev)
        print(f"{bug_id:18s} {'caught by ' + test if caught else 'SURVIVED'}  ({seconds:.0f} s)", flush=True)
        if not caught:
            survivors.append(bug_id)
    print(f"\n{len(survivors)} bug(s) survived: {', '.join(survivors)}" if survivors else "\nevery bug was caught")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
