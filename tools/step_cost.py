"""What XLA says each train step costs: Meshtron's step beside the independent baseline's, compiled for one
device at one of tools/peers.py's shapes. FLOPs, bytes accessed, temporaries and a count of copies and
transposes in the optimised program: where two steps do the same arithmetic, the bytes they move explain
most of a difference in speed on a CPU (see BENCHMARKS.md).

    python -m meshtron.tools.step_cost --shape gpt2-8l
"""

from __future__ import annotations

import argparse
import json
import re
import sys


def _meshtron(d: dict):
    import jax

    from meshtron.configs import load_config
    from meshtron.parallel.mesh import mesh_for
    from meshtron.tools import peers
    from meshtron.train.run.step import build_training

    overrides = [f"model.family={d['family']}", f"model.n_layers={d['n_layers']}", f"model.d_model={d['d_model']}",
                 f"model.n_heads={d['n_heads']}", f"model.d_ff={d['d_ff']}", f"model.seq_len={d['seq_len']}",
                 f"model.vocab_size={d['vocab']}", f"train.batch_size={d['batch']}", "parallel.data=1",
                 "model.compute_dtype=float32"]
    config = load_config("tiny", overrides)
    shape, mesh = mesh_for(config, jax.devices()[:1])
    training = build_training(config, mesh, shape)
    params = training.init_params()
    opt_state = training.init_opt_state(params)
    batch = training.shard_batch(peers._tokens(d))
    return training.jit_train_step().lower(params, opt_state, batch, 1).compile()


def _baseline(d: dict):
    import jax.numpy as jnp

    from meshtron.tools import peers
    from meshtron.tools.baseline import Dims, init_params, make_step

    dims = Dims(d["family"], d["n_layers"], d["d_model"], d["n_heads"], d["n_heads"], d["d_ff"], d["vocab"],
                d["seq_len"])
    init, step = make_step(dims)
    params = init_params(dims)
    return step.lower(params, init(params), jnp.asarray(peers._tokens(d))).compile()


def cost(compiled) -> dict:
    """The figures of one compiled step."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    text = compiled.as_text()
    return {"gflops": analysis.get("flops", 0) / 1e9, "gb_accessed": analysis.get("bytes accessed", 0) / 1e9,
            "temp_mb": compiled.memory_analysis().temp_size_in_bytes / 1e6,
            "copies": len(re.findall(r"= \S+ copy\(", text)), "transposes": len(re.findall(r"transpose\(", text))}


def compare(shape: str) -> dict:
    from meshtron.tools import peers

    d = peers._dims(shape)
    return {"shape": shape, "meshtron": cost(_meshtron(d)), "baseline": cost(_baseline(d))}


def main(argv=None) -> int:
    from meshtron.tools import peers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="gpt2-4l", choices=sorted(peers.SHAPES))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    result = compare(a.shape)
    if a.json:
        print(json.dumps(result))
        return 0
    print(f"| {a.shape} | GFLOP | GB accessed | temporaries MB | copies | transposes |\n| --- | --- | --- | --- | --- | --- |")
    for name in ("meshtron", "baseline"):
        c = result[name]
        print(f"| {name} | {c['gflops']:.1f} | {c['gb_accessed']:.2f} | {c['temp_mb']:.0f} | {c['copies']} | "
              f"{c['transposes']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
