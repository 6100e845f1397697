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

    from meshtron.parallel.mesh import mesh_for
    from meshtron.tools import peers
    from meshtron.train.run.step import build_training

    config = peers.meshtron_config(d)
    shape, mesh = mesh_for(config, jax.devices()[:1])
    training = build_training(config, mesh, shape)
    params = training.init_params()
    opt_state = training.init_opt_state(params)
    batch = training.shard_batch(peers._tokens(d))
    return training.jit_train_step().lower(params, opt_state, batch, 1).compile()


def _baseline(d: dict):
    import jax.numpy as jnp

    from meshtron.tools import peers
    from meshtron.tools.baseline import init_params, make_step

    dims = peers.baseline_dims(d)
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
    print(f"| {a.shape} | GFLOP | GB accessed | temporaries MB | copies | transposes |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in ("meshtron", "baseline"):
        c = result[name]
        print(f"| {name} | {c['gflops']:.1f} | {c['gb_accessed']:.2f} | {c['temp_mb']:.0f} | {c['copies']} | "
              f"{c['transposes']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
