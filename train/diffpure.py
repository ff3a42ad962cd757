"""DiffPure: train a target classifier (or take --target_workdir) and a diffusion score
model on the clean training images, then serve target(purify(x, key)): diffuse to
--t_star, reverse back in --reverse_steps steps (--reverse=sde as the paper, or ddpm).
The closing report attacks the bare target (the papers' protocol) and the whole random
pipeline with the exact gradient through the reverse chain and EOT (--eot_samples),
counting an example as robust only if it is right on all --eval_draws draws; it records
what one such gradient costs. samples.png shows generated images, purified.png x, x_adv
and both purified.

    python -m train.diffpure --dataset=digits --smoke --workdir=runs/diffpure-demo
    python -m train.diffpure --dataset=mnist --data_dir=../shared/data/mnist \\
        --train_split='test[:8000]' --eval_split='test[8000:]' \\
        --target_workdir=runs/std-mnist --workdir=runs/diffpure-mnist
    python -m eval.robustness --workdir=runs/diffpure-mnist --threats=target-only,whitebox
"""
import sys

from jaxdefense.cli import defense_main


def main(argv=None) -> int:
    return defense_main("diffpure", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
