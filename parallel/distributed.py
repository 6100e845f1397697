"""Multi-host start-up through JAX's own runtime (`jax.distributed`), never a home-made launcher.

A process joins a multi-process job when it is given a coordinator (command-line flags or
MESHTRON_COORDINATOR / MESHTRON_NUM_PROCESSES / MESHTRON_PROCESS_ID), or when it runs inside
a cluster JAX detects by itself: a SLURM job step with several tasks, an Open MPI job, a
multi-host Cloud TPU slice. Otherwise it stays a single process.

Every process runs the same command; each loads only its rows of the global batch, and
only process 0 writes logs, metrics and the run directory's files (Orbax coordinates the
checkpoint writes of all processes).
"""

from __future__ import annotations

import os

from meshtron.configs.errors import UserError

# A peer that stops sending heartbeats for this long is declared dead and the job stops with
# an error, instead of hanging in a collective that can never complete.
DEFAULT_HEARTBEAT_SECONDS = 30


def detected_cluster() -> str | None:
    """The multi-process cluster environment this process runs in, if any."""
    env = os.environ
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "openmpi"
    if "," in env.get("TPU_WORKER_HOSTNAMES", "") or "MEGASCALE_COORDINATOR_ADDRESS" in env:
        return "tpu"
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> str | None:
    """Join the multi-process job if there is one (call before any other JAX call); returns how."""
    import jax

    coordinator = coordinator or os.environ.get("MESHTRON_COORDINATOR")
    num_processes = num_processes or _int_env("MESHTRON_NUM_PROCESSES")
    if process_id is None:  # a Kubernetes Indexed Job numbers its pods in JOB_COMPLETION_INDEX
        process_id = _int_env("MESHTRON_PROCESS_ID")
        if process_id is None and coordinator:
            process_id = _int_env("JOB_COMPLETION_INDEX")
    heartbeat = _int_env("MESHTRON_HEARTBEAT_SECONDS") or DEFAULT_HEARTBEAT_SECONDS
    if coordinator or num_processes or process_id is not None:
        if not (coordinator and num_processes and process_id is not None):
            raise UserError("a multi-process run needs --coordinator HOST:PORT, --num-processes N and "
                            "--process-id I together (or MESHTRON_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID)")
        if not 0 <= process_id < num_processes:
            raise UserError(f"--process-id {process_id} must be in [0, {num_processes})")
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   initialization_timeout=_int_env("MESHTRON_INIT_TIMEOUT_SECONDS") or 300,
                                   heartbeat_timeout_seconds=heartbeat)
        return f"coordinator {coordinator}"
    cluster = detected_cluster()
    if cluster is not None:
        jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat)
        return cluster
    return None


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} must be an integer") from None
