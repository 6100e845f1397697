"""How arrays are split over devices: the mesh, the sharding rules, the collectives.

mesh         Mesh shape from the device list and parallel.* keys.
rules        One table per strategy: logical axis name -> mesh axes (Megatron slicing, ZeRO stages).
spmd         The collectives model code calls, by logical axis (Megatron's f and g operators).
zero         Every stage-by-stage ZeRO rule: partitioned optimizer state, gradients, parameters.
distributed  Multi-host start-up (jax.distributed).
xla_flags    Default XLA flags per platform.
jax_compat   The JAX internals Meshtron relies on, in one place (pinned to the JAX version by a test).

Imports only configs/. The model imports parallel.spmd for its collectives, so parallel sits
below model; the planner, which needs the model and the train step, lives in train/planner/.
"""
