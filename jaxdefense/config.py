"""The fields every experiment shares (data, classifier, optimization, bookkeeping).

A defense's config subclasses `ExperimentConfig` and adds its own fields; the command line
(`jaxdefense.cli`) turns every field into a flag.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp
import numpy as np

from jaxdefense.data import dataset_info

CLASSIFIER_NAMES = ("lenet5", "lenet5_advertorch", "wide_resnet", "resnet18", "vgg16_bn")


@dataclasses.dataclass
class ExperimentConfig:
    # data
    dataset: str = "mnist"            # mnist | cifar10 | cifar100 | digits (embedded, offline)
    data_dir: Optional[str] = None    # prepared tfds data, MNIST idx.gz, or <split>.npz files
    train_split: str = "train"        # tfds slicing syntax: 'test[:8000]'
    eval_split: str = "test"
    limit_train: Optional[int] = None  # use only the first N training examples
    train_fraction: float = 1.0       # then keep this (seeded) fraction (GRFD paper Fig. 4b)
    limit_eval: Optional[int] = None
    augment: bool = False             # random crop (pad 4) + flip, CIFAR presets
    # classifier
    classifier: str = "lenet5"        # lenet5 | lenet5_advertorch | wide_resnet | resnet18 |
                                      # vgg16_bn
    lenet_width: float = 1.0          # channel multiplier of both LeNet-5s
    width: float = 1.0                # channel multiplier of resnet18 / vgg16_bn (tests: 0.125)
    wrn_depth: int = 28
    wrn_widen: int = 10
    wrn_dropout: float = 0.3
    dtype: str = "float32"            # compute dtype: float32 | bfloat16 (params stay float32;
                                      # slower than float32 for GRFD on an H200: BENCHMARKS.md)
    # optimization: adamw (torch's per-epoch CosineAnnealingLR) or sgd (momentum, step decay)
    optimizer: str = "adamw"
    epochs: int = 150
    batch_size: int = 128
    lr: float = 1e-3
    lr_min: float = 1e-4              # adamw: cosine floor
    lr_period: int = 50               # adamw: epochs of the cosine half-period
    lr_milestones: str = "75,90"      # sgd: epochs after which lr is multiplied by lr_decay
    lr_decay: float = 0.1
    momentum: float = 0.9             # sgd
    weight_decay: float = 1e-6        # adamw: decoupled; sgd: L2 added to the gradient
    # bookkeeping
    seed: int = 0
    workdir: str = "runs/experiment"
    keep_checkpoints: int = 3
    eval_every: int = 1               # epochs between held-out evaluations (0: only at the end)
    stop_after_epochs: Optional[int] = None  # leave after this many epochs in this call (resume later)
    checkpoint_every_steps: int = 0   # also checkpoint inside an epoch every N steps (0: never)
    checkpoint_every_seconds: float = 0  # ... or when this many seconds passed since the last
    attack_examples: int = 500        # examples for the closing white-box attack check
                                      # (0: none; a table run attacks the model itself)
    attack_max_steps: Optional[int] = None  # cap on the closing attacks' iterations (smoke runs)

    def validate(self):
        dataset_info(self.dataset)
        checks = [
            (self.classifier in CLASSIFIER_NAMES,
             f"classifier must be one of {', '.join(CLASSIFIER_NAMES)}"),
            (self.optimizer in ("adamw", "sgd"), "optimizer must be adamw or sgd"),
            (self.dtype in ("float32", "bfloat16"), "dtype must be float32 or bfloat16"),
            (0 < self.train_fraction <= 1, "train_fraction must be in (0, 1]"),
            (self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1"),
            (self.checkpoint_every_steps >= 0 and self.checkpoint_every_seconds >= 0,
             "checkpoint_every_steps and checkpoint_every_seconds must be >= 0 (0: off)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        self.milestones()
        return self

    def milestones(self) -> tuple[int, ...]:
        """The sgd schedule's decay epochs, e.g. (75, 90)."""
        try:
            return tuple(int(m) for m in str(self.lr_milestones).split(",") if m.strip())
        except ValueError:
            raise ValueError(f"lr_milestones takes comma-separated epochs ('75,90'), "
                             f"got {self.lr_milestones!r}") from None


# Fields that may change between a run and its resumption.
RESUMABLE = {"workdir", "data_dir", "stop_after_epochs", "eval_every", "attack_examples",
             "attack_max_steps", "checkpoint_every_steps", "checkpoint_every_seconds",
             "keep_checkpoints", "limit_eval"}


def make_classifier(cfg: ExperimentConfig, residual_input: bool = False, feature_hook=None):
    """The configured classifier. residual_input: it reads a residual such as GRFD's x_r
    (centred near 0), so it divides by the data std without subtracting the mean.
    feature_hook: a module applied at the backbone's feature insertion point (FSR)."""
    from jaxdefense.models import build_classifier
    info = dataset_info(cfg.dataset)
    mean = (0.0,) * len(info["mean"]) if residual_input else info["mean"]
    common = dict(num_classes=info["num_classes"], mean=mean, std=info["std"],
                  dtype=jnp.dtype(cfg.dtype), feature_hook=feature_hook)
    if cfg.classifier in ("lenet5", "lenet5_advertorch"):
        return build_classifier(cfg.classifier, width=cfg.lenet_width, **common)
    if cfg.classifier == "wide_resnet":
        return build_classifier("wide_resnet", depth=cfg.wrn_depth, widen=cfg.wrn_widen,
                                dropout=cfg.wrn_dropout, **common)
    return build_classifier(cfg.classifier, width=cfg.width, **common)


CLASSIFIER_PRESETS = {
    "mnist": dict(dataset="mnist"),
    "digits": dict(dataset="digits", epochs=30, batch_size=64, eval_every=5),
    "cifar10": dict(dataset="cifar10", classifier="wide_resnet", augment=True),
    "cifar100": dict(dataset="cifar100", classifier="wide_resnet", augment=True),
}
SMOKE = dict(lenet_width=0.5, width=0.125, wrn_depth=10, wrn_widen=1, epochs=2, batch_size=64,
             limit_train=512, limit_eval=256, attack_examples=128, eval_every=1,
             attack_max_steps=10)


def with_cifar100(presets: dict) -> dict:
    """`presets` plus a 'cifar100' entry: the 'cifar10' one on CIFAR-100 (for defenses whose
    papers have no CIFAR-100 setting: the same networks and schedule, 100 classes)."""
    return {**presets, "cifar100": {**presets["cifar10"], "dataset": "cifar100"}}


def build_preset(config_cls, presets: dict, smoke_fields: dict, what: str, dataset: str,
                 smoke: bool, overrides: dict):
    """config_cls from presets[dataset], then smoke_fields (if smoke), then overrides."""
    if dataset not in presets:
        raise ValueError(f"no {what}preset for {dataset!r}; choose one of {sorted(presets)}")
    return config_cls(**{**presets[dataset], **(smoke_fields if smoke else {}), **overrides})


def load_datasets(cfg: ExperimentConfig):
    """(train, eval) Datasets as configured: limits, then a seeded train fraction."""
    from jaxdefense import data
    train = data.load(cfg.dataset, cfg.train_split, cfg.data_dir).take(cfg.limit_train)
    if cfg.train_fraction < 1:
        keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(train))
                       [:max(1, int(cfg.train_fraction * len(train)))])
        train = dataclasses.replace(train, x=train.x[keep], y=train.y[keep])
    test = data.load(cfg.dataset, cfg.eval_split, cfg.data_dir).take(cfg.limit_eval)
    return train, test


def check_workdir(cfg: ExperimentConfig, defense: str) -> None:
    """Refuse to resume a workdir that was trained with a different defense or settings."""
    import os
    from jaxdefense import checkpoint
    if not os.path.isfile(os.path.join(cfg.workdir, checkpoint.CONFIG_FILE)):
        return
    old_defense, old = checkpoint.load_config(cfg.workdir)
    diff = {k: f"{old.get(k)} -> {v}" for k, v in dataclasses.asdict(cfg).items()
            if k not in RESUMABLE and old.get(k, v) != v}  # fields added later: default
    if old_defense != defense or diff:
        raise ValueError(f"{cfg.workdir} holds a {old_defense} run with other settings {diff}; "
                         f"use a new --workdir to start afresh")


def start(cfg: ExperimentConfig, defense: str):
    """Validate, refuse a mismatching workdir, load the data, record the config.

    Returns (train, test, metrics_path, steps_per_epoch). Nothing is written before the
    data has loaded, so a failed start leaves no workdir behind; an unwritable workdir is
    refused first (CheckpointWriteError).
    """
    import os
    from jaxdefense import checkpoint, files
    cfg.validate()
    check_workdir(cfg, defense)
    try:
        files.probe_writable(cfg.workdir)
    except OSError as e:
        raise checkpoint.CheckpointWriteError(
            f"cannot write to --workdir {cfg.workdir}: {e}; choose another") from e
    train, test = load_datasets(cfg)
    checkpoint.save_config(cfg.workdir, defense, dataclasses.asdict(cfg))
    return train, test, os.path.join(cfg.workdir, "metrics.jsonl"), len(train) // cfg.batch_size
