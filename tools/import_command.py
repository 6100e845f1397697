"""`meshtron import HF_DIR --run-dir DIR`: a Hugging Face GPT-2 or Llama directory -> a run directory
that `meshtron train --run-dir DIR` continues and `meshtron generate DIR` samples from."""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    """Options of `meshtron import`."""
    parser.add_argument("hf_dir", metavar="HF_DIR",
                        help="a transformers GPT-2 or Llama directory: config.json, *.safetensors (pickles are "
                             "refused) and tokenizer.model or tokenizer.json")
    parser.add_argument("--run-dir", required=True, metavar="DIR", help="the new run directory (must be new or empty)")
    parser.add_argument("--json", action="store_true", help="print one JSON object describing the new run")


def run(args) -> int:
    """Read the model and tokenizer (as data only), then write config.yaml, the tokenizer and a step-0 checkpoint."""
    from meshtron.configs.errors import UserError
    from meshtron.model.counting import count_params
    from meshtron.train.hf.importer import import_hf, import_tokenizer
    from meshtron.train.run.rundir import check_new_run_dir
    from meshtron.train.run.weights import imported_config, write_run

    hf_dir, run_dir = Path(args.hf_dir), Path(args.run_dir)
    check_new_run_dir(run_dir)
    model_cfg, params, _ = import_hf(hf_dir)
    tokenizer = import_tokenizer(hf_dir)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise UserError(f"{tokenizer.path} has {tokenizer.vocab_size} ids but the model only {model_cfg.vocab_size} "
                        "embedding rows; the tokenizer does not belong to this model")
    config = imported_config(model_cfg)
    write_run(run_dir, config, params, tokenizer)
    n_params = count_params(model_cfg).total
    summary = {"hf_dir": str(hf_dir), "run_dir": str(run_dir), "family": model_cfg.family, "step": 0,
               "parameters": n_params, "tokenizer": tokenizer.file_name, "vocab_size": model_cfg.vocab_size,
               "eos_id": tokenizer.eos_id}
    if args.json:
        from meshtron.tools.cli import json_out

        json_out(summary)
    else:
        print(f"imported {hf_dir} ({model_cfg.family}, {model_cfg.n_layers} layers, d_model {model_cfg.d_model}, "
              f"{n_params:,} parameters) into {run_dir} at step 0")
        print(f"  tokenizer: {tokenizer.file_name} ({tokenizer.vocab_size} ids, EOS {tokenizer.eos_id})")
        print(f"  continue: meshtron train --run-dir {run_dir} train.steps=N data.source=...")
        print(f"  sample:   meshtron generate {run_dir} --prompt TEXT")
    return 0
