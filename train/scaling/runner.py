"""Run a planned IsoFLOP sweep: every config in turn, each a normal run directory, resumable.

    meshtron scaling sweep --compute 3e13 1e14 --out sweep/ --run     plan, then train every config
    meshtron scaling run sweep/                                       train what is left (resume)

Layout: SWEEP_DIR/manifest.json and one YAML per config (written by `sweep`), SWEEP_DIR/NAME/ the
run directory of each config, SWEEP_DIR/logs/NAME.log its console output, SWEEP_DIR/status.json
what happened to each run (done, diverged). A run marked done is never trained again; a run
interrupted half-way resumes from its last checkpoint like any `meshtron train --run-dir`.

A run counts as diverged when training stopped on NaN/Inf steps or its final evaluation loss is
not finite or above ln(vocab_size) + 1 (worse than guessing uniformly). Fits of the sweep use each
run's final evaluation loss and leave diverged runs out, printing why.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import yaml

from meshtron.configs.errors import UserError

STATUS = "status.json"
DIVERGED_MARGIN = 1.0  # nats above ln(vocab): a run that ends there learned nothing


def read_manifest(sweep_dir) -> dict:
    """The sweep's manifest.json, checked to hold runs."""
    path = Path(sweep_dir) / "manifest.json"
    if not path.is_file():
        raise UserError(f"{sweep_dir}: no manifest.json; plan a sweep first with "
                        "`meshtron scaling sweep --compute C1 C2 --out DIR`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read it as JSON ({e.__class__.__name__})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), list) or not manifest["runs"]:
        raise UserError(f"{path}: no runs in it; plan the sweep again with `meshtron scaling sweep`")
    return manifest


def read_status(sweep_dir) -> dict:
    """name -> {"state": "done" | "diverged", ...} of every run that has ended."""
    path = Path(sweep_dir) / STATUS
    if not path.is_file():
        return {}
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # a status cut short by a crash: runs found unfinished simply resume from their checkpoints
    return status if isinstance(status, dict) else {}


def _write_status(sweep_dir: Path, status: dict) -> None:
    tmp = sweep_dir / (STATUS + ".tmp")
    tmp.write_text(json.dumps(status, indent=1), encoding="utf-8")
    os.replace(tmp, sweep_dir / STATUS)  # atomic: a kill leaves the old file or the new one


def _config_path(sweep_dir: Path, row: dict) -> Path:
    path = sweep_dir / Path(row["path"]).name  # the manifest may hold paths relative to where `sweep` ran
    if not path.is_file():
        raise UserError(f"{path}: config of a planned run is missing; plan the sweep again")
    return path


def _run_name(row: dict) -> str:
    return Path(row["path"]).stem


def diverged_reason(eval_loss, vocab_size: int) -> str | None:
    """Why a finished run counts as diverged, or None if it does not."""
    if eval_loss is None or not math.isfinite(eval_loss):
        return f"final evaluation loss is {eval_loss}"
    limit = math.log(vocab_size) + DIVERGED_MARGIN
    if eval_loss > limit:
        return f"final evaluation loss {eval_loss:.3f} is above ln(vocab) + {DIVERGED_MARGIN:g} = {limit:.3f}"
    return None


def run_sweep(sweep_dir, log=print, max_runs: int | None = None, train_fn=None) -> dict:
    """Train every run of the sweep not yet ended; return the status dict. max_runs: stop after that many."""
    from meshtron.configs.loader import config_from_dict

    sweep_dir = Path(sweep_dir)
    rows = read_manifest(sweep_dir)["runs"]
    status = read_status(sweep_dir)
    if train_fn is None:
        from meshtron.train.run.loop import train as train_fn
    todo = [row for row in rows if _run_name(row) not in status]
    log(f"sweep {sweep_dir}: {len(rows)} runs, {len(rows) - len(todo)} already ended, {len(todo)} to train")
    flops_left = sum(row["C"] for row in todo)
    spent_flops, spent_seconds = 0.0, 0.0
    for count, row in enumerate(todo):
        if max_runs is not None and count >= max_runs:
            log(f"stopped after {max_runs} run(s); continue with `meshtron scaling run {sweep_dir}`")
            break
        name = _run_name(row)
        config = config_from_dict(yaml.safe_load(_config_path(sweep_dir, row).read_text(encoding="utf-8")))
        started = time.time()
        entry, interrupted = _train_one(config, sweep_dir, name, train_fn)
        seconds = time.time() - started
        index = rows.index(row) + 1
        head = (f"[{index}/{len(rows)}] {name}: N {row['N']:,} (L{row['n_layers']} d{row['d_model']}), "
                f"{row['steps']} steps")
        if interrupted:
            log(f"{head}: interrupted after {seconds:.0f} s; resume with `meshtron scaling run {sweep_dir}`")
            break
        entry |= {"seconds": round(seconds, 1), "N": row["N"], "D": row["D"], "C": row["C"], "budget": row["budget"]}
        status[name] = entry
        _write_status(sweep_dir, status)
        spent_flops, spent_seconds, flops_left = spent_flops + row["C"], spent_seconds + seconds, flops_left - row["C"]
        eta = spent_seconds / spent_flops * flops_left if spent_flops else 0.0
        outcome = (f"eval loss {entry['eval_loss']:.4f}" if entry["state"] == "done"
                   else f"DIVERGED ({entry['reason']})")
        log(f"{head}: {outcome} in {seconds:.0f} s; sweep ETA {_clock(eta)}")
    return status


def _train_one(config, sweep_dir: Path, name: str, train_fn) -> tuple[dict, bool]:
    """Train one run with its console output in SWEEP_DIR/logs/NAME.log: (status entry, interrupted)."""
    from meshtron.train.run.loop import TrainingStopped

    logs = sweep_dir / "logs"
    logs.mkdir(exist_ok=True)
    with open(logs / f"{name}.log", "a", encoding="utf-8") as out:
        def to_file(*parts, **_):
            out.write(" ".join(str(p) for p in parts) + "\n")
            out.flush()

        try:
            result = train_fn(config, sweep_dir / name, log=to_file)
        except TrainingStopped as stopped:
            return {"state": "diverged", "reason": f"training stopped: {str(stopped).split(';')[0]}",
                    "eval_loss": None}, False
    if result.interrupted:
        return {}, True
    reason = diverged_reason(result.eval_loss, config.model.vocab_size)
    if reason:
        return {"state": "diverged", "reason": reason, "eval_loss": result.eval_loss}, False
    return {"state": "done", "eval_loss": result.eval_loss}, False


def _clock(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def sweep_rows(sweep_dir) -> tuple[list, list]:
    """(rows, excluded) of a sweep for fitting: rows (N, D, final eval loss, source) of runs that
    ended well; excluded (name, reason) of runs left out (diverged, or not trained yet)."""
    from meshtron.train.scaling.fit import read_run_dir

    sweep_dir = Path(sweep_dir)
    rows, excluded = [], []
    status = read_status(sweep_dir)
    for row in read_manifest(sweep_dir)["runs"]:
        name = _run_name(row)
        entry = status.get(name)
        if entry is None:
            excluded.append((name, "not trained yet (`meshtron scaling run` continues the sweep)"))
        elif entry.get("state") != "done":
            excluded.append((name, f"diverged: {entry.get('reason', 'no reason recorded')}"))
        else:
            rows.append(read_run_dir(sweep_dir / name))
    return rows, excluded


def sweep_table(sweep_dir) -> list[dict]:
    """One dict per ended run of the sweep (manifest row + status), for plots and reports."""
    status = read_status(sweep_dir)
    return [row | status[_run_name(row)] for row in read_manifest(sweep_dir)["runs"] if _run_name(row) in status]


def is_sweep(path) -> bool:
    """True for a folder `meshtron scaling sweep` wrote (it holds manifest.json)."""
    return (Path(path) / "manifest.json").is_file()

