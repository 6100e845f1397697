"""Everything around the model: data, the run, the planner, Hugging Face interop, scaling, generation.

data      Corpus sources, the TFDS builder, the tokenizer, packed windows.
run       One training run: step, optimizer, loop, checkpoints, run directory, metrics.
planner   Per-device memory and communication from formulas, checked against the compiled step.
hf        Hugging Face interop: architecture tables, export, import, tokenizer conversion.
scaling   Chinchilla laws, fits of your runs, sweeps, the run's scaling report.
generate  Text from a trained run directory.

Imports configs/, parallel/ and model/; only tools/ imports train/.
"""
