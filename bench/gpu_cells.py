"""The MNIST cells this project's CPU cannot measure, filled on a lent GPU within a time
budget, into the committed record (`results/`):

1. ARN at the reference size (encoder base 128, z 2048, two seen attacks) trained on MNIST
   `test[:8000]` and its ARN Table 1 row (ARN_PP), beside the undefended row it needs;
2. DiffPure's adaptive attack on a subset (`--diffpure_examples`) of GRFD's Table 3, in front
   of the committed undefended LeNet-5;
3. the GPU speed tables (`bench/gpu.py`: GRFD's step in float32 / bfloat16, PGD, APGD-CE and
   AutoAttack).

    python bench/gpu_cells.py --budget_s=540                  # on the GPU machine
    python bench/gpu_cells.py --smoke --out=/tmp/cells        # anywhere: digits, tiny sizes

Each step is a command of the project run as a process with what is left of the budget;
when the budget runs out the running step gets SIGTERM, stops after its batch in flight
(exit 75) and the same command resumes it later from the record. Prints one line per step
(exit status, seconds) and exits 0 when every step finished, 75 when the budget stopped one.
A user with a GPU fills these cells with `python bench/gpu_cells.py` and commits `results/`.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = ["--dataset=mnist", "--data_dir=../shared/data/mnist", "--train_split=test[:8000]",
         "--eval_split=test[8000:]"]


def steps(args) -> list:
    """(name, argv) of each step, in order of value."""
    py = sys.executable
    if args.smoke:
        tiny = ["--dataset=digits", "--smoke", "--examples=16", "--epochs=1", "--checks=0",
                f"--record={args.out}/record"]
        return [
            ("arn-table1", [py, "-m", "eval.table", "--paper=arn", "--table=1", *tiny,
                            f"--root={args.out}/arn", "--columns=none,arn_pp",
                            "--attacks=pgd", "--set=limit_train=128,limit_eval=32,"
                            "batch_size=32,attack_examples=0,purifier_epochs=1"]),
            ("diffpure", [py, "-m", "eval.table3", *tiny, f"--root={args.out}/t3",
                          "--columns=diffpure", "--attacks=pgd",
                          "--set=limit_train=128,limit_eval=32,batch_size=32,"
                          "attack_examples=0,purifier_epochs=1,reverse_steps=2,"
                          "lenet_width=0.25"]),
            ("speed", [py, os.path.join(REPO, "bench", "gpu.py"), "--smoke", "--repeats=1",
                       "--ks=1", "--attacks=PGD-20"]),
        ]
    return [
        ("arn-table1", [py, "-m", "eval.table", "--paper=arn", "--table=1", *MNIST,
                        "--root=runs/arn", "--record=results", "--examples=1000",
                        "--columns=none,arn_pp"]),          # the preset: reference size
        ("diffpure", [py, "-m", "eval.table3", *MNIST, "--root=runs/t3-paper",
                      "--record=results", f"--examples={args.diffpure_examples}",
                      "--columns=diffpure",
                      "--existing=standard:results/models/grfd-mnist/standard"]),
        ("speed", [py, os.path.join(REPO, "bench", "gpu.py"), "--torch"]),
    ]


def run_step(argv, seconds_left: float) -> tuple:
    """(exit status, seconds) of one step given what is left of the budget; SIGTERM at the
    deadline, then up to 120 s for its batch in flight, then SIGKILL."""
    start = time.time()
    proc = subprocess.Popen(argv, cwd=REPO)
    try:
        rc = proc.wait(timeout=max(seconds_left, 1))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    return rc, time.time() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget_s", type=float, default=540.0,
                   help="wall seconds for all steps (default 540: a 10-minute loan)")
    p.add_argument("--steps", default="arn-table1,diffpure,speed",
                   help="comma list of steps, in this order")
    p.add_argument("--diffpure_examples", type=int, default=200)
    p.add_argument("--smoke", action="store_true", help="digits and tiny sizes, any machine")
    p.add_argument("--out", default="runs/gpu-cells-smoke", help="--smoke: where it writes")
    args = p.parse_args(argv)
    chosen = [s.strip() for s in args.steps.split(",") if s.strip()]
    known = [name for name, _ in steps(args)]
    if set(chosen) - set(known) or not chosen:
        print(f"error: --steps takes some of {', '.join(known)}", file=sys.stderr)
        return 2
    deadline = time.time() + args.budget_s
    status = 0
    for name, cmd in steps(args):
        if name not in chosen:
            continue
        left = deadline - time.time()
        if left <= 0:
            print(f"{name}: not started (budget spent)", flush=True)
            status = 75
            continue
        rc, spent = run_step(cmd, left)
        print(f"{name}: exit {rc} after {spent:.0f} s", flush=True)
        if rc == 75:
            status = 75
        elif rc != 0:
            status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
