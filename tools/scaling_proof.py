"""The scaling workflow end to end on the embedded stdlib corpus (BENCHMARKS.md, "Your own scaling law").

    nice -n 19 python -m meshtron.tools.scaling_proof OUT_DIR [--budgets 1e11 3e11 1e12] [--sizes 5]

1. plan an IsoFLOP sweep and train every run (`meshtron scaling sweep ... --run`; resumable),
2. fit Approach 3 (with bootstrap) and Approach 2 to the final evaluation losses,
3. train one held-out run at `--held-out` x the largest budget at the fit's compute-optimal size,
4. compare its final evaluation loss with the fit's prediction and draw the IsoFLOP figure.
Every stage is resumable: run the same command again after an interruption.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

BASE = ["model.family=gpt2", "model.vocab_size=512", "model.seq_len=64", "train.batch_size=16", "train.lr=3e-3",
        "train.eval_batches=16", "train.eval_every=0", "train.sample_tokens=0"]


def meshtron(*argv) -> str:
    """Run the meshtron CLI as a user would; its stdout."""
    done = subprocess.run([sys.executable, "-m", "meshtron.tools.cli", *map(str, argv)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"meshtron {' '.join(map(str, argv))} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def held_out_run(out: Path, fit: dict, budget: float, head_dim: int) -> dict:
    """Train a run at the fit's optimal N for `budget` and compare it with the prediction."""
    from meshtron.configs import config_to_dict, load_config
    from meshtron.model.counting import count_params
    from meshtron.train.scaling.laws import optimal_by_compute
    from meshtron.train.scaling.predict import load_fit, predict
    from meshtron.train.scaling.sweep import model_shape

    law_file = load_fit(out / "fit.json")
    target = optimal_by_compute(budget, law_file.law)
    base = load_config("tiny", BASE)
    shape = model_shape(target.N, base.model, head_dim=head_dim)
    N = count_params(shape).total
    tokens_per_step = base.train.batch_size * base.model.seq_len
    steps = round(budget / (6 * N) / tokens_per_step)
    warmup = round(base.train.warmup_steps * steps / base.train.steps)
    config = load_config("tiny", BASE + [f"model.d_model={shape.d_model}", f"model.n_layers={shape.n_layers}",
                                         f"model.n_heads={shape.n_heads}", "model.d_ff=null", f"train.steps={steps}",
                                         f"train.warmup_steps={warmup}"])
    config = dataclasses.replace(config, name="heldout")
    path = out / "heldout.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    run_dir = out / "heldout"
    started = time.time()
    meshtron("train", "--config", path, "--run-dir", run_dir, "--json")
    from meshtron.train.scaling.fit import read_run_dir

    N_run, D_run, loss, _ = read_run_dir(run_dir)
    prediction = predict(law_file, N_run, D_run)
    return {"budget": budget, "target_N": target.N, "N": N_run, "D": D_run, "steps": steps,
            "d_model": shape.d_model, "n_layers": shape.n_layers, "eval_loss": loss,
            "predicted": prediction["loss"], "interval": prediction["loss_interval"],
            "error": loss / prediction["loss"] - 1, "seconds": round(time.time() - started, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--budgets", nargs="+", default=["1e11", "3e11", "1e12"])
    parser.add_argument("--sizes", type=int, default=5)
    parser.add_argument("--span", default="4")
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--held-out", type=float, default=3.5, help="held-out budget / largest sweep budget")
    parser.add_argument("--bootstrap", type=int, default=50)
    args = parser.parse_args(argv)
    out = args.out
    t0 = time.time()
    if not (out / "manifest.json").exists():
        meshtron("scaling", "sweep", "--compute", *args.budgets, "--sizes", args.sizes, "--span", args.span,
                 "--head-dim", args.head_dim, "--out", out, "--plot", out / "sweep.png", *BASE)
    print(meshtron("scaling", "run", out), flush=True)
    print(meshtron("scaling", "fit", out, "--approach", "both", "--bootstrap", args.bootstrap, "--out",
                   out / "fit.json", "--plot", out / "fit.png"), flush=True)
    fit = json.loads((out / "fit.json").read_text())
    result_path = out / "heldout.json"
    if not result_path.exists():
        budget = args.held_out * max(float(b) for b in args.budgets)
        result_path.write_text(json.dumps(held_out_run(out, fit, budget, args.head_dim), indent=1))
    result = json.loads(result_path.read_text())
    print(meshtron("scaling", "plot", out, "--fit", out / "fit.json", "--held-out", out / "heldout", "--out",
                   out / "isoflop.png"), flush=True)
    print(json.dumps({"a": fit["a"], "b": fit["b"], "alpha": fit["alpha"], "beta": fit["beta"], "E": fit["E"],
                      "approach2": {k: fit["approach2"][k] for k in ("a", "b")} if "approach2" in fit else None,
                      "held_out": result, "total_seconds": round(time.time() - t0)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
