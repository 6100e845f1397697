"""Learning-rate transfer across widths, muP against standard parametrization (BENCHMARKS.md).

    nice -n 19 python -m meshtron.tools.mup_transfer OUT_DIR [--widths 64 128 256 512] [--lrs 1e-3 2e-3 ...]

Trains one small llama-style model per (parametrization, width, learning rate) on the embedded stdlib
corpus, each a normal run directory under OUT_DIR (a finished one is never retrained: rerun the
command to continue), appends its final evaluation loss to OUT_DIR/results.jsonl, then prints the
best learning rate per width and draws OUT_DIR/lr_transfer.png. Under muP the best learning rate
should stay within one grid step (a factor 2) across widths; under standard parametrization it drifts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BASE = ["model.family=llama", "model.vocab_size=512", "model.seq_len=64", "model.n_layers=2", "model.n_heads=4",
        "model.d_ff=null", "train.batch_size=8", "train.warmup_steps=10", "train.eval_batches=8",
        "train.eval_every=0", "train.sample_tokens=0", "train.log_every=50"]


def run_one(out: Path, kind: str, width: int, lr: float, base_width: int, steps: int) -> dict:
    """Train one configuration (or read it back if done); its final evaluation loss."""
    from meshtron.configs import load_config
    from meshtron.train.run.loop import TrainingStopped, train
    from meshtron.train.run.metrics import read_metrics

    run_dir = out / f"{kind}-w{width}-lr{lr:g}"
    done = [r for r in read_metrics(run_dir) if r.get("event") == "scaling_end"]
    if not done:
        config = load_config("tiny", BASE + [f"model.d_model={width}", f"model.parametrization={kind}",
                                             f"model.mup_base_width={base_width}", f"train.lr={lr}",
                                             f"train.steps={steps}"])
        try:
            train(config, run_dir, log=lambda *a, **k: None)
        except TrainingStopped:
            return {"parametrization": kind, "width": width, "lr": lr, "loss": float("inf")}
    evals = [r["eval_loss"] for r in read_metrics(run_dir) if isinstance(r.get("eval_loss"), (int, float))]
    return {"parametrization": kind, "width": width, "lr": lr, "loss": evals[-1] if evals else float("inf")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--kinds", nargs="+", default=["mup", "standard"])
    args = parser.parse_args(argv)
    from meshtron.train.scaling.workflow_plots import plot_lr_transfer

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    # the extreme widths first: they alone already show transfer or drift if the job is cut short
    widths = sorted(args.widths, key=lambda w: (w not in (min(args.widths), max(args.widths)), w))
    for width in widths:
        for kind in args.kinds:
            for lr in args.lrs:
                row = run_one(args.out, kind, width, lr, min(args.widths), args.steps)
                rows.append(row)
                print(json.dumps(row), flush=True)
    (args.out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for kind in args.kinds:
        for width in sorted(args.widths):
            mine = [r for r in rows if r["parametrization"] == kind and r["width"] == width]
            best = min(mine, key=lambda r: r["loss"])
            print(f"{kind:<9} width {width:>4}: best lr {best['lr']:g} (eval loss {best['loss']:.4f})")
    plot_lr_transfer(rows, args.out / "lr_transfer.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
