"""What XLA says each train step costs: Meshtron's step beside the independent baseline's, compiled for one
device at one of tools/peers.py's shapes. FLOPs, bytes accessed, temporaries and a count of copies and
transposes in the optimised program: where two steps do the same arithmetic, the bytes they move explain
most of a difference in speed on a CPU (see BENCHMARKS.md).

    python -m meshtron.tools.step_cost --shape gpt2-8l
    python -m meshtron.tools.step_cost --shape tiny --by-source   # where the bytes go, by source operation

`--by-source` adds up, for every top-level operation of each optimised program other than the matmuls, the
bytes it reads and writes, grouped by the JAX operation it came from (its `op_name`, forward or backward),
and prints the groups where the two steps differ most. Unlike a profile it is exact and does not depend on
how busy the machine is.
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


_FREE = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast"}


def _source(op_name: str) -> str:
    """`jit(train_step)/transpose(jvp())/closed_call/jit(silu)` -> `backward: jit(silu)`: the direction, then the
    operation's path without autodiff's wrappers and the layer loop's `closed_call`, so that two programs'
    sources compare."""
    name = re.sub(r"^jit\([^)]*\)/", "", op_name)
    direction = "backward" if name.startswith("transpose(") else "forward" if name.startswith("jvp(") else "other"
    name = re.sub(r"(transpose\(|jvp\(|closed_call/?|vmap\()", "", name)
    kept, depth = [], 0
    for ch in name:  # drop the closing brackets of the wrappers just removed
        if ch == "(":
            depth += 1
        elif ch == ")":
            if not depth:
                continue
            depth -= 1
        kept.append(ch)
    return f"{direction}: {''.join(kept).strip('/') or '(top)'}"


def bytes_by_source(compiled) -> dict[str, int]:
    """Bytes read and written by each top-level non-matmul operation of the entry computation, summed by the
    JAX operation they came from."""
    from meshtron.train.planner.hlo import shape_bytes

    text = compiled.as_text()
    entry = text[text.index("ENTRY"):].split("\n}\n")[0].splitlines()[1:]
    shapes: dict[str, str] = {}
    out: dict[str, int] = {}
    for line in entry:
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*?)\)(.*)", line)
        if not m:
            continue
        name, shape, op, args, rest = m.groups()
        shapes[name] = shape
        if op in _FREE or name.startswith(("ynn_fusion", "dot")) or op == "dot":
            continue
        read = sum(shape_bytes(shapes.get(a.strip().lstrip("%"), "")) for a in args.split(","))
        op_name = re.search(r'op_name="([^"]*)"', rest)
        key = _source(op_name.group(1)) if op_name else "(no source)"
        out[key] = out.get(key, 0) + read + shape_bytes(shape)
    return out


def by_source(shape: str) -> dict:
    from meshtron.tools import peers

    d = peers._dims(shape)
    return {"shape": shape, "meshtron": bytes_by_source(_meshtron(d)), "baseline": bytes_by_source(_baseline(d))}


def compare(shape: str) -> dict:
    from meshtron.tools import peers

    d = peers._dims(shape)
    return {"shape": shape, "meshtron": cost(_meshtron(d)), "baseline": cost(_baseline(d))}


def main(argv=None) -> int:
    from meshtron.tools import peers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="gpt2-4l", choices=sorted(peers.SHAPES))
    ap.add_argument("--by-source", action="store_true",
                    help="bytes moved outside the matmuls, by the JAX operation they came from")
    ap.add_argument("--top", type=int, default=15, help="with --by-source: rows to print")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.by_source:
        return _print_by_source(by_source(a.shape), a.top, a.json)
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




def _print_by_source(result: dict, top: int, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result))
        return 0
    mine, theirs = result["meshtron"], result["baseline"]
    print(f"{result['shape']}: bytes read and written outside the matmuls, MB (Meshtron {sum(mine.values()) / 1e6:,.0f}, "
          f"baseline {sum(theirs.values()) / 1e6:,.0f})")
    print("| source operation (where the two steps differ most) | Meshtron MB | baseline MB | difference |")
    print("| --- | ---: | ---: | ---: |")
    keys = sorted(set(mine) | set(theirs), key=lambda k: -abs(mine.get(k, 0) - theirs.get(k, 0)))
    for key in keys[:top]:
        a, b = mine.get(key, 0) / 1e6, theirs.get(key, 0) / 1e6
        print(f"| {key} | {a:,.1f} | {b:,.1f} | {a - b:+,.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
