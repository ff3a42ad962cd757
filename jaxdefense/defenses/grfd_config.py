"""GRFD configuration: one preset per dataset; every field is a command-line flag.

Loss weights use the paper's names (eq. 6): alpha (reconstruction, scheduled by thirds of
training), beta (KL), epsilon (rectification head L_rf), gamma (RSM classification L_cl),
delta (gradient robustness L_rb). Defaults are the paper's tuned values; the reference code
uses gamma 0.2 and delta 1.0 (see docs/grfd.md).
"""
from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass
class GRFDConfig:
    # data
    dataset: str = "mnist"            # mnist | cifar10 | cifar100 | digits (embedded, offline)
    data_dir: Optional[str] = None    # prepared tfds data, MNIST idx.gz, or <split>.npz files
    train_split: str = "train"        # tfds slicing syntax: 'test[:8000]'
    eval_split: str = "test"
    limit_train: Optional[int] = None  # use only the first N training examples
    train_fraction: float = 1.0       # then keep this fraction (paper Fig. 4b)
    limit_eval: Optional[int] = None
    augment: bool = False             # random crop (pad 4) + flip, CIFAR presets
    # models
    classifier: str = "lenet5"        # RSM and target: lenet5 | wide_resnet
    lenet_width: float = 1.0
    wrn_depth: int = 28
    wrn_widen: int = 10
    wrn_dropout: float = 0.3
    vae_kind: str = "conv"            # conv (LeNet-style) | residual (reference CIFAR VAE)
    vae_base: int = 32                # channels of the first VAE conv
    z_dim: int = 256
    dtype: str = "float32"            # compute dtype: float32 | bfloat16 (params stay float32)
    # loss (paper eq. 6)
    alpha: str = "10,5,1"             # L_rc weight over the first / second / last third
    beta: float = 0.2                 # L_kl
    epsilon: float = 0.6              # L_rf, rectification head CE
    gamma: float = 0.4                # L_cl, RSM CE on x_r
    delta: float = 0.2                # L_rb, gradient cosine robustness
    rb_samples: int = 1               # K noise draws for L_rb (vmapped)
    rb_noise: float = 0.01            # noise std in normalized units (pixel std = this * data std)
    rb_clean_at: str = "x_r"          # clean gradient at x_r (paper eq. 5) or x_u (reference code)
    # optimization (both phases)
    epochs: int = 150
    target_epochs: Optional[int] = None  # phase III epochs (default: epochs)
    batch_size: int = 128
    lr: float = 1e-3
    lr_min: float = 1e-4
    lr_period: int = 50               # epochs of the cosine half-period (torch CosineAnnealingLR)
    weight_decay: float = 1e-6
    # bookkeeping
    seed: int = 0
    workdir: str = "runs/grfd"
    keep_checkpoints: int = 3
    eval_every: int = 1               # epochs between held-out evaluations (0: only at the end)
    stop_after_epochs: Optional[int] = None  # leave after this many epochs in this call (resume later)
    attack_examples: int = 500        # examples for the closing FGSM/PGD check

    def alphas(self) -> tuple[float, float, float]:
        parts = [float(a) for a in str(self.alpha).split(",")]
        if len(parts) == 1:
            parts *= 3
        if len(parts) != 3:
            raise ValueError(f"alpha takes one value or three ('10,5,1'), got {self.alpha!r}")
        return tuple(parts)

    def alpha_at(self, epoch: int) -> float:
        """The reconstruction weight for a 0-based epoch (thirds of `epochs`)."""
        third = min(2, epoch * 3 // max(1, self.epochs))
        return self.alphas()[third]

    def validate(self):
        from jaxdefense.data import dataset_info
        dataset_info(self.dataset)
        checks = [
            (self.classifier in ("lenet5", "wide_resnet"), "classifier must be lenet5 or wide_resnet"),
            (self.vae_kind in ("conv", "residual"), "vae_kind must be conv or residual"),
            (self.rb_clean_at in ("x_r", "x_u"), "rb_clean_at must be x_r or x_u"),
            (self.dtype in ("float32", "bfloat16"), "dtype must be float32 or bfloat16"),
            (0 < self.train_fraction <= 1, "train_fraction must be in (0, 1]"),
            (self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1"),
            (self.rb_samples >= 1 and self.rb_noise >= 0, "rb_samples >= 1 and rb_noise >= 0"),
            (min(self.beta, self.epsilon, self.gamma, self.delta) >= 0, "loss weights must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        self.alphas()
        return self


# Field overrides per preset; anything not named keeps the dataclass default.
PRESETS = {
    "mnist": dict(dataset="mnist"),
    "digits": dict(dataset="digits", epochs=30, batch_size=64, eval_every=5),
    "cifar10": dict(dataset="cifar10", classifier="wide_resnet", vae_kind="residual",
                    vae_base=16, z_dim=2048, augment=True),
    "cifar100": dict(dataset="cifar100", classifier="wide_resnet", vae_kind="residual",
                     vae_base=16, z_dim=2048, augment=True),
}

# --smoke: every model tiny, a few hundred examples, two epochs: a full run in about a minute.
SMOKE = dict(lenet_width=0.5, wrn_depth=10, wrn_widen=1, vae_base=8, z_dim=32, epochs=2,
             batch_size=64, limit_train=512, limit_eval=256, attack_examples=128, eval_every=1)


def preset(dataset: str, smoke: bool = False, **overrides) -> GRFDConfig:
    if dataset not in PRESETS:
        raise ValueError(f"no GRFD preset for {dataset!r}; choose one of {sorted(PRESETS)}")
    fields = dict(PRESETS[dataset])
    if smoke:
        fields.update(SMOKE)
    fields.update(overrides)
    return GRFDConfig(**fields)
