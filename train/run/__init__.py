"""One training run, top to bottom: the jitted step, the optimizer, the loop, checkpoints, the run directory.

step        Training: sharded state, the train and eval steps (one shard_map over the mesh).
optim       AdamW with the learning-rate schedule.
loop        The run as named steps: restore or init, step, log, evaluate and save, finish.
checkpoint  Orbax checkpoints: atomic, asynchronous, restorable onto another mesh.
rundir      Run-directory policy: the files Meshtron writes, the lock, links outside, full disks.
weights     A run's parameters in and out on one device (generate, export, import).
metrics     metrics.jsonl and TensorBoard.
"""
