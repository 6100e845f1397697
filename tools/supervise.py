"""The `meshtron` command of a multi-process job runs its work in a child process and watches it.

When a peer of the job dies, JAX's distributed runtime aborts the survivors from C++ (a fatal log
line, a stack trace, exit code 134), and a collective waiting on the dead peer can fail first with
a Python traceback. In a multi-process job the work therefore runs in a child process (the same
command, MESHTRON_SUPERVISED set) whose C++ log (file descriptor 2) goes to a file while Python's
own messages still reach the terminal; this parent turns the child's end by EXIT_PEER_LOST, a failed
collective or an abort into one line and exit code EXIT_PEER_LOST (75), so a scheduler can requeue
the job. The child dies with its parent (SIGKILL included); SIGTERM is passed on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading

from meshtron.parallel.peers import EXIT_PEER_LOST, peer_lost_message

ENV = "MESHTRON_SUPERVISED"  # set in the child: the path of its C++ log


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGKILL when the parent dies (Linux prctl)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def supervise(argv: list[str], process_id: int, num_processes: int) -> int:
    """Run `meshtron ARGV` in a watched child; its exit code, or EXIT_PEER_LOST with one line."""
    fd, log_path = tempfile.mkstemp(prefix=f"meshtron-process{process_id}-", suffix=".log")
    os.close(fd)
    env = dict(os.environ, **{ENV: log_path})
    child = subprocess.Popen([sys.executable, "-m", "meshtron.tools.cli", *argv], env=env,
                             preexec_fn=_die_with_parent)
    # SIGTERM is passed on; Ctrl-C (SIGINT) reaches the child from the terminal itself, so the parent only ignores it
    forward = {signal.SIGTERM: signal.signal(signal.SIGTERM, lambda s, f: child.send_signal(s)),
               signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    watch = _liveness(argv, process_id, num_processes, log_path)
    lost = None
    try:
        while (code := child.poll()) is None:
            if watch is None:
                code = child.wait()
                break
            lost = watch.poll()
            if lost:
                child.kill()
                code = child.wait()
                break
    finally:
        for sig, handler in forward.items():
            signal.signal(sig, handler)
        if watch:
            watch.close(finished=code == 0)
    if lost:
        sys.stderr.write(peer_lost_message(process_id, num_processes, f"{lost} (its log: {log_path})") + "\n")
        return EXIT_PEER_LOST
    if code == EXIT_PEER_LOST:  # the child wrote its line into the log
        sys.stderr.write(_last_meshtron_line(log_path) or peer_lost_message(process_id, num_processes, "a peer "
                         f"of the job is gone (its log: {log_path})") + "\n")
        return code
    if code in (-signal.SIGABRT, 128 + signal.SIGABRT):
        if not _mentions(log_path, ("distributed service", "heartbeat", "coordination service")):
            sys.stderr.write(f"meshtron: error: process {process_id} of {num_processes} aborted in JAX or XLA; "
                             f"its log: {log_path}\n")
            return 128 + signal.SIGABRT
        sys.stderr.write(peer_lost_message(process_id, num_processes, "JAX's distributed runtime ended it (a peer "
                                           f"died or the coordinator is unreachable; its log: {log_path})") + "\n")
        return EXIT_PEER_LOST
    _drop_if_empty(log_path)
    return code if code >= 0 else 128 - code


def _liveness(argv: list[str], process_id: int, num_processes: int, log_path: str):
    """The supervisors' channel (tools/liveness.py) when the coordinator's address is known, else None."""
    from meshtron.tools.liveness import Liveness

    coordinator = _flag(argv, "--coordinator", "MESHTRON_COORDINATOR")
    if not coordinator or not coordinator.rpartition(":")[2].isdigit():
        return None

    def log(line: str) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    return Liveness(coordinator, process_id, num_processes, log)


def _mentions(path: str, marks: tuple[str, ...]) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return False
    return any(mark in text for mark in marks)


def _last_meshtron_line(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.rstrip("\n") for line in f if line.startswith("meshtron: error: process ")]
    except OSError:
        return None
    return lines[-1] if lines else None


def _flag(argv: list[str], name: str, env: str) -> str | None:
    """The value of `--name V` / `--name=V` in argv, else of environment variable `env`."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return os.environ.get(env)


def multi_process(argv: list[str]) -> tuple[int, int] | None:
    """(process id, process count) if this command line starts a multi-process job, else None."""
    from meshtron.parallel.distributed import detected_cluster

    count = _flag(argv, "--num-processes", "MESHTRON_NUM_PROCESSES")
    index = _flag(argv, "--process-id", "MESHTRON_PROCESS_ID") or os.environ.get("JOB_COMPLETION_INDEX")
    if count is None and detected_cluster() is None:
        return None
    try:
        count_n = int(count) if count is not None else int(os.environ.get("SLURM_NTASKS")
                                                            or os.environ.get("OMPI_COMM_WORLD_SIZE") or 0)
        index_n = int(index) if index is not None else int(os.environ.get("SLURM_PROCID")
                                                            or os.environ.get("OMPI_COMM_WORLD_RANK") or 0)
    except ValueError:
        return None  # the child reports the bad value in one line
    return (index_n, count_n) if count_n > 1 else None


def maybe_supervise(argv: list[str]) -> int | None:
    """In a multi-process job's `meshtron` process: run ARGV supervised, return its exit code. In the
    supervised child: split its stderr, return None (go on). Otherwise None."""
    if os.environ.get(ENV):
        split_stderr_in_child()
        return None
    job = multi_process(argv)
    if job is None:
        return None
    return supervise(argv, *job)


def _drop_if_empty(path: str) -> None:
    try:
        if os.path.getsize(path) == 0:
            os.remove(path)
    except OSError:
        pass


def split_stderr_in_child() -> None:
    """In the supervised child: C++ writes to fd 2 go to the log file; Python's sys.stderr stays on the terminal."""
    log_path = os.environ.get(ENV)
    if not log_path:
        return
    terminal = os.dup(2)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 2)
    os.close(log)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    threading.excepthook = _thread_failure_to_log


def _thread_failure_to_log(args) -> None:
    """A background thread's traceback (an async checkpoint commit waiting on a peer that died, say) goes to
    the child's log: the terminal keeps the one line the main thread or the parent writes."""
    import traceback

    with open(os.environ[ENV], "a", encoding="utf-8", errors="backslashreplace") as log:
        log.write(f"exception in thread {args.thread.name if args.thread else '?'}:\n")
        traceback.print_exception(args.exc_type, args.exc_value, args.exc_traceback, file=log)
