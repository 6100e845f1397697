"""Meshtron beside its peers, in one sitting: Meshtron, the independent plain-JAX baseline, and Hugging Face
`transformers` (GPT-2 or Llama) in PyTorch eager and `torch.compile`, timed in turn on one shape.

    python -m meshtron.tools.peers --shape gpt2-small4 --rounds 5 [--systems meshtron,baseline,torch-eager]

Each system runs in its own worker process (so no thread pool of one spins while another is timed), is
built and warmed up once, then the workers are asked for one step each in turn, A B C D A B C D ...,
so the machine's drift touches all of them alike. The table gives tokens/s as min / median / max over
the rounds and each median's ratio to Meshtron's. Every system trains the same shape in float32 on the
CPU with AdamW and global-norm clipping; tokens are random (this times the step, not the data).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

SHAPES = {  # the shapes of the speed issue: (family, layers, d_model, heads, seq, vocab, batch)
    "gpt2-4l": ("gpt2", 4, 256, 4, 256, 8192, 8),
    "gpt2-8l": ("gpt2", 8, 512, 8, 512, 16384, 8),
    "tiny": ("llama", 4, 256, 4, 128, 2048, 16),  # the `tiny` preset
    "micro": ("gpt2", 2, 64, 4, 32, 512, 4),  # for tests
}
SYSTEMS = ("meshtron", "baseline", "torch-eager", "torch-compile")
FIELDS = ("system", "tokens_per_s_min", "tokens_per_s_median", "tokens_per_s_max", "step_seconds_median",
          "over_meshtron")


def _dims(shape: str) -> dict:
    family, layers, d, heads, seq, vocab, batch = SHAPES[shape]
    d_ff = 4 * d if family == "gpt2" else 768 if shape == "tiny" else 256 * -(-int(8 * d / 3) // 256)
    return dict(family=family, n_layers=layers, d_model=d, n_heads=heads, seq_len=seq, vocab=vocab, batch=batch,
                d_ff=d_ff)


def _tokens(d: dict):
    import numpy as np

    return np.random.default_rng(0).integers(0, d["vocab"], (d["batch"], d["seq_len"] + 1))


# -- the systems, each a function returning step() -> None (blocking until the step is done) ----------------
def meshtron_config(d: dict):
    """Meshtron's config of a shape: one device, float32, defaults otherwise."""
    from meshtron.configs import load_config

    overrides = [f"model.family={d['family']}", f"model.n_layers={d['n_layers']}", f"model.d_model={d['d_model']}",
                 f"model.n_heads={d['n_heads']}", f"model.d_ff={d['d_ff']}", f"model.seq_len={d['seq_len']}",
                 f"model.vocab_size={d['vocab']}", f"train.batch_size={d['batch']}", "parallel.data=1",
                 "model.compute_dtype=float32"]
    return load_config("tiny", overrides)


def baseline_dims(d: dict):
    """The independent baseline's description of a shape."""
    from meshtron.tools.baseline import Dims

    return Dims(d["family"], d["n_layers"], d["d_model"], d["n_heads"], d["n_heads"], d["d_ff"], d["vocab"],
                d["seq_len"])


def _meshtron(d: dict):
    import jax

    from meshtron.tools import bench

    timer, _ = bench.meshtron_timer(meshtron_config(d), jax.devices()[:1])
    return timer.run


def _baseline(d: dict):
    import jax.numpy as jnp

    from meshtron.tools.baseline import init_params, make_step
    from meshtron.tools.bench import StepTimer

    dims = baseline_dims(d)
    init, step = make_step(dims)
    params = init_params(dims)
    return StepTimer(step, [params, init(params)], jnp.asarray(_tokens(d))).warm_up().run


def _torch(d: dict, compiled: bool):
    import torch
    import transformers

    torch.manual_seed(0)
    if d["family"] == "gpt2":
        config = transformers.GPT2Config(n_layer=d["n_layers"], n_embd=d["d_model"], n_head=d["n_heads"],
                                         n_inner=d["d_ff"], vocab_size=d["vocab"], n_positions=d["seq_len"],
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                         bos_token_id=0, eos_token_id=0)  # GPT-2's 50256 is outside these vocabularies
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(num_hidden_layers=d["n_layers"], hidden_size=d["d_model"],
                                          num_attention_heads=d["n_heads"], intermediate_size=d["d_ff"],
                                          vocab_size=d["vocab"], max_position_embeddings=d["seq_len"])
        model = transformers.LlamaForCausalLM(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    tokens = torch.as_tensor(_tokens(d))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def loss_fn():
        logits = model(input_ids=inputs).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))

    loss_fn = torch.compile(loss_fn) if compiled else loss_fn

    def step():
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up (compiles)
        step()
    return step


BUILDERS = {"meshtron": _meshtron, "baseline": _baseline, "torch-eager": lambda d: _torch(d, False),
            "torch-compile": lambda d: _torch(d, True)}


def worker(system: str, shape: str) -> None:
    """Build one system, print `ready`, then time one step per line read from stdin."""
    step = BUILDERS[system](_dims(shape))
    print("ready", flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        step()
        print(time.perf_counter() - start, flush=True)


def side_by_side(shape: str, systems: list[str], rounds: int) -> list[dict]:
    """Alternate one step of each system per round; rows of FIELDS (over_meshtron None without Meshtron)."""
    procs = {}
    for name in systems:  # built one after another, so their compiles do not compete for the cores
        p = subprocess.Popen([sys.executable, "-m", "meshtron.tools.peers", "--worker", name, "--shape", shape],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = p.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"{name} worker failed to start (exit {p.wait()})")
        procs[name] = p
    times = {name: [] for name in systems}
    try:
        for _ in range(rounds):
            for name, p in procs.items():
                p.stdin.write("step\n")
                p.stdin.flush()
                times[name].append(float(p.stdout.readline()))
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait()
    d = _dims(shape)
    tokens = d["batch"] * d["seq_len"]
    ref = statistics.median(times["meshtron"]) if "meshtron" in times else None
    return [{"system": name, "tokens_per_s_min": tokens / max(t), "tokens_per_s_median": tokens / statistics.median(t),
             "tokens_per_s_max": tokens / min(t), "step_seconds_median": statistics.median(t),
             "over_meshtron": None if ref is None else ref / statistics.median(t)} for name, t in times.items()]


def format_table(shape: str, rows: list[dict]) -> str:
    """A Markdown table of the rows."""
    family, layers, d, heads, seq, vocab, batch = SHAPES[shape]
    lines = [f"{shape}: {family} layout, {layers} layers, d {d}, {heads} heads, seq {seq}, vocab {vocab}, batch {batch}"
             ", float32", "", "| system | tokens/s min | median | max | step (median) | speed vs Meshtron |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ratio = "" if r["over_meshtron"] is None else f"{r['over_meshtron']:.2f}x"
        lines.append(f"| {r['system']} | {r['tokens_per_s_min']:,.0f} | {r['tokens_per_s_median']:,.0f} | "
                     f"{r['tokens_per_s_max']:,.0f} | {r['step_seconds_median'] * 1000:,.0f} ms | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="gpt2-4l", choices=sorted(SHAPES))
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, from {', '.join(SYSTEMS)}")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        from meshtron.parallel.jax_compat import skip_absent_tpu

        skip_absent_tpu()  # libtpu installed, no TPU here: no libtpu warnings in the table
        worker(a.worker, a.shape)
        return 0
    systems = [s for s in a.systems.split(",") if s]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown or a.rounds < 1:
        ap.error(f"unknown systems {unknown}" if unknown else "--rounds must be >= 1")
    rows = side_by_side(a.shape, systems, a.rounds)
    print(json.dumps({"shape": a.shape, "rows": rows}) if a.json else format_table(a.shape, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
