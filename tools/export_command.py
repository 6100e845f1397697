"""`meshtron export RUN_DIR --format hf|safetensors --out DIR [--step N] [--dtype D] [--max-shard-size S]`."""

from __future__ import annotations

import re
from pathlib import Path

from meshtron.configs.errors import UserError

SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def add_arguments(parser) -> None:
    """Options of `meshtron export`."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a Meshtron run directory (its latest checkpoint is used)")
    parser.add_argument("--format", required=True, choices=("hf", "safetensors"),
                        help="hf: a Hugging Face GPT-2/Llama directory transformers loads; safetensors: Meshtron's "
                             "own names (blocks.attn.q, ...) plus model_config.json")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write (must be new or empty)")
    parser.add_argument("--step", type=int, default=None, help="export this checkpoint step instead of the latest")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="weights dtype")
    parser.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                        help="split the weights into files of at most SIZE (5GB, 500MB, 2GiB; default 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--json", action="store_true", help="print one JSON object describing what was written")


def parse_size(text: str) -> int:
    """'5GB' -> 5_000_000_000 bytes, '2GiB' -> 2**31 (as transformers reads max_shard_size)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", text.upper())
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"--max-shard-size {text}: give a positive size such as 5GB, 500MB or 2GiB")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2) or ""])


def weights_summary(out_dir: Path) -> dict:
    """Tensor count, bytes and file names of the safetensors weights in an exported directory."""
    from safetensors import safe_open

    files = sorted(Path(out_dir).glob("*.safetensors"))
    tensors = 0
    for f in files:
        with safe_open(str(f), framework="numpy") as handle:
            tensors += len(list(handle.keys()))
    return {"tensors": tensors, "bytes": sum(f.stat().st_size for f in files), "weight_files": [f.name for f in files]}


def run(args) -> int:
    """Restore the run's params on one device and write them in the chosen format."""
    from meshtron.train.hf.export import check_exportable, export_hf, export_safetensors
    from meshtron.train.run.rundir import read_run_config
    from meshtron.train.run.weights import load_run_params
    from meshtron.train.data.tokenizer import Tokenizer

    run_dir, out = Path(args.run_dir), Path(args.out)
    max_shard_bytes = parse_size(args.max_shard_size)
    if args.format == "hf":  # before anything is restored or written
        check_exportable(read_run_config(run_dir).model)
    run = load_run_params(run_dir, args.step)
    params = run.pure_params()
    if args.format == "hf":
        tokenizer = Tokenizer.from_run_dir(run_dir)
        export_hf(run.config.model, params, tokenizer.path, out, max_shard_bytes, dtype=args.dtype,
                  overwrite=args.overwrite)
    else:
        export_safetensors(run.config.model, params, out, max_shard_bytes, dtype=args.dtype,
                           overwrite=args.overwrite)
    summary = {"run_dir": str(run_dir), "step": run.step, "out": str(out), "format": args.format,
               "dtype": args.dtype, **weights_summary(out), "files": sorted(p.name for p in out.iterdir())}
    if args.json:
        from meshtron.tools.cli import json_out

        json_out(summary)
    else:
        print(f"exported {run_dir} (step {run.step}) as {args.format} ({args.dtype}) to {out}")
        print(f"  {summary['tensors']} tensors, {summary['bytes']:,} bytes in {len(summary['weight_files'])} "
              f"weight file(s)")
        print(f"  files: {', '.join(summary['files'])}")
    return 0
