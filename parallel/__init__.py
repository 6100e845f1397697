"""Meshes, sharding rules (Megatron tensor slicing, ZeRO stages), the sharded step, the planner."""
