"""Chaos soak: a 2-process training job whose processes are killed with SIGKILL at random moments.

    python -m meshtron.tools.chaos_soak --cycles 10 --seed 0 --workdir /tmp/soak

Runs the job once without interruption (the reference), then again with a kill in each cycle: a seeded
random step (and a random delay after it) and a random victim, process 0 (the coordinator) or process 1.
The survivor must stop by itself with one `meshtron: error:` line and exit code 75 (parallel/peers.py);
the job is then started again and resumes from its last checkpoint. After the last cycle the job runs to
the end, and its final parameters must equal the reference's exactly. Prints one JSON report: cycles
survived, survivors' exit codes, steps lost per kill (the logged step at the kill minus the step resumed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

CONFIG = ["model.n_layers=2", "model.d_model=64", "model.n_heads=4", "model.d_ff=128", "model.vocab_size=512",
          "model.seq_len=32", "train.batch_size=8", "train.warmup_steps=2", "train.log_every=1",
          "train.eval_batches=2", "train.sample_tokens=0", "checkpoint.every=2"]
CORPUS_FILES = ["argparse.py", "textwrap.py", "string.py", "shlex.py", "fractions.py"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _corpus(workdir: Path) -> Path:
    out = workdir / "corpus"
    if not out.exists():
        out.mkdir(parents=True)
        for name in CORPUS_FILES:
            shutil.copy(Path(sysconfig.get_paths()["stdlib"]) / name, out / name)
    return out


class Job:
    """The two processes of one start of the job."""

    def __init__(self, run_dir: Path, corpus: Path, steps: int, logs: Path, env: dict):
        port = _free_port()
        self.run_dir, self.logs = run_dir, logs
        logs.mkdir(parents=True, exist_ok=True)
        self.procs, self.err_paths = [], []
        for i in (0, 1):
            err = logs / f"process{i}.{time.time_ns()}.err"
            self.err_paths.append(err)
            cmd = [sys.executable, "-m", "meshtron.tools.cli", "--cpu-devices", "2", "train", "--run-dir", str(run_dir),
                   "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i), *CONFIG,
                   f"train.steps={steps}", f"data.source={corpus}"]
            self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(err, "w"), env=env))

    def wait(self, timeout: float) -> list[int]:
        deadline = time.time() + timeout
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=max(1.0, deadline - time.time())))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        return codes

    def stderr(self, i: int) -> str:
        return self.err_paths[i].read_text(errors="replace")

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)


def logged_step(run_dir: Path) -> int:
    """The last training step in metrics.jsonl (0 if none)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [0]
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in record and isinstance(record.get("step"), int):
            steps.append(record["step"])
    return max(steps)


def checkpoint_steps(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def final_params(run_dir: Path) -> dict:
    """The run's last checkpointed parameters as host arrays (needs JAX in this process)."""
    from meshtron.train.run.weights import load_run_params

    return load_run_params(run_dir).pure_params()


def equal_params(a: dict, b: dict) -> bool:
    import jax
    import numpy as np

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def _env() -> dict:
    env = dict(os.environ, MESHTRON_HEARTBEAT_SECONDS=os.environ.get("MESHTRON_HEARTBEAT_SECONDS", "10"))
    # --cpu-devices sets the device count of each process; a backend optimisation level (the test suite
    # turns it off to compile faster) is passed on
    level = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.startswith("--xla_backend_optimization_level")]
    env.pop("XLA_FLAGS", None)
    if level:
        env["XLA_FLAGS"] = level[-1]
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def run_to_end(run_dir: Path, corpus: Path, steps: int, logs: Path, timeout: float = 900, tries: int = 3) -> int:
    """Run the job until it completes; how many starts failed on the way (see _started)."""
    for failed in range(tries):
        job = Job(run_dir, corpus, steps, logs, _env())
        codes = job.wait(timeout)
        if codes == [0, 0]:
            return failed
    raise RuntimeError(f"the job ended with {codes}: {job.stderr(0)[-1500:]} {job.stderr(1)[-1500:]}")


def _started(run_dir: Path, corpus: Path, steps: int, logs: Path, target: int, timeout: float, tries: int = 3):
    """(a job that logged step `target`, failed starts). A start can fail without any kill: JAX's CPU
    collectives (Gloo) give a peer 30 s to join, and on a loaded host one process may compile for longer."""
    def reached() -> bool:  # by this start: lines left by an earlier start (cut back on resume) do not count
        path = run_dir / "metrics.jsonl"
        return path.exists() and path.stat().st_mtime > started and logged_step(run_dir) >= target

    for failed in range(tries):
        started = time.time()
        job = Job(run_dir, corpus, steps, logs, _env())
        deadline = time.time() + timeout
        while not reached() and job.alive() and time.time() < deadline:
            time.sleep(0.05)
        if reached():
            return job, failed
        job.wait(5)
    raise RuntimeError(f"the job did not reach step {target} in {tries} starts: {job.stderr(0)[-800:]} "
                       f"{job.stderr(1)[-800:]}")


def kill_cycle(run_dir: Path, corpus: Path, steps: int, logs: Path, rng: random.Random, timeout: float) -> dict:
    """Start the job, kill a random process at a random moment, wait for the survivor; what happened."""
    resumed = checkpoint_steps(run_dir)[-1] if checkpoint_steps(run_dir) else 0
    target = min(steps - 1, resumed + rng.randint(1, 4))
    victim, delay = rng.choice([0, 1]), rng.uniform(0.0, 0.5)
    job, failed_starts = _started(run_dir, corpus, steps, logs, target, timeout)
    time.sleep(delay)
    at_kill = logged_step(run_dir)
    job.procs[victim].send_signal(signal.SIGKILL)
    killed = time.time()
    survivor = 1 - victim
    code = job.wait(180)[survivor]
    lines = [x for x in job.stderr(survivor).splitlines() if x.strip()]
    return {"victim": victim, "resumed_from": resumed, "logged_at_kill": at_kill, "steps_lost": None,
            "survivor_exit": code, "survivor_seconds": round(time.time() - killed, 1), "failed_starts": failed_starts,
            "survivor_last_line": lines[-1] if lines else "", "survivor_one_line":
                sum(1 for x in lines if x.startswith("meshtron: error:")) == 1 and not any(
                    "Traceback" in x or "Check failure" in x for x in lines)}


def soak(workdir: Path, cycles: int = 10, seed: int = 0, steps: int = 30, timeout: float = 600) -> dict:
    """The whole soak; the report (see the module docstring)."""
    workdir.mkdir(parents=True, exist_ok=True)
    corpus = _corpus(workdir)
    rng = random.Random(seed)
    started = time.time()
    reference, chaos = workdir / "reference", workdir / "chaos"
    for d in (reference, chaos):
        shutil.rmtree(d, ignore_errors=True)
    failed_starts = run_to_end(reference, corpus, steps, workdir / "logs")
    kills = []
    for cycle in range(cycles):
        kills.append(kill_cycle(chaos, corpus, steps, workdir / "logs", rng, timeout))
        print(json.dumps({"cycle": cycle + 1, **kills[-1]}), file=sys.stderr, flush=True)  # progress
    for i, kill in enumerate(kills):  # a kill loses what was logged after the checkpoint the next start resumed
        resumed_next = kills[i + 1]["resumed_from"] if i + 1 < len(kills) else None
        if resumed_next is not None:
            kill["steps_lost"] = kill["logged_at_kill"] - resumed_next
    last = checkpoint_steps(chaos)
    if kills:
        kills[-1]["steps_lost"] = kills[-1]["logged_at_kill"] - (last[-1] if last else 0)
    failed_starts += run_to_end(chaos, corpus, steps, workdir / "logs")
    same = equal_params(final_params(chaos), final_params(reference))
    lost = [k["steps_lost"] for k in kills]
    return {"cycles": cycles, "seed": seed, "steps": steps, "final_params_equal": same,
            "survivors_exit_75": sum(k["survivor_exit"] == 75 for k in kills),
            "survivors_one_line": sum(k["survivor_one_line"] for k in kills),
            "steps_lost_mean": sum(lost) / len(lost) if lost else 0, "steps_lost_max": max(lost, default=0),
            "failed_starts": failed_starts + sum(k["failed_starts"] for k in kills),
            "seconds": round(time.time() - started), "kills": kills}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshtron.tools.chaos_soak", description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=10, help="kills (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments and victims")
    parser.add_argument("--steps", type=int, default=30, help="training steps of the job (default 30)")
    parser.add_argument("--workdir", default="chaos-soak", help="where the runs and logs go")
    args = parser.parse_args(argv)
    report = soak(Path(args.workdir), args.cycles, args.seed, args.steps)
    print(json.dumps(report, indent=1))
    ok = report["final_params_equal"] and report["survivors_exit_75"] == args.cycles
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
