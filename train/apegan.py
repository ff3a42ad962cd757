"""APE-GAN: train a target classifier (or take --target_workdir), craft FGSM examples
against it, train the generator and discriminator, report the papers' protocol
(target-only) and the white-box numbers; purified.png shows x, x_adv and G's output.

    python -m train.apegan --dataset=digits --smoke --workdir=runs/apegan-demo
    python -m train.apegan --dataset=mnist --data_dir=../shared/data/mnist \\
        --train_split='test[:8000]' --eval_split='test[8000:]' \\
        --target_workdir=runs/std-mnist --purifier_epochs=15 --workdir=runs/apegan-mnist
    python -m eval.robustness --workdir=runs/apegan-mnist --threats=target-only,whitebox
"""
import sys

from jaxdefense.cli import defense_main


def main(argv=None) -> int:
    return defense_main("apegan", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
