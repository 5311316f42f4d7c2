"""How close the runtime reality check comes to the run it estimates.

In a temporary folder, with one config (``configs/tiny.yaml`` by default, its output folder moved there):

1. ``scratchgpt plan CONFIG --max_steps N`` once to build the tokenizer and data, then ``--repeats`` more times
   (wall time of each, and its estimate of the training steps' time);
2. the real run, ``train.py CONFIG --max_steps N``, and from its ``metrics.json``: the estimate it logged after its
   own first timed steps, its ``train_runtime`` (which includes the evaluations and saves between steps, which the
   estimate leaves out), and the time of one evaluation.

    python bench/plan.py [--config configs/tiny.yaml] [--max-steps 500] [--repeats 3] [--json FILE]
"""

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
TIME_PER_STEP = re.compile(r"time per step\s+([0-9.]+) s")


def run(command: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if finished.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{finished.stderr[-3000:]}")
    return time.perf_counter() - start, finished.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    scratchgpt = str(Path(sys.executable).with_name("scratchgpt"))
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        tmp = Path(tmp)
        shutil.copy(REPO / args.config, tmp / "run.yaml")
        keys = ["run.yaml", "--max_steps", str(args.max_steps), "--output_dir", str(tmp / "run")]

        first_seconds, _ = run([scratchgpt, "plan", *keys], tmp)
        plans = []
        for _ in range(args.repeats):
            seconds, printed = run([scratchgpt, "plan", *keys], tmp)
            per_step = float(TIME_PER_STEP.search(printed).group(1))
            plans.append({"wall_seconds": seconds, "seconds_per_step": per_step,
                          "estimated_seconds": per_step * args.max_steps})
            print(f"plan: {seconds:.1f} s wall, {per_step:.3f} s/step", flush=True)

        train_seconds, _ = run([sys.executable, str(REPO / "train.py"), *keys], tmp)
        metrics = json.loads((tmp / "run" / "metrics.json").read_text())

    in_run = metrics["reality_check"]
    plan_estimate = statistics.median(p["estimated_seconds"] for p in plans)
    result = {
        "config": args.config,
        "max_steps": args.max_steps,
        "first_plan_wall_seconds": first_seconds,  # includes training the tokenizer and preparing the data
        "plans": plans,
        "plan_wall_seconds_median": statistics.median(p["wall_seconds"] for p in plans),
        "plan_seconds_per_step_median": statistics.median(p["seconds_per_step"] for p in plans),
        "plan_estimated_seconds_median": plan_estimate,
        "in_run_seconds_per_step": in_run["seconds_per_step"],
        "in_run_estimated_seconds": in_run["estimated_seconds_total"],
        "evaluations": in_run["evaluations"],
        "eval_seconds": metrics["eval_runtime"],
        "train_runtime": metrics["train_runtime"],
        "train_command_wall_seconds": train_seconds,
        "plan_estimate_over_actual": plan_estimate / metrics["train_runtime"],
        "in_run_estimate_over_actual": in_run["estimated_seconds_total"] / metrics["train_runtime"],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
