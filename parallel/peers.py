"""A dead peer in a multi-process job: one Meshtron line and exit code 75, never JAX's abort.

When a process of a job dies, JAX's distributed runtime ends the survivors from C++: the coordination
service (hosted by process 0) notices the missing heartbeats after `heartbeat_timeout_seconds`, or a
survivor loses its connection to process 0 at once, and the runtime logs a fatal line, a stack trace
and aborts (exit code 134). A collective waiting on the dead peer may fail first in Python ("Gloo
all-reduce failed ... Connection reset by peer"). What was tried, on two local processes (jax 0.10.2):

- the runtime client's `missed_heartbeat_callback` (the hook meant for this): calling it crashes the
  process (`std::bad_cast` while converting the status to Python), so it cannot be used;
- a heartbeat thread of our own (counters in the coordination service's key-value store): it reports a
  dead worker within seconds, but a Python thread starves when the host is loaded or the GIL is held
  (tokenizer training, data preparation), which gave false alarms; and it cannot beat the runtime's
  immediate abort when process 0 dies;
- a watchdog process (adopted, `meshtron.tools.supervise`): the `meshtron` command of a multi-process
  job runs the work in a child whose C++ log goes to a file, and turns the child's abort into one line
  and EXIT_PEER_LOST. A collective that fails in Python ends the same way (`exit_peer_lost`).
"""

from __future__ import annotations

import os

# sysexits.h EX_TEMPFAIL: a temporary failure; rerunning the same command resumes from the last checkpoint
EXIT_PEER_LOST = 75


def peer_lost_message(process_id: int, num_processes: int, why: str) -> str:
    """The one line a process prints when its job lost a peer."""
    return (f"meshtron: error: process {process_id} of {num_processes} stopped: {why}. Checkpoints already saved "
            "are intact: run the same command in every process to resume")


def exit_peer_lost(process_id: int, num_processes: int, why: str) -> None:
    """Write the line on file descriptor 2 (the supervisor's log when supervised, else the terminal) and end the
    process now: other threads may be blocked in a collective that can never complete."""
    os.write(2, (peer_lost_message(process_id, num_processes, why) + "\n").encode("utf-8", "backslashreplace"))
    os._exit(EXIT_PEER_LOST)


def is_peer_failure(error: BaseException) -> bool:
    """True if `error` is a collective or coordination call that failed because a peer of the job is gone."""
    text = str(error)
    return type(error).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and any(
        mark in text for mark in ("Gloo", "Connection reset", "UNAVAILABLE", "heartbeat", "coordination service",
                                  "Connection refused", "Broken pipe", "DEADLINE_EXCEEDED"))
