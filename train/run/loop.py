"""The training run, top to bottom: config -> data -> mesh -> state (new or resumed) -> steps
-> evaluation, checkpoints, metrics -> final save, report and a text sample."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np
import yaml

from meshtron.configs.errors import UserError
from meshtron.configs.loader import config_to_dict
from meshtron.configs.schema import Config
from meshtron.model.counting import count_params
from meshtron.parallel.mesh import describe_mesh, mesh_for
from meshtron.train.planner.plan import make_plan
from meshtron.train.run.checkpoint import Checkpointer, check_compatible, checkpoint_meta
from meshtron.train.data.prepare import prepare_data
from meshtron.train.run.metrics import MetricsWriter
from meshtron.train.run.optim import lr_schedule
from meshtron.train.run.weights import RUN_FILES
from meshtron.train.scaling.report import duration, end_report, format_end_report, format_start_report, start_report
from meshtron.train.run.step import Training, build_training


class TrainingStopped(UserError):
    """The run stopped on purpose (too many bad steps); its last good state is saved."""


@dataclass
class RunResult:
    """What a finished (or interrupted) run reports."""

    run_dir: Path
    start_step: int
    steps_done: int
    losses: list = field(default_factory=list)  # (step, loss) of every logged step
    eval_loss: float | None = None
    tokens_per_s: float = 0.0
    interrupted: bool = False
    sample: str = ""
    summary: dict = field(default_factory=dict)


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Refuse a second live writer on the same run directory (the lock dies with its process)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f".lock.{jax.process_index()}"  # one per process of a multi-process job
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"run directory {run_dir} is in use by a live run ({owner}); wait for it or use another "
                        "--run-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


class _StopRequest:
    """SIGTERM / SIGINT: finish the current step, save, exit cleanly."""

    def __init__(self):
        self.signal_name = None
        self._previous = {}

    def __enter__(self):
        if threading_is_main():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def threading_is_main() -> bool:
    """Signal handlers can only be installed from the main thread."""
    import threading

    return threading.current_thread() is threading.main_thread()


def _progress(total: int, initial: int, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=True)


def train(config: Config, run_dir: Path, log=print, stop_after: int | None = None) -> RunResult:
    """Train `config` in `run_dir`, resuming from its latest checkpoint if it has one.

    stop_after: end this invocation after that many steps, saving a checkpoint as a preemption would.
    """
    run_dir = Path(run_dir)
    refuse_links_outside(run_dir)
    with run_lock(run_dir):
        try:
            return _train(config, run_dir, log, stop_after)
        except Exception as error:
            if _disk_full(error):
                raise TrainingStopped(f"no space left on the device of {run_dir}: the run stopped; earlier "
                                      "checkpoints are intact. Free space (or lower checkpoint.keep) and resume "
                                      f"with `meshtron train --run-dir {run_dir}`") from None
            raise


def refuse_links_outside(run_dir: Path) -> None:
    """Meshtron writes only inside the run directory: a file or folder there that links elsewhere is refused."""
    root = run_dir.resolve()
    candidates = [run_dir / name for name in RUN_FILES] + list(run_dir.glob(".lock*"))
    for path in candidates:
        if path.is_symlink():
            target = path.resolve()
            if root not in target.parents and target != root:
                raise UserError(f"{path} links to {target}, outside the run directory; Meshtron only writes inside "
                                "it: remove the link or use another --run-dir")


def _disk_full(error: BaseException) -> bool:
    """True if `error` (or what caused it) is a full disk or quota; Orbax/TensorStore wrap the OSError."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _restore_latest(ckpt: Checkpointer, training: Training, config: Config, say):
    """(params, opt_state, step) of the newest readable checkpoint; unreadable ones are reported and set aside."""
    for step in reversed(ckpt.steps()):
        try:
            meta = ckpt.read_meta(step)
        except Exception as e:  # a truncated or corrupt checkpoint: Orbax/TensorStore raise many types
            say(f"warning: checkpoint {step} is unreadable ({_reason(e)}); moved to {ckpt.quarantine(step).name}")
            continue
        check_compatible(meta["config"], config)  # a config error, not corruption: stop here
        abstract_params, abstract_opt = training.abstract_state()
        try:
            params, opt_state, meta = ckpt.restore(step, abstract_params, abstract_opt)
        except Exception as e:
            say(f"warning: checkpoint {step} is unreadable ({_reason(e)}); moved to {ckpt.quarantine(step).name}")
            continue
        return params, opt_state, int(meta["step"])
    return None


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{error.__class__.__name__}: {text[0][:160]}" if text else error.__class__.__name__


def _train(config: Config, run_dir: Path, log, stop_after: int | None = None) -> RunResult:
    is_main = jax.process_index() == 0
    say = log if is_main else (lambda *a, **k: None)

    data = prepare_data(config, log=say, run_dir=run_dir)
    shape, mesh = mesh_for(config)
    training = build_training(config, mesh, shape)
    ckpt = Checkpointer(run_dir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
    try:
        return _run(config, run_dir, say, stop_after, data, shape, training, ckpt, is_main)
    except BaseException:
        with contextlib.suppress(BaseException):  # let pending background writes finish or fail quietly
            ckpt.close()
        raise


def _run(config, run_dir, say, stop_after, data, shape, training, ckpt, is_main) -> RunResult:
    """The body of a run once data, mesh and checkpointer exist."""
    t, m = config.train, config.model
    tokenizer_bytes = data.tokenizer.model_bytes()
    if is_main:
        data.tokenizer.save_to(run_dir)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))

    restored = _restore_latest(ckpt, training, config, say)
    if restored is not None:
        params, opt_state, step = restored
        say(f"resumed from checkpoint at step {step} in {ckpt.directory}")
    else:
        params = training.init_params()
        opt_state = training.init_opt_state(params)
        step = 0

    tokens_per_step = t.batch_size * m.seq_len
    _announce(config, data, shape, say)
    peak_devices, peak, peak_source = _peak(say)
    scaling = start_report(config, peak_devices, peak)
    say(format_start_report(scaling))

    train_step = training.compile_train_step()
    eval_step = training.compile_eval_step()
    metrics = MetricsWriter(run_dir, enabled=is_main)
    metrics.write({"step": step, "event": "scaling_start", **_flat(scaling), "peak_source": peak_source})
    schedule = lr_schedule(t)
    proc, nproc = jax.process_index(), jax.process_count()
    val = [training.shard_batch(b) for b in data.val_batches(t.batch_size, t.eval_batches, proc, nproc)]
    batches = data.train_batches(t.batch_size, t.seed, step, proc, nproc, config.data.prefetch)
    result = RunResult(run_dir=run_dir, start_step=step, steps_done=step)

    def evaluate(at_step: int) -> float:
        loss = float(np.mean([float(eval_step(params, b)) for b in val]))
        metrics.write({"step": at_step, "eval_loss": loss})
        result.eval_loss = loss
        return loss

    def save(at_step: int, force: bool = False) -> None:
        ckpt.save(at_step, params, opt_state, checkpoint_meta(config, at_step, tokenizer_bytes, training.vocab_rows),
                  force=force)

    bar = _progress(t.steps, step, is_main)
    tracker = _Tracker(result, metrics, bar)
    first_step = step
    window_start, window_tokens, timed_tokens, timed_seconds = time.time(), 0, 0, 0.0
    with _StopRequest() as stop:
        while step < t.steps:
            batch = training.shard_batch(next(batches))
            params, opt_state, out = train_step(params, opt_state, batch, step)
            step += 1
            # a step's metrics are read once the next step is dispatched, so the device never idles
            tracker.flush()
            tracker.pending = (step, out)
            if step == first_step + 1:  # the first step includes compilation: not timed
                tracker.flush()
                window_start = time.time()
            else:
                window_tokens += tokens_per_step
            if stop_after is not None and step - first_step >= stop_after and step < t.steps:
                stop.signal_name = f"a stop after {stop_after} steps"
            if step % t.log_every == 0 or step == t.steps or stop.signal_name is not None:
                tracker.flush()
                elapsed = time.time() - window_start
                rate = window_tokens / elapsed if window_tokens and elapsed > 0 else None  # None: compile step
                if rate is not None:
                    timed_tokens, timed_seconds = timed_tokens + window_tokens, timed_seconds + elapsed
                if result.losses and result.losses[-1][0] == step:
                    loss = result.losses[-1][1]
                    metrics.write({"step": step, "loss": loss, "tokens_per_s": rate, "lr": float(schedule(step - 1)),
                                   "bad_steps_total": tracker.bad_total})
                    if rate is not None and bar is not None:
                        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}")
                    elif rate is not None:
                        eta = duration((t.steps - step) * tokens_per_step / rate)
                        say(f"step {step}/{t.steps}  loss {loss:.4f}  {rate:,.0f} tokens/s  ETA {eta}")
                window_start, window_tokens = time.time(), 0
            if tracker.bad_run >= t.max_bad_steps:
                tracker.flush()
                # skipped steps left parameters and optimizer state as they were; saving them at this step
                # moves the data stream past the batches that broke, as continuing would have
                save(step, force=True)
                ckpt.close()
                metrics.close()
                raise TrainingStopped(f"{tracker.bad_run} consecutive steps had a NaN/Inf loss or gradient (their "
                                      f"updates were skipped); the last good state is saved as step {step}. "
                                      "Lower train.lr or raise train.max_bad_steps, then resume")
            if t.eval_every and step % t.eval_every == 0 and step < t.steps:
                evaluate(step)
            if config.checkpoint.every and step % config.checkpoint.every == 0 and step < t.steps:
                save(step)
            if stop.signal_name is not None:
                result.interrupted = True
                break
        tracker.flush()
    if bar is not None:
        bar.close()
    result.steps_done = step
    result.tokens_per_s = timed_tokens / timed_seconds if timed_seconds else 0.0
    if not result.interrupted:
        evaluate(step)
    if ckpt.latest_step() != step:
        save(step, force=True)
    ckpt.close()
    final_loss = result.losses[-1][1] if result.losses else None
    spent = end_report(scaling, step, timed_seconds, timed_tokens, final_loss, result.eval_loss, peak_devices, peak)
    # the evaluation line above already carries eval_loss: evaluation lines stay the only ones with it
    metrics.write({"step": step, "event": "scaling_end", **{k: v for k, v in _flat(spent).items() if k != "eval_loss"}})
    result.summary = spent
    if timed_seconds:
        say(format_end_report(spent))
    metrics.close()
    if result.interrupted:
        say(f"stopping ({stop.signal_name}): saved step {step} to {ckpt.directory}; resume with "
            f"`meshtron train --run-dir {run_dir}`")
    return result


def _announce(config: Config, data, shape, say) -> None:
    """What the run is about to do: model, mesh and strategy, data, the plan's per-device memory."""
    m = config.model
    counts = count_params(m)
    say(f"model: {config.name} ({m.family}), {counts.total:,} parameters ({counts.non_embedding:,} non-embedding)")
    say(f"mesh: {describe_mesh(shape)}; ZeRO stage {config.parallel.zero_stage}; "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s), {jax.process_count()} process(es)")
    say(f"data: {data.key}, {data.train_tokens:,} training tokens; "
        f"{config.train.batch_size * m.seq_len:,} tokens per step")
    if m.attention == "cudnn" and jax.default_backend() != "gpu":
        say(f"note: model.attention=cudnn needs a GPU; using XLA attention on {jax.default_backend()}")
    plan = make_plan(config, shape.devices)
    say(f"plan per device: params {_mb(plan.params_bytes)}, optimizer {_mb(plan.optimizer_bytes)}, gradients "
        f"{_mb(plan.grads_bytes)}, activations {_mb(plan.activation_bytes)} (remat {m.remat}); total "
        f"{_mb(plan.total_bytes)} (`meshtron plan` for the breakdown)")
    if config.parallel.zero_stage == 3 and not m.scan_layers:
        say("warning: ZeRO-3 with model.scan_layers=false lets XLA keep every gathered block for the backward pass "
            "(little memory saved); keep scan_layers=true")


def _mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def _peak(say) -> tuple[int, float, str]:
    """(devices, peak FLOP/s per device, source) for MFU. Simulated CPU devices share the host's cores, so
    a CPU run is measured against one host-wide matmul peak."""
    from meshtron.train.planner.hardware import device_peak, peak_devices

    peak, source = device_peak(jax.devices()[0])
    if source == "measured":
        say(f"note: no published peak for {jax.devices()[0].device_kind}; MFU is against a measured matmul "
            f"peak of {peak / 1e9:,.0f} GFLOP/s")
    return peak_devices(jax.device_count(), jax.devices()[0].platform), peak, source


def _flat(report: dict) -> dict:
    """Report values that fit one metrics line (nested dicts flattened with a prefix)."""
    out = {}
    for key, value in report.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items() if isinstance(v, (int, float, str))})
        else:
            out[key] = value
    return out


class _Tracker:
    """Reads step metrics from the device, one step behind; counts NaN/Inf steps."""

    def __init__(self, result: RunResult, metrics: MetricsWriter, bar):
        self.result, self.metrics, self.bar = result, metrics, bar
        self.pending = None
        self.bad_run = 0  # consecutive non-finite steps
        self.bad_total = 0

    def flush(self) -> None:
        """Record the pending step (blocks until the device has finished it)."""
        if self.pending is None:
            return
        at_step, out = self.pending
        self.pending = None
        loss, finite = float(out["loss"]), bool(out["finite"])
        if self.bar is not None:
            self.bar.update(at_step - self.bar.n)
        if finite:
            self.bad_run = 0
            self.result.losses.append((at_step, loss))
        else:
            self.bad_run += 1
            self.bad_total += 1
            self.metrics.write({"step": at_step, "bad_step": True, "loss": loss})
