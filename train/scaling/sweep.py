"""Plan an IsoFLOP sweep: per FLOP budget, model configs around the compute-optimal size.

Each budget C gets `sizes` models log-spaced from N_opt/span to N_opt*span. A size is a real
config: head_dim 64, d_model a multiple of 64 x tensor degree, depth from an aspect ratio
d_model / n_layers in [64, 128]; its N is counted exactly, and train.steps is set so that
D = C / 6N (rounded to whole steps; the manifest reports the D and C actually planned).
Everything else comes from the base preset; n_kv_heads, head_dim and d_ff go back to the
family defaults (multi-head attention, 4 d_model or LLaMA's 8/3 d_model) so they scale with width.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from meshtron.configs import Config, ModelConfig, config_to_dict, load_config
from meshtron.configs.errors import UserError
from meshtron.model.counting import count_params
from meshtron.train.scaling.laws import Allocation, Law, check_range, optimal_by_compute

HEAD_DIM = 64
ASPECT_RANGE = (64, 128)  # d_model / n_layers; Kaplan et al. find loss flat across this band
ASPECT_TARGET = 90.5  # geometric middle of the band, preferred when sizes tie
MAX_D_MODEL = 32768


@dataclass(frozen=True)
class PlannedRun:
    """One config of the sweep: its budget, exact N, planned tokens and the config itself."""

    budget: float
    config: Config
    params_total: int
    params_non_embedding: int
    tokens: int

    def as_dict(self, law: Law, path: str = "") -> dict:
        """Manifest row: path, budget, N, D, C = 6ND as planned (rounded steps), shape, steps, predicted loss."""
        m, t = self.config.model, self.config.train
        planned = Allocation(N=self.params_total, D=self.tokens, law=law).as_dict()
        return {"path": path, "budget": self.budget, "N": self.params_total,
                "N_non_embedding": self.params_non_embedding, "D": self.tokens, "C": planned["C"],
                "tokens_per_param": planned["tokens_per_param"], "n_layers": m.n_layers,
                "d_model": m.d_model, "n_heads": m.n_heads, "steps": t.steps, "batch_size": t.batch_size,
                "seq_len": m.seq_len, "predicted_loss": planned["loss"]}


def model_shape(target_params: float, base: ModelConfig, tensor: int = 1, head_dim: int = HEAD_DIM) -> ModelConfig:
    """The (d_model, n_layers, n_heads) config of `base`'s family whose exact N is closest to the target."""
    best, best_score = None, math.inf
    step = head_dim * tensor  # heads = d_model / head_dim must split evenly over the tensor axis
    for d_model in range(step, MAX_D_MODEL + 1, step):
        shape = dataclasses.replace(base, d_model=d_model, n_heads=d_model // head_dim, n_layers=1,
                                    n_kv_heads=None, head_dim=None, d_ff=None)
        counts = count_params(shape)
        fixed = counts.total - counts.per_layer  # embeddings, output layer, final norm
        if fixed > 2 * target_params:
            break  # wider only grows the embedding further from the target
        low = max(1, math.ceil(d_model / ASPECT_RANGE[1]))
        high = max(1, d_model // ASPECT_RANGE[0])
        ideal = (target_params - fixed) / counts.per_layer
        for n_layers in {min(max(math.floor(ideal), low), high), min(max(math.ceil(ideal), low), high)}:
            total = fixed + n_layers * counts.per_layer
            # Closest N first; among near ties, the aspect ratio nearest the middle of the band.
            score = abs(math.log(total / target_params)) + 0.1 * abs(math.log(d_model / n_layers / ASPECT_TARGET))
            if score < best_score:
                best, best_score = dataclasses.replace(shape, n_layers=n_layers), score
    return best


def plan_sweep(budgets, law: Law, base: str = "tiny", sizes: int = 7, span: float = 4.0, data: int = 1,
               tensor: int = 1, overrides=(), head_dim: int = HEAD_DIM) -> list[PlannedRun]:
    """Configs for each FLOP budget: `sizes` models from N_opt/span to N_opt*span, D = C / 6N each."""
    if not budgets:
        raise UserError("sweep: give at least one budget, for example --compute 1e16 3e16 1e17")
    if sizes < 3:
        raise UserError(f"sweep --sizes {sizes}: an IsoFLOP parabola needs at least 3 sizes per budget")
    if not span > 1:
        raise UserError(f"sweep --span {span}: must be > 1 (sizes reach from N_opt/span to N_opt*span)")
    for flag, degree in (("--data", data), ("--tensor", tensor), ("--head-dim", head_dim)):
        if degree < 1:
            raise UserError(f"sweep {flag} {degree}: must be >= 1")
    base_config = load_config(base, overrides)
    batch = data * -(-base_config.train.batch_size // data)  # round the batch up to a multiple of the data degree
    tokens_per_step = batch * base_config.model.seq_len
    plan = []
    for budget in budgets:
        budget = check_range(budget, "C", "--compute")
        target = optimal_by_compute(budget, law).N
        shapes = {}
        for target_params in target * np.geomspace(1 / span, span, sizes):
            shape = model_shape(target_params, base_config.model, tensor, head_dim)
            if shape is None:
                raise UserError(f"sweep --compute {budget:g}: its optimal size ({target:,.0f} parameters) is below "
                                "the smallest model of this vocabulary and width; raise the budget")
            shapes.setdefault((shape.d_model, shape.n_layers), shape)  # small budgets can map two targets to one shape
        if len(shapes) < 3:
            raise UserError(f"sweep --compute {budget:g}: only {len(shapes)} distinct model sizes fit this budget; "
                            "raise the budget or the span")
        for shape in shapes.values():
            plan.append(_planned(budget, shape, base, base_config, batch, tokens_per_step, data, tensor, overrides))
    return plan


def _planned(budget, shape, base, base_config, batch, tokens_per_step, data, tensor, overrides) -> PlannedRun:
    counts = count_params(shape)
    steps_exact = budget / (6 * counts.total) / tokens_per_step
    if steps_exact < 0.5:
        raise UserError(f"sweep --compute {budget:g}: a {counts.total:,}-parameter model gets less than one step of "
                        f"{tokens_per_step:,} tokens; raise the budget or lower train.batch_size")
    steps = max(1, round(steps_exact))
    base_train = base_config.train
    warmup = round(base_train.warmup_steps * steps / base_train.steps)  # keep the preset's warm-up fraction
    settings = {"model.n_layers": shape.n_layers, "model.d_model": shape.d_model, "model.n_heads": shape.n_heads,
                "model.n_kv_heads": None, "model.head_dim": None, "model.d_ff": None, "train.steps": steps,
                "train.batch_size": batch, "train.warmup_steps": warmup, "parallel.data": data,
                "parallel.tensor": tensor}
    # Through the loader, so every planned config passes the same validation `meshtron train` applies.
    config = load_config(base, [*overrides, *(f"{k}={_yaml_scalar(v)}" for k, v in settings.items())])
    config = dataclasses.replace(config, name=f"{config.name}-c{budget:.2e}-n{counts.total}")
    return PlannedRun(budget=budget, config=config, params_total=counts.total,
                      params_non_embedding=counts.non_embedding, tokens=steps * tokens_per_step)


def _yaml_scalar(value) -> str:
    return "null" if value is None else str(value)


def write_sweep(plan: list[PlannedRun], out_dir, law: Law) -> Path:
    """Write one YAML per planned config and manifest.json into `out_dir`; return the manifest path."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create it ({e.__class__.__name__})") from None
    rows = []
    for run in plan:
        path = out / f"{run.config.name}.yaml"
        path.write_text(yaml.safe_dump(config_to_dict(run.config), sort_keys=False), encoding="utf-8")
        rows.append(run.as_dict(law, str(path)))
    budgets = sorted({run.budget for run in plan})
    manifest = {"law": law.constants(), "runs": rows,
                "budgets": [optimal_by_compute(c, law).as_dict() | {"budget": c} for c in budgets]}
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return path
