"""`meshtron fill RUN_DIR --text "def [MASK](x):" [--top-k K] [--json]`: an encoder run's predictions per mask."""

from __future__ import annotations


def add_arguments(parser) -> None:
    """Options of `meshtron fill`."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="an encoder (mlm) run directory")
    parser.add_argument("--text", required=True, help="text with one or more [MASK] tokens")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="predictions per mask (default 5)")
    parser.add_argument("--step", type=int, default=None, help="use this checkpoint step instead of the latest")
    parser.add_argument("--json", action="store_true",
                        help='print [{"position", "ids", "pieces", "probs"}] per mask')


def run(args) -> int:
    """Tokenize as the exported BERT tokenizer does ([CLS] text [SEP]), print the top-k per [MASK]."""
    from meshtron.configs.errors import UserError
    from meshtron.train.data.special_tokens import mask_id
    from meshtron.train.generate import load_run
    from meshtron.train.seq_generate import SpecialText, fill

    model, tokenizer, config, _ = load_run(args.run_dir, args.step)
    if config.model.arch != "encoder":
        raise UserError(f"{args.run_dir} is a model.arch={config.model.arch} run; fill needs an encoder (mlm) run")
    if args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    text = SpecialText(tokenizer, config.model.vocab_size, config.train.objective)
    masks = fill(model, text.frame(args.text), mask_id(config.model.vocab_size), args.top_k)
    for m in masks:
        m["pieces"] = [text.piece(i) for i in m["ids"]]
    if args.json:
        from meshtron.tools.cli import json_out

        json_out(masks)
        return 0
    for n, m in enumerate(masks):
        options = "  ".join(f"{p!r} {q:.3f}" for p, q in zip(m["pieces"], m["probs"]))
        print(f"[MASK] {n + 1}: {options}")
    return 0
