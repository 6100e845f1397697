"""`meshtron generate RUN_DIR --prompt TEXT [--max-new-tokens N] [--temperature T] [--json]`; an encoder-decoder
run answers `--input TEXT` instead."""

from __future__ import annotations


def add_arguments(parser) -> None:
    """Options of `meshtron generate`."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a Meshtron run directory (its latest checkpoint is used)")
    parser.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    parser.add_argument("--input", default=None, help="encoder input of an encoder-decoder run (T5: text </s>)")
    parser.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="tokens to generate (default 64)")
    parser.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 is greedy (default 0.8)")
    parser.add_argument("--top-k", type=int, default=0, metavar="K", help="sample among the K most likely (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (1: off)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--step", type=int, default=None, help="use this checkpoint step instead of the latest")
    parser.add_argument("--json", action="store_true", help='print {"text": ..., "tokens": [...]}')


def run(args) -> int:
    """Sample a continuation of the prompt with a KV cache."""
    from meshtron.train.generate import generate, load_run

    model, tokenizer, config, _ = load_run(args.run_dir, args.step)
    if config.model.arch != "decoder" or args.input is not None:
        return _run_seq(args, model, tokenizer, config)
    tokens = generate(model, tokenizer.encode(args.prompt), args.max_new_tokens, temperature=args.temperature,
                      top_k=args.top_k, top_p=args.top_p, seed=args.seed, eos_id=tokenizer.eos_id)
    text = tokenizer.decode(tokens)
    if args.json:
        from meshtron.tools.cli import json_out

        json_out({"text": text, "tokens": tokens})
    else:
        print(args.prompt + text)
    return 0


def _run_seq(args, model, tokenizer, config) -> int:
    from meshtron.configs.errors import UserError
    from meshtron.train.seq_generate import SpecialText, generate_seq

    if config.model.arch != "encoder_decoder":
        raise UserError(f"--input needs an encoder-decoder run; {args.run_dir} is model.arch={config.model.arch}"
                        + (" (use meshtron fill)" if config.model.arch == "encoder" else " (use --prompt)"))
    text = SpecialText(tokenizer, config.model.vocab_size, config.train.objective)
    ids = text.frame(args.input or "")
    tokens = generate_seq(model, ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, seed=args.seed, eos_id=tokenizer.eos_id)
    out = text.decode(tokens)
    if args.json:
        from meshtron.tools.cli import json_out

        json_out({"text": out, "tokens": tokens})
    else:
        print(out)
    return 0
