"""bench as a package a stranger installs: the wheel, the console scripts, --help, ``python -m
bench``, timm through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

import bench
from bench.cli import commands



ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


# --------------------------------------------------------------------------- help, version, pipes
def test_every_console_script_goes_through_the_command_table():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(commands.COMMANDS)
    for name, target in scripts.items():
        module, func = target.split(":")
        assert module == "bench.cli.commands" and getattr(commands, func).__name__ == name.replace("-", "_")


def test_help_of_every_tool_says_what_it_does_without_importing_torch():
    # One fresh interpreter asks every tool for --help, then reports what it imported.
    code = ("import sys, contextlib, io, json\nfrom bench.cli import commands\nout = {}\n"
            "for name in commands.COMMANDS:\n"
            "    buf = io.StringIO()\n"
            "    with contextlib.redirect_stdout(buf):\n"
            "        rc = commands.run(name, ['--help'])\n"
            "    out[name] = [rc, buf.getvalue()]\n"
            "print(json.dumps({'help': out, 'heavy': sorted(m for m in ('torch', 'pandas', 'scipy', 'sklearn', "
            "'torchvision', 'timm') if m in sys.modules)}))")
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["heavy"] == []
    for name, (rc, text) in result["help"].items():
        assert rc == 0, name
        first_sentence = commands.COMMANDS[name].summary.split(".")[0]
        assert first_sentence.split()[0] in text, name
        assert name in text  # the usage line names the tool
    train_help = result["help"]["bench-train"][1]
    for group in ("data:", "optim:", "sched:", "trainer:", "experiment:", "model:", "gavas2021", "quickstart"):
        assert group in train_help
    assert "-sc install=bash" in train_help and "--cfg job" in train_help


def test_version_names_bench_and_what_it_runs_on(capsys):
    assert commands.run("bench-train", ["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"bench {bench.__version__} (") and "torch " in out and "Hydra " in out


@pytest.mark.parametrize("pattern", [[], ["vgg1*"]], ids=["long", "short"])
def test_a_closed_pipe_ends_a_listing_quietly(pattern):
    # The reader is gone before the first line (`bench-models | head` once head has exited). A short
    # listing fits the pipe's buffer and meets the closed pipe only when stdout is flushed.
    code = ("import os, sys\nr, w = os.pipe()\nos.close(r)\nos.dup2(w, 1)\n"
            f"from bench.cli import commands\nrc = commands.run('bench-models', {pattern!r})\n"
            "os.write(2, f'rc={rc}'.encode())\nsys.exit(rc)")
    proc = _python(code)
    assert proc.returncode == 0
    assert proc.stderr == "rc=0", proc.stderr  # no traceback, no "Exception ignored"


def test_python_dash_m_bench_lists_and_runs_the_tools():
    listing = subprocess.run([sys.executable, "-m", "bench"], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0 and all(name in listing.stdout for name in commands.COMMANDS)
    models = subprocess.run([sys.executable, "-m", "bench", "models", "vgg1*"], capture_output=True, text=True,
                            timeout=300)
    assert models.returncode == 0
    assert [line.split()[0] for line in models.stdout.splitlines()[1:]] == [
        "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]
    unknown = subprocess.run([sys.executable, "-m", "bench", "nope"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "no command 'nope'" in unknown.stderr
    train_help = subprocess.run([sys.executable, "-m", "bench.cli.train", "--help"], capture_output=True, text=True,
                                timeout=120)
    assert train_help.returncode == 0 and train_help.stdout.startswith("usage: bench-train"), train_help.stdout[:200]


def test_cli_defaults_are_the_api_defaults():
    from bench.cli import parsers as cli
    from bench.metrics import statistics as stats
    from bench.benchmark import common
    from bench.ensemble.folders import METHODS as ENSEMBLE_METHODS
    from bench.predict import METHODS as PREDICT_METHODS
    from bench.report.tables import DEFAULT_TOP

    assert (cli.STATS_RESAMPLES, cli.STATS_SEED, cli.STATS_CONFIDENCE, cli.STATS_ALPHA) == (
        stats.DEFAULT_RESAMPLES, stats.DEFAULT_SEED, stats.DEFAULT_CONFIDENCE, stats.DEFAULT_ALPHA)
    assert cli.REPORT_TOP == DEFAULT_TOP
    assert cli.BENCHMARK_MODES == tuple(m for m, _, _ in common.MODES)
    assert set(cli.ENSEMBLE_METHODS) == set(ENSEMBLE_METHODS)
    assert set(cli.PREDICT_METHODS) == set(PREDICT_METHODS)


# --------------------------------------------------------------------------- Hydra's own flags
def _bench_train(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", "train", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def test_hydra_flags_pass_through(tmp_path, monkeypatch, capsys):
    from bench.cli.train import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["bench-train"])
    assert cli(["--cfg", "job", "model=vgg16", "trainer.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "name: vgg16" in out and "epochs: 3" in out
    assert cli(["--info", "config"]) == 0
    assert "Config search path" in capsys.readouterr().out
    completion = _bench_train("-sc", "install=bash", cwd=tmp_path)  # prints a script for the shell
    assert completion.returncode == 0, completion.stderr
    assert "complete" in completion.stdout and "hydra_bash_completion" in completion.stdout
    assert not any(tmp_path.iterdir())  # nothing was trained or written


# --------------------------------------------------------------------------- timm through the CLI
def test_a_timm_model_trains_from_the_command_line(tmp_path, cache_dir):
    from bench.cli.train import cli

    from tests.helpers import SMOKE_OVERRIDES

    overrides = [o for o in SMOKE_OVERRIDES if not o.startswith("model=")]
    rc = cli(["model=timm/resnet10t", *overrides, "trainer.epochs=1", f"paths.results_dir={tmp_path}",
              f"paths.cache_dir={cache_dir}"])
    assert rc == 0
    metrics = json.loads((tmp_path / "synthetic" / "runs" / "timm--resnet10t" / "seed0" / "metrics.json").read_text())
    assert metrics["model"] == "timm/resnet10t" and metrics["status"] == "completed"
    board = pd.read_csv(tmp_path / "synthetic" / "leaderboard.csv")
    assert board["model"].tolist() == ["timm/resnet10t"]


def test_a_timm_sweep_list_composes():
    from bench.cli.checks import register_requested_timm_models
    from bench.preflight import plan_runs

    args = ["-m", "model=resnet18,timm/resnet10t,timm/mobilenetv3_small_050", "data.root=/data"]
    register_requested_timm_models(args)
    plan = plan_runs(args)
    assert plan.models == ["resnet18", "timm/resnet10t", "timm/mobilenetv3_small_050"]


# --------------------------------------------------------------------------- the wheel
@pytest.mark.slow
def test_the_wheel_installs_and_runs_the_quickstart_from_another_folder(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("bench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "bench/conf/config.yaml" in names and "bench/conf/experiment/gavas2021.yaml" in names
    assert "bench/reference/gavas2021_table2.csv" in names
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # the installed copy comes before the source tree
    where = _python("import bench; print(bench.__file__)", cwd=work, env=env)
    assert where.stdout.strip() == str(site / "bench" / "__init__.py")
    run = subprocess.run(
        [sys.executable, "-m", "bench", "train", "-m", "experiment=quickstart", "model=resnet18",
         "trainer.epochs=1", "data.synthetic_n_per_class=30", "data.image_size=32", "trainer.progress=false"],
        cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    board = pd.read_csv(work / "results" / "quickstart" / "leaderboard.csv")
    assert board["model"].tolist() == ["resnet18"] and board["status"].tolist() == ["completed"]
    assert board["paper_test_acc"].notna().all()  # the published Table 2 shipped with the wheel
    report = subprocess.run([sys.executable, "-m", "bench", "report", "results/quickstart"], cwd=work, env=env,
                            capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (work / "results" / "quickstart" / "report" / "report.md").read_text()
    assert "Gavas & Olpadkar 2021, Table 2" in text and "Gavas & Olpadkar 2021, Table 3" in text


def test_python_m_bench_gives_each_tools_whole_first_sentence():
    from bench.cli.commands import COMMANDS, list_commands

    text = list_commands()
    assert "bench-svm            SVMs on frozen-CNN features (Acevedo et al. 2019)" in text
    assert "(e.g. results/scratch_vs_pretrained" in text
    for line in text.splitlines()[3:]:
        assert line.count("(") == line.count(")"), line  # no description cut inside a parenthesis
    assert len(text.splitlines()) == 3 + len(COMMANDS)
