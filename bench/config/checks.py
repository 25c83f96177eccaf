"""One validation pass over a composed config: every value that cannot run, each named in one
sentence with the option, the value and what is valid (:func:`validate_config`), before
anything trains. The schema (:mod:`bench.config`) already rejects unknown keys and wrong types
of typed keys; this catches ranges, choices, contradictions and the free-form optimizer's values."""

from __future__ import annotations

from collections.abc import Mapping

from bench.config import (CLASS_WEIGHTS, DATA_KINDS, DETECTION_KINDS, INTERPOLATIONS, LOGGERS, MAX_IMAGE_SIZE,
                          SAMPLERS, SELECT_BY, SPLIT_MODES, STAIN_METHODS, STORE_MODES)


def validate_config(cfg) -> list[str]:
    """Every bad value of a composed config, each as one sentence naming the option, the value and
    what is valid; [] when the config can run. The schema already rejects unknown keys and wrong
    types of typed keys; this catches ranges, choices, and the free-form optimizer's values."""
    c = _Checks()
    _check_data_values(c, cfg.data)
    _check_trainer_values(c, cfg.trainer)
    _check_model_values(c, cfg.model)
    if "logger" in cfg:
        c.choice("logger", cfg.logger.kind, LOGGERS)
    if "referral" in cfg:
        c.number("referral.target_acc", cfg.referral.target_acc, low=0, high=1, low_open=True)
    _check_optim_sched_values(c, cfg.optim or {}, cfg.sched or {})
    return c.problems


class _Checks:
    """Collects one sentence per bad value."""

    def __init__(self):
        self.problems: list[str] = []

    def check(self, ok: bool, option: str, value, valid: str) -> None:
        if not ok:
            self.problems.append(f"{option}={value!r} is not valid: {valid}.")

    def choice(self, option: str, value, choices) -> None:
        self.check(value in choices, option, value, "use one of " + ", ".join(str(c) for c in choices))

    def number(self, option: str, value, *, low=None, high=None, low_open=False, integer=False, null=False) -> None:
        if value is None and null:
            return
        is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
        if integer:
            is_num = is_num and float(value).is_integer()
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low}")
        if high is not None:
            bounds.append(f"<= {high}")
        kind = "an integer" if integer else "a number"
        valid = f"{kind}{' ' + ' and '.join(bounds) if bounds else ''}{' (or null)' if null else ''}"
        if not is_num:
            self.check(False, option, value, valid)
            return
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and value > high
        self.check(not (too_low or too_high), option, value, valid)


def _check_data_values(c: _Checks, data) -> None:
    c.choice("data.kind", data.kind, DATA_KINDS + DETECTION_KINDS)
    c.choice("data.coordinates", data.get("coordinates", "auto"), ("auto", "pixel", "fraction"))
    c.number("data.image_size", data.image_size, low=8, high=MAX_IMAGE_SIZE, integer=True, null=True)
    fractions = list(data.split_fractions)
    c.check(len(fractions) == 3 and all(isinstance(f, (int, float)) and f > 0 for f in fractions),
            "data.split_fractions", fractions, "three positive fractions (train, val, test), e.g. [0.64,0.24,0.12]")
    c.choice("data.split_mode", data.split_mode, SPLIT_MODES)
    c.check(data.split_mode != "leave_one_source_out" or data.kind == "multi_source", "data.split_mode",
            data.split_mode, "holding a source out needs data=multi_source with data.sources={NAME: PATH, ...}")
    # Maps typed Any in the schema (a {...} override into a null map fails otherwise): their type is checked here.
    for key, example in (("sources", "{pbc: /data/PBC, tecom: /data/tecom}"),
                         ("source_maps", "{tecom: segmentation_wbc_dataset1}"),
                         ("class_map", "{neutrophil: granulocyte}"), ("label_map", "{neutrophil: wbc}")):
        value = data.get(key)
        c.check(value is None or isinstance(value, Mapping), f"data.{key}", value, f"a map, e.g. data.{key}={example} "
                "(quote the whole option for the shell; '++data.KEY={...}' adds to a map an experiment already sets)")
    if data.kind == "multi_source" and data.split_mode == "leave_one_source_out":
        names = list(data.get("sources") or {})
        c.check(data.get("test_source") in names, "data.test_source", data.get("test_source"),
                f"name the source held out as the test set, one of {', '.join(map(str, names)) or 'data.sources'}")
    c.choice("data.store", data.store, STORE_MODES)
    c.choice("data.split_rounding", data.split_rounding, ("round", "ceil"))
    c.choice("data.geometry", data.geometry, ("resize", "resize_crop"))
    c.number("data.crop_fraction", data.crop_fraction, low=0, high=1, low_open=True)
    stain = data.get("stain", "none")
    c.choice("data.stain", stain, STAIN_METHODS)
    c.check(stain == "none" or data.kind not in DETECTION_KINDS, "data.stain", stain,
            f"stain normalisation is for cell images; data.kind={data.kind} trains a detector on whole fields, "
            "so set data.stain=none")
    aug = data.augment
    c.choice("data.augment.interpolation", aug.interpolation, INTERPOLATIONS)
    c.number("data.augment.rotation", aug.rotation, low=0, high=180)
    for key in ("brightness", "contrast", "saturation"):
        c.number(f"data.augment.{key}", getattr(aug, key), low=0)
    c.number("data.augment.hue", aug.hue, low=0, high=0.5)
    c.number("data.augment.hed", aug.get("hed", 0.0), low=0, high=1)
    c.number("data.decode_workers", data.decode_workers, low=0, integer=True)
    jitter = data.get("scale_jitter")
    if jitter is not None:
        jitter = list(jitter)
        c.check(len(jitter) == 2 and all(isinstance(v, (int, float)) for v in jitter) and 0 < jitter[0] <= jitter[1],
                "data.scale_jitter", jitter, "two zoom factors [lo, hi] with 0 < lo <= hi, e.g. [0.75, 1.25] (or null)")


def _check_model_values(c: _Checks, model) -> None:
    c.number("model.head_keep_fc", model.get("head_keep_fc"), low=0, integer=True, null=True)
    c.number("model.trainable_blocks", model.get("trainable_blocks"), low=0, integer=True, null=True)
    c.number("model.max_detections", model.get("max_detections"), low=1, integer=True)
    conv_blocks = model.get("trainable_conv_blocks")
    c.number("model.trainable_conv_blocks", conv_blocks, low=0, integer=True, null=True)
    c.check(conv_blocks is None or (model.get("trainable_blocks") is None and not model.get("freeze_backbone")),
            "model.trainable_conv_blocks", conv_blocks,
            "it, model.trainable_blocks and model.freeze_backbone each say how much trains; set only one")


def _check_trainer_values(c: _Checks, trainer) -> None:
    c.number("trainer.epochs", trainer.epochs, low=1, integer=True)
    c.number("trainer.batch_size", trainer.batch_size, low=1, integer=True)
    c.number("trainer.eval_batch_size", trainer.eval_batch_size, low=1, integer=True)
    c.number("trainer.grad_accum", trainer.grad_accum, low=1, high=max(1, trainer.batch_size), integer=True)
    c.number("trainer.label_smoothing", trainer.label_smoothing, low=0, high=0.99)
    c.number("trainer.num_threads", trainer.num_threads, low=1, integer=True, null=True)
    c.number("trainer.max_batches", trainer.max_batches, low=1, integer=True, null=True)
    c.number("trainer.checkpoint_every_s", trainer.checkpoint_every_s, low=0)
    c.number("trainer.warmup_steps", trainer.get("warmup_steps", 0), low=0, integer=True)
    c.choice("trainer.select_by", trainer.select_by, SELECT_BY)
    c.choice("trainer.class_weights", trainer.class_weights, CLASS_WEIGHTS)
    c.choice("trainer.sampler", trainer.sampler, SAMPLERS)
    balance_to = trainer.get("balance_to")
    c.number("trainer.balance_to", balance_to, low=1, integer=True, null=True)
    c.check(balance_to is None or trainer.sampler == "shuffle", "trainer.balance_to", balance_to,
            "it and trainer.sampler=balanced both balance the classes; set trainer.sampler=shuffle or balance_to=null")
    c.choice("trainer.sched_interval", trainer.sched_interval, ("epoch", "step"))


def _check_optim_sched_values(c: _Checks, optim, sched) -> None:
    for key, low, high, low_open in (("lr", 0, None, True), ("momentum", 0, 0.9999, False),
                                     ("weight_decay", 0, None, False), ("eps", 0, None, True)):
        if key in optim:
            c.number(f"optim.{key}", optim[key], low=low, high=high, low_open=low_open)
    if "betas" in optim:
        betas = list(optim.betas)
        c.check(len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas),
                "optim.betas", betas, "two numbers in [0, 1), e.g. [0.9,0.999]")
    for key in ("step_size", "T_max"):
        if key in sched:
            c.number(f"sched.{key}", sched[key], low=1, integer=True)
    if "gamma" in sched:
        c.number("sched.gamma", sched.gamma, low=0, high=1, low_open=True)


class ConfigValueError(ValueError):
    """A composed config with values that cannot run; the message lists every one of them."""


def check_config(cfg) -> None:
    """Raise :class:`ConfigValueError` listing every problem :func:`validate_config` finds."""
    problems = validate_config(cfg)
    if problems:
        raise ConfigValueError(" ".join(problems))
