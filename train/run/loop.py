"""The training run, as named steps: restore or init -> steps (each: step, log, evaluate and save) -> finish.

    run = Run(config, run_dir, log)     # data, mesh, the sharded step, the checkpointer
    run.restore_or_init()               # the newest readable checkpoint, or fresh sharded state
    run.begin()                         # announce, compile, open metrics and the data stream
    run.run_steps(stop_after)           # step, log, evaluate_and_save ... until done or stopped
    return run.finish()                 # final evaluation, checkpoint and scaling report

`train()` wraps that in the run-directory policy (run/rundir.py): one live writer, no links
leading out, a full disk reported as one line.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from meshtron.configs.errors import UserError
from meshtron.configs.schema import Config
from meshtron.parallel.mesh import mesh_for
from meshtron.train.data.prepare import prepare_data
from meshtron.train.run.announce import announce, flat, peak_for_mfu
from meshtron.train.run.checkpoint import Checkpointer, check_compatible, checkpoint_meta
from meshtron.train.run.metrics import MetricsWriter
from meshtron.train.run.optim import lr_schedule
from meshtron.train.run.rundir import is_disk_full, refuse_links_outside, run_lock, write_config
from meshtron.train.run.step import build_training
from meshtron.train.scaling.forecast import Forecaster
from meshtron.train.scaling.report import duration, end_report, format_end_report, format_start_report, start_report


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
    summary: dict = field(default_factory=dict)


def train(config: Config, run_dir: Path, log=print, stop_after: int | None = None) -> RunResult:
    """Train `config` in `run_dir`, resuming from its latest checkpoint if it has one.

    stop_after: end this invocation after that many steps, saving a checkpoint as a preemption would.
    """
    run_dir = Path(run_dir)
    refuse_links_outside(run_dir)
    with run_lock(run_dir):
        try:
            run = Run(config, run_dir, log)
            try:
                run.restore_or_init()
                run.begin()
                run.run_steps(stop_after)
                return run.finish()
            except BaseException:
                run.abandon()
                raise
        except Exception as error:
            if is_disk_full(error):
                raise TrainingStopped(f"no space left on the device of {run_dir}: the run stopped; earlier "
                                      "checkpoints are intact. Free space (or lower checkpoint.keep) and resume "
                                      f"with `meshtron train --run-dir {run_dir}`") from None
            raise


class Run:
    """One invocation of a training run: its state (params, optimizer state, step) and the steps it takes."""

    def __init__(self, config: Config, run_dir: Path, log):
        self.config, self.run_dir = config, run_dir
        self.is_main = jax.process_index() == 0
        self.say = log if self.is_main else (lambda *a, **k: None)
        self.data = prepare_data(config, log=self.say, run_dir=run_dir)
        self.shape, mesh = mesh_for(config)
        self.training = build_training(config, mesh, self.shape)
        self.ckpt = Checkpointer(run_dir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
        self.tokenizer_bytes = self.data.tokenizer.model_bytes()
        self.params = self.opt_state = None
        self.step = 0
        self.stop_reason = None

    def restore_or_init(self) -> None:
        """Write the run's config and tokenizer; continue from the newest readable checkpoint or start fresh."""
        if self.is_main:
            self.data.tokenizer.save_to(self.run_dir)
            write_config(self.run_dir, self.config)
        restored = self._restore_latest()
        if restored is not None:
            self.params, self.opt_state, self.step = restored
            self.say(f"resumed from checkpoint at step {self.step} in {self.ckpt.directory}")
        else:
            self.params = self.training.init_params()
            self.opt_state = self.training.init_opt_state(self.params)
            self.step = 0

    def _restore_latest(self):
        """(params, opt_state, step) of the newest readable checkpoint; unreadable ones are reported and set aside."""
        for step in reversed(self.ckpt.steps()):
            try:
                meta = self.ckpt.read_meta(step)
            except Exception as e:  # a truncated or corrupt checkpoint: Orbax/TensorStore raise many types
                self._set_aside(step, e)
                continue
            check_compatible(meta["config"], self.config)  # a config error, not corruption: stop here
            abstract_params, abstract_opt = self.training.abstract_state()
            try:
                params, opt_state, meta = self.ckpt.restore(step, abstract_params, abstract_opt)
            except Exception as e:
                self._set_aside(step, e)
                continue
            return params, opt_state, int(meta["step"])
        return None

    def _set_aside(self, step: int, error: Exception) -> None:
        text = str(error).strip().splitlines()
        reason = f"{error.__class__.__name__}: {text[0][:160]}" if text else error.__class__.__name__
        self.say(f"warning: checkpoint {step} is unreadable ({reason}); moved to {self.ckpt.quarantine(step).name}")

    def begin(self) -> None:
        """Announce the run, compile its steps, open the metrics file and the data streams."""
        t = self.config.train
        announce(self.config, self.data, self.shape, self.say)
        self.peak_devices, self.peak, peak_source = peak_for_mfu(self.say)
        self.scaling = start_report(self.config, self.peak_devices, self.peak, unique_tokens=self.data.train_tokens)
        self.forecaster = Forecaster(t.steps, t.warmup_steps)
        self.say(format_start_report(self.scaling))
        self.train_step = self.training.jit_train_step()
        self.eval_step = self.training.jit_eval_step()
        self.metrics = MetricsWriter(self.run_dir, enabled=self.is_main, resume_step=self.step)
        if self.metrics.cut_lines:
            self.say(f"note: {self.metrics.cut_lines} metrics lines past step {self.step} (logged before the run "
                     "stopped) moved to metrics.cut.jsonl, TensorBoard's to tensorboard.cut/")
        self.metrics.write({"step": self.step, "event": "scaling_start", **flat(self.scaling),
                            "peak_source": peak_source})
        self.schedule = lr_schedule(t)
        proc, nproc = jax.process_index(), jax.process_count()
        self.val = [self.training.shard_batch(b) for b in self.data.val_batches(t.batch_size, t.eval_batches, proc,
                                                                                nproc)]
        self.batches = self.data.train_batches(t.batch_size, t.seed, self.step, proc, nproc, self.config.data.prefetch)
        self.result = RunResult(run_dir=self.run_dir, start_step=self.step, steps_done=self.step)
        self.first_step = self.step
        self.tokens_per_step = t.batch_size * self.config.model.seq_len
        self.bar = _progress(t.steps, self.step, self.is_main)
        self.tracker = _Tracker(self.result, self.metrics, self.bar)
        self.clock = _Throughput()

    def run_steps(self, stop_after: int | None = None) -> None:
        """Step until train.steps, a stop signal (SIGTERM/SIGINT), or `stop_after` steps of this invocation."""
        t = self.config.train
        with _StopRequest() as stop:
            while self.step < t.steps:
                self.take_step()
                if stop_after is not None and self.step - self.first_step >= stop_after and self.step < t.steps:
                    stop.signal_name = f"a stop after {stop_after} steps"
                if self.step % t.log_every == 0 or self.step == t.steps or stop.signal_name is not None:
                    self.log()
                self.stop_on_bad_steps()
                self.evaluate_and_save()
                self.forecast()
                if stop.signal_name is not None:
                    self.result.interrupted, self.stop_reason = True, stop.signal_name
                    break
            self.tracker.flush()

    def take_step(self) -> None:
        """Dispatch one optimizer step; the previous step's metrics are read once this one is queued, so the
        device never idles."""
        batch = self.training.shard_batch(next(self.batches))
        self.params, self.opt_state, out = self.train_step(self.params, self.opt_state, batch, self.step)
        self.step += 1
        self.tracker.flush()
        self.tracker.pending = (self.step, out)
        if self.step == self.first_step + 1:  # the first step includes compilation: not timed
            self.tracker.flush()
            self.clock.restart()
        else:
            self.clock.tokens += self.tokens_per_step

    def log(self) -> None:
        """A metrics line for this step (loss, tokens/s, learning rate) and the progress display."""
        t = self.config.train
        self.tracker.flush()
        rate = self.clock.close_window()  # None: the window held only the compiling step
        if self.result.losses and self.result.losses[-1][0] == self.step:
            loss = self.result.losses[-1][1]
            self.metrics.write({"step": self.step, "loss": loss, "tokens_per_s": rate,
                                "lr": float(self.schedule(self.step - 1)), "bad_steps_total": self.tracker.bad_total})
            if rate is not None and self.bar is not None:
                self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}")
            elif rate is not None:
                eta = duration((t.steps - self.step) * self.tokens_per_step / rate)
                self.say(f"step {self.step}/{t.steps}  loss {loss:.4f}  {rate:,.0f} tokens/s  ETA {eta}")
        self.clock.restart()

    def stop_on_bad_steps(self) -> None:
        """After train.max_bad_steps NaN/Inf steps in a row: save the last good state and stop."""
        if self.tracker.bad_run < self.config.train.max_bad_steps:
            return
        self.tracker.flush()
        # skipped steps left parameters and optimizer state as they were; saving them at this step
        # moves the data stream past the batches that broke, as continuing would have
        self.save(force=True)
        self.ckpt.close()
        self.metrics.close()
        raise TrainingStopped(f"{self.tracker.bad_run} consecutive steps had a NaN/Inf loss or gradient (their "
                              f"updates were skipped); the last good state is saved as step {self.step}. "
                              "Lower train.lr or raise train.max_bad_steps, then resume")

    def evaluate_and_save(self) -> None:
        """The periodic evaluation (train.eval_every) and checkpoint (checkpoint.every) due at this step."""
        step, last = self.step, self.config.train.steps
        if self.config.train.eval_every and step % self.config.train.eval_every == 0 and step < last:
            self.evaluate()
        if self.config.checkpoint.every and step % self.config.checkpoint.every == 0 and step < last:
            self.save()

    def evaluate(self) -> float:
        """Mean loss over the validation batches, written as an eval_loss line."""
        loss = float(np.mean([float(self.eval_step(self.params, b)) for b in self.val]))
        self.metrics.write({"step": self.step, "eval_loss": loss})
        self.result.eval_loss = loss
        self.forecaster.observe(self.step, loss)
        return loss

    def forecast(self) -> None:
        """The final-loss forecasts due at 25/50/75% of the steps, and the one-line overfitting warning."""
        lines, records = self.forecaster.at_step(self.step, self.result.losses)
        for line, record in zip(lines, records):
            self.say(line)
            self.metrics.write(record)

    def save(self, force: bool = False) -> None:
        """Start a checkpoint of this step (asynchronous unless checkpoint.async_save=false)."""
        meta = checkpoint_meta(self.config, self.step, self.tokenizer_bytes, self.training.vocab_rows)
        self.ckpt.save(self.step, self.params, self.opt_state, meta, force=force)

    def finish(self) -> RunResult:
        """Final evaluation (unless interrupted), final checkpoint, the scaling report; returns the result."""
        if self.bar is not None:
            self.bar.close()
        result, step = self.result, self.step
        result.steps_done = step
        result.tokens_per_s = self.clock.mean_rate
        if not result.interrupted:
            self.evaluate()
        if self.ckpt.latest_step() != step:
            self.save(force=True)
        self.ckpt.close()
        final_loss = result.losses[-1][1] if result.losses else None
        spent = end_report(self.scaling, step, self.clock.timed_seconds, self.clock.timed_tokens, final_loss,
                           result.eval_loss, self.peak_devices, self.peak)
        # the evaluation line above already carries eval_loss: evaluation lines stay the only ones with it
        self.metrics.write({"step": step, "event": "scaling_end",
                            **{k: v for k, v in flat(spent).items() if k != "eval_loss"}})
        result.summary = spent
        if self.clock.timed_seconds:
            self.say("\n".join([format_end_report(spent), *self.forecaster.compare(final_loss, result.eval_loss)]))
        self.metrics.close()
        if result.interrupted:
            self.say(f"stopping ({self.stop_reason}): saved step {step} to {self.ckpt.directory}; resume with "
                     f"`meshtron train --run-dir {self.run_dir}`")
        return result

    def abandon(self) -> None:
        """After an error: let pending background checkpoint writes finish or fail quietly."""
        with contextlib.suppress(BaseException):
            self.ckpt.close()


class _Throughput:
    """Tokens per second over windows of steps, and over all timed steps (the compiling step never counts)."""

    def __init__(self):
        self.start, self.tokens = time.time(), 0
        self.timed_tokens, self.timed_seconds = 0, 0.0

    def restart(self) -> None:
        self.start, self.tokens = time.time(), 0

    def close_window(self) -> float | None:
        """Tokens/s since the window started (None if no timed step ran in it); adds it to the totals."""
        elapsed = time.time() - self.start
        rate = self.tokens / elapsed if self.tokens and elapsed > 0 else None
        if rate is not None:
            self.timed_tokens, self.timed_seconds = self.timed_tokens + self.tokens, self.timed_seconds + elapsed
        return rate

    @property
    def mean_rate(self) -> float:
        return self.timed_tokens / self.timed_seconds if self.timed_seconds else 0.0


class _StopRequest:
    """SIGTERM / SIGINT: finish the current step, save, exit cleanly."""

    def __init__(self):
        self.signal_name = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # only the main thread may install handlers
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


def _progress(total: int, initial: int, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=True)


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
