"""`meshtron train [--config NAME|PATH] [--run-dir DIR] [key=value ...]`."""

from __future__ import annotations

import time
from pathlib import Path

from meshtron.configs.errors import UserError
from meshtron.configs.loader import config_from_dict, load_config, read_config_source


DEFAULT_PRESET = "quickstart"  # what `meshtron train` trains with no --config (configs/quickstart.yaml)


def add_arguments(parser) -> None:
    """Options of `meshtron train`."""
    parser.add_argument("--config", default=None, metavar="NAME|PATH",
                        help=f"preset name ({DEFAULT_PRESET}, tiny, gpt2-124m, llama-7b, ...) or YAML file; "
                             f"default {DEFAULT_PRESET}")
    parser.add_argument("--run-dir", default=None, metavar="DIR",
                        help="where checkpoints, metrics and the tokenizer go; an existing run is resumed "
                             "(default runs/NAME-TIMESTAMP)")
    parser.add_argument("--json", action="store_true", help="print the final summary as one JSON object")
    parser.add_argument("--fit", default=None, metavar="FIT.json",
                        help="your scaling fit (`meshtron scaling fit --out`): the start report plans with it "
                             "(same as train.scaling_fit=FIT.json)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=200")


def resolve_config(config_arg: str | None, run_dir: Path | None, overrides: list[str]):
    """The config of a new run, or of the run in `run_dir` (its saved config plus overrides)."""
    saved = run_dir / "config.yaml" if run_dir is not None else None
    if saved is not None and saved.exists():
        raw, _ = read_config_source(str(saved))
        if config_arg is not None and config_arg != raw.get("name"):
            raise UserError(f"{run_dir} holds a run of config '{raw.get('name')}'; drop --config to resume it, or "
                            "use a new --run-dir")
        return config_from_dict(raw, overrides), True
    return load_config(config_arg or DEFAULT_PRESET, overrides), False


def sample_length(config) -> tuple[int, str | None]:
    """Tokens of the end-of-training sample, clamped to half the context so the prompt keeps the other
    half; and a note to print before training when clamped."""
    asked, context = config.train.sample_tokens, config.model.seq_len
    if asked <= context // 2:
        return asked, None
    return context // 2, (f"note: train.sample_tokens={asked} is more than half the model's context of {context} "
                          f"tokens: the sample has {context // 2}")


def run(args) -> int:
    """Train, print a summary and a text sample."""
    import jax

    from meshtron.parallel.mesh import resolve_mesh_shape
    from meshtron.train.data.prepare import check_source
    from meshtron.train.planner.memory_check import check_memory
    from meshtron.train.run.loop import train
    from meshtron.train.run.rundir import check_run_dir

    run_dir = Path(args.run_dir) if args.run_dir else None
    if run_dir is not None:
        check_run_dir(run_dir)
    overrides = args.overrides + ([f"train.scaling_fit={args.fit}"] if args.fit else [])
    config, resuming = resolve_config(args.config, run_dir, overrides)
    resolve_mesh_shape(config, jax.device_count())  # every config error before data, compilation or allocation
    check_source(config.data)
    check_memory(config, jax.device_count(), jax.local_devices())
    sample_tokens, note = sample_length(config)
    if run_dir is None:
        run_dir = Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    log = (lambda *a, **k: None) if args.json else print
    if note:
        log(note)
    started = time.time()
    result = train(config, run_dir, log=log)
    summary = {
        "run_dir": str(run_dir), "config": config.name, "resumed": resuming, "start_step": result.start_step,
        "steps": result.steps_done, "first_loss": result.losses[0][1] if result.losses else None,
        "final_loss": result.losses[-1][1] if result.losses else None, "eval_loss": result.eval_loss,
        "tokens_per_s": round(result.tokens_per_s, 1), "seconds": round(time.time() - started, 1),
        "interrupted": result.interrupted,
    }
    sample = _sample(config, run_dir, result, sample_tokens)
    if sample is not None:
        summary["sample"] = sample
    if jax.process_index() != 0:  # one summary per job
        return 0
    if args.json:
        from meshtron.tools.cli import json_out

        json_out(summary)
        return 0
    _print_summary(summary, result, run_dir, sample)
    return 0


def _sample(config, run_dir: Path, result, sample_tokens: int) -> str | None:
    """The prompt and its continuation by the trained model (decoders, single-process jobs, when asked)."""
    import jax

    decoder = config.model.arch == "decoder"  # encoders are sampled with `meshtron fill` / `generate --input`
    if not decoder or result.interrupted or not sample_tokens or config.train.sample_prompt is None:
        return None
    from meshtron.train.generate import generate, load_run

    if jax.process_count() != 1:
        return None
    model, tokenizer, _, _ = load_run(run_dir)
    ids = generate(model, tokenizer.encode(config.train.sample_prompt), sample_tokens,
                   temperature=0.8, top_k=40, seed=config.train.seed, eos_id=tokenizer.eos_id)
    return config.train.sample_prompt + tokenizer.decode(ids)


def _print_summary(summary: dict, result, run_dir: Path, sample: str | None) -> None:
    print()
    print(f"run directory   {run_dir}")
    print(f"steps           {summary['start_step']} -> {summary['steps']}" + ("  (interrupted)" if result.interrupted else ""))
    if result.losses:
        print(f"loss            {summary['first_loss']:.4f} (first) -> {summary['final_loss']:.4f} (last)")
    if result.eval_loss is not None:
        print(f"eval loss       {result.eval_loss:.4f}")
    print(f"throughput      {summary['tokens_per_s']:,.0f} tokens/s")
    print(f"wall time       {summary['seconds']:.0f} s")
    if sample is not None:
        print("sample:")
        print(sample)
