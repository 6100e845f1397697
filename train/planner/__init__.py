"""`meshtron plan`: per-device memory and communication before anything is allocated.

formulas  Bytes per device and collective volumes from the config, the mesh and the sharding rules.
plan      The plan a user reads, and suggestions of meshes that fit.
compiled  The same figures read from the real step compiled for the mesh (the truth the formulas match).
hlo       Collectives and their volumes read from compiled HLO text.
hardware  Published peak FLOP/s per device (and a measured matmul peak) for MFU.
"""
