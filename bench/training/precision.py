"""Which precision and memory format a run trains in.

On CUDA: bf16 autocast and channels_last. On a CPU with bf16 kernels (AVX512-BF16 / AMX)
bf16 helps dense convolutions a lot and hurts depthwise ones (docs/benchmarks.md), so with
``trainer.amp=null`` the run's first batches decide: ``TRIAL_BATCHES`` in fp32, the next in
bf16, all of them real training, each step timed. The trial is folded into a per-machine,
per-model record (``<paths.cache_dir>/cpu_precision.json``) that keeps the fastest step seen
per precision, and the choice is read from the record: a busy machine only slows steps down,
so a trial taken while another job shared the CPU is corrected by the next quiet one.
"""

from __future__ import annotations

import itertools
import logging
import platform
import time
from pathlib import Path

import torch

from bench import runs
from bench.training.engine import cpu_bf16_supported, train_one_epoch

log = logging.getLogger("bench.train")

# bf16 autocast is kept on a CPU only when it trains the model at least this much faster.
BF16_CPU_MIN_GAIN = 1.10
TRIAL_BATCHES = 3  # batches per precision in the trial (the first is warm-up, not timed)


def resolve_precision(tcfg, device: torch.device) -> tuple[bool | None, bool]:
    """``(amp, channels_last)`` from ``trainer.amp`` / ``trainer.channels_last``.

    ``null`` means: on CUDA both on; on a CPU channels_last on (faster for every model
    measured once the precision is chosen) and amp ``None``, i.e. decided by the timed trial
    when the CPU has bf16 kernels (bf16 + channels_last is 1.3-1.9x fp32 for squeezenet1_1,
    resnet18, densenet121, googlenet on a Xeon with AMX, but 0.7x for mobilenet_v2 and 0.9x
    for alexnet), off otherwise. Elsewhere (MPS) both off.
    """
    on_cuda, on_cpu = device.type == "cuda", device.type == "cpu"
    channels_last = (on_cuda or on_cpu) if tcfg.channels_last is None else bool(tcfg.channels_last)
    if tcfg.amp is not None:
        return bool(tcfg.amp), channels_last
    if on_cuda:
        return True, channels_last
    return (None if on_cpu and cpu_bf16_supported() else False), channels_last


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def precision_record_key(model_name: str, image_size: int, batch_size: int, channels_last: bool) -> str:
    """What a step time depends on: the model and its input, the threads, the CPU, torch."""
    return "|".join(map(str, [model_name, image_size, batch_size, channels_last, torch.get_num_threads(),
                              cpu_model(), torch.__version__]))


def read_precision_records(path: Path | None) -> dict:
    if path is None or not path.exists():
        return {}
    try:
        return runs.read_json(path)
    except (OSError, ValueError):
        return {}


def precision_trial(model, batches, optimizer, criterion, *, device, aux_weight, grad_accum,
                    on_batch) -> tuple[dict, list[dict]]:
    """Train the next ``TRIAL_BATCHES`` batches in fp32 and the ones after with bf16 autocast,
    timing each step. Returns the fastest step time per precision (``{False: s, True: s}``)
    and the partial epoch results (the caller merges them into the epoch's)."""
    parts, step_s = [], {}
    for amp in (False, True):
        stamps: list[float] = []

        def stamp(info, stamps=stamps):
            stamps.append(time.perf_counter())
            on_batch(info)

        parts.append(train_one_epoch(
            model, itertools.islice(batches, TRIAL_BATCHES * grad_accum), optimizer, criterion, device=device,
            amp=amp, aux_weight=aux_weight, grad_accum=grad_accum, on_batch=stamp,
        ))
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        step_s[amp] = min(gaps) if gaps else float("nan")
    return step_s, parts


def fold_trial(step_s: dict, earlier: dict) -> dict:
    """This machine's record for a model after one more trial, with the choice it implies.

    The record keeps the fastest step ever timed per precision (contention only makes steps
    slower, so the minimum tends to the unloaded speed). bf16 must beat fp32 by
    ``BF16_CPU_MIN_GAIN``; a missing time (NaN) never wins.
    """
    def fastest(amp: bool) -> float:
        times = [t for t in (step_s.get(amp), earlier.get(f"step_s_{'bf16' if amp else 'fp32'}"))
                 if t is not None and t == t]
        return min(times) if times else float("nan")

    fp32, bf16 = fastest(False), fastest(True)
    return {"amp": bool(fp32 >= BF16_CPU_MIN_GAIN * bf16), "step_s_fp32": fp32, "step_s_bf16": bf16,
            "trials": int(earlier.get("trials", 0)) + 1}


def _ms(seconds: float) -> str:
    """A step time for the log; a precision whose trial had too few batches to time was not tried."""
    return "not tried" if seconds != seconds else f"{1e3 * seconds:.0f} ms"


def choose_cpu_precision(model, batches, optimizer, criterion, *, device, aux_weight, grad_accum, on_batch,
                         record_path: Path | None, key: str, model_name: str) -> tuple[bool, list[dict]]:
    """Run the trial on the first batches of ``batches``, update the machine's record and
    return ``(amp, partial epoch results)``."""
    step_s, parts = precision_trial(model, batches, optimizer, criterion, device=device, aux_weight=aux_weight,
                                    grad_accum=grad_accum, on_batch=on_batch)
    records = read_precision_records(record_path)
    record = fold_trial(step_s, records.get(key, {}))
    log.info("%s: step fp32 %s, bf16 %s (fastest of %d trial(s) on this machine: %s / %s) -> amp=%s", model_name,
             _ms(step_s[False]), _ms(step_s[True]), record["trials"], _ms(record["step_s_fp32"]),
             _ms(record["step_s_bf16"]), record["amp"])
    if record_path is not None:
        records[key] = record
        runs.write_json_atomic(record_path, records)
    return record["amp"], parts
