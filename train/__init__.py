"""Data, tokenizer, train step and loop, checkpoints, export, scaling report."""
