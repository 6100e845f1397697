"""What a training run prints about its budget: at the start (plan against Chinchilla) and at the end (MFU).

Two FLOP counts appear, on purpose: the Chinchilla budget C uses 6N per token (Kaplan/Hoffmann,
what the laws were fit with); MFU uses the PaLM count (matmul parameters plus attention), so
MFU is comparable with PaLM, nanoGPT and Megatron reports.
"""

from __future__ import annotations

from meshtron.train.scaling.laws import Law, get_law, optimal_by_compute

# How close to the frontier counts as "compute-optimal" in the sentence (10% in N).
OPTIMAL_TOLERANCE = 1.1


def human(x: float, unit: str = "") -> str:
    """Counts as 1.5T, 6.1M (K, M, B, T); with a unit, SI prefixes: human(989e12, "FLOP/s") = '989 TFLOP/s'."""
    if unit:
        scales, space = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")), " "
    else:
        scales, space = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")), ""
    for scale, prefix in scales:
        if abs(x) >= scale:
            return f"{x / scale:.3g}{space}{prefix}{unit}"
    return f"{x:.3g}{space}{unit}"


def duration(seconds: float) -> str:
    """193 -> '193 s', 11520 -> '3.2 h', 7.1e5 -> '8.2 days'."""
    if seconds < 600:
        return f"{seconds:.3g} s"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.2g} h"
    return f"{seconds / 86400:.3g} days"


def allocation_sentence(N: float, N_opt: float) -> str:
    """How far N is from the compute-optimal N_opt, in words."""
    ratio = N / N_opt
    if 1 / OPTIMAL_TOLERANCE <= ratio <= OPTIMAL_TOLERANCE:
        return "within 10% of the compute-optimal size for this budget"
    if ratio > 1:
        return f"{ratio:.1f}x more parameters than compute-optimal for this budget (train longer on a smaller model)"
    return f"{1 / ratio:.1f}x fewer parameters than compute-optimal for this budget (a larger model on fewer tokens)"


OTHER_DATA = ("Chinchilla's constants, fitted on MassiveText with another tokenizer: not this data, so its losses are "
              "not this run's; read its allocation as a trend")


def start_report(config, n_devices: int, peak_flops_per_device: float, law: Law | str | None = None,
                 unique_tokens: int | None = None) -> dict:
    """The run's plan against the scaling law: N, D, C, epochs over the unique data, the optimal allocation and
    predicted losses. The law is the user's fit when train.scaling_fit names one, else a published law."""
    # Imported here: meshtron.model loads Flax (~1.5 s), which `meshtron scaling optimal` (via human()) should not pay.
    from meshtron.model.counting import count_params, flops_per_token, model_flops_per_token
    from meshtron.model.seq_counting import sequence_lengths
    from meshtron.train.scaling.repeat import data_constrained

    fit_path = getattr(config.train, "scaling_fit", "")
    fit = None
    if fit_path and law is None:
        from meshtron.train.scaling.predict import load_fit

        fit = load_fit(fit_path)
        law = fit.law
    law = law if isinstance(law, Law) else get_law(law)
    counts = count_params(config.model)
    N = counts.total
    D = config.train.steps * config.train.batch_size * config.model.seq_len
    per_token = flops_per_token(config.model)
    C = per_token["6N"] * D
    optimal = optimal_by_compute(C, law)
    model_flops = model_flops_per_token(config.model) * D
    predicted = float(law.loss(N, D))
    repeated = bool(unique_tokens) and D > unique_tokens
    if repeated:
        predicted = data_constrained(N, D, unique_tokens, law).loss
    return {
        "params_total": N, "params_non_embedding": counts.non_embedding, "tokens": D, "flops": C,
        "tokens_per_param": D / N, "optimal_params": optimal.N, "optimal_tokens": optimal.D,
        "predicted_loss": predicted, "optimal_loss": optimal.loss,
        "allocation": allocation_sentence(N, optimal.N), "law": law.constants(),
        "law_source": fit.describe() if fit else OTHER_DATA, "law_is_yours": fit is not None,
        "unique_tokens": unique_tokens, "epochs": D / unique_tokens if unique_tokens else None,
        "data_constrained": repeated,
        "flops_per_token": per_token, "model_flops_per_token": model_flops_per_token(config.model),
        "n_devices": n_devices, "peak_flops_per_device": peak_flops_per_device,
        # Time at 100% MFU: a floor; at a typical 40% MFU expect 2.5x this.
        "ideal_seconds": model_flops / (n_devices * peak_flops_per_device),
        "arch": config.model.arch, "sequence_tokens": dict(zip(("encoder", "decoder"), sequence_lengths(config.model))),
    }


def format_start_report(d: dict) -> str:
    """A compact block of the start report for the console: what is meaningful for this run first."""
    law = d["law"]["name"]
    conventions = " | ".join(f"{k} {human(v)}" for k, v in d["flops_per_token"].items())
    data = (f"{d['epochs']:.2f} epochs over {human(d['unique_tokens'])} unique training tokens"
            if d.get("epochs") is not None else "unique tokens unknown")
    lines = [f"scaling: {human(d['params_total'])} params ({human(d['params_non_embedding'])} non-embedding), "
             f"{human(d['tokens'])} tokens planned ({data}), C = 6ND = {d['flops']:.3g} FLOPs"]
    if d.get("data_constrained"):
        lines.append(f"  repeated data: {d['epochs']:.1f} passes; predictions use the data-constrained law "
                     "(Muennighoff et al. 2023: repeated tokens are worth less)")
    if d.get("law_is_yours"):
        lines.append(f"  law: {d['law_source']}; the run's own loss curve is also forecast at 25/50/75% of the steps")
    else:
        lines.append("  forecast: this run's own loss curve, fitted at 25/50/75% of the steps, says where it will "
                     "land; for a law of your own data: `meshtron scaling sweep ... --run`, `scaling fit --out "
                     "fit.json`, then train.scaling_fit=fit.json")
        lines.append(f"  law {law}: {d['law_source']}")
    lines += [
        f"  tokens per parameter: {d['tokens_per_param']:.1f} (Chinchilla's frontier is about 20)",
        f"  compute-optimal for this C ({law}): {human(d['optimal_params'])} params "
        f"on {human(d['optimal_tokens'])} tokens",
        f"  this run: {d['allocation']}",
        f"  predicted loss ({law}): {d['predicted_loss']:.3f} this run, {d['optimal_loss']:.3f} at the optimum"
        + ("" if d.get("law_is_yours") else " (other data: compare trends, not values)"),
        f"  FLOPs per token: {conventions}",
        f"  peak: {d['n_devices']} x {human(d['peak_flops_per_device'], 'FLOP/s')}; "
        f"at 100% MFU this run takes {duration(d['ideal_seconds'])}",
    ] + _arch_lines(d)
    return "\n".join(lines)


def _arch_lines(d: dict) -> list[str]:
    """What the law means for an encoder or encoder-decoder (the Chinchilla fits are of decoder-only models)."""
    arch = d.get("arch", "decoder")
    if arch == "decoder":
        return []
    tokens = d["sequence_tokens"]
    per_sequence = (f"{tokens['encoder']} encoder + {tokens['decoder']} decoder tokens per sequence"
                    if tokens["decoder"] else f"{tokens['encoder']} tokens per sequence")
    return [f"  model.arch={arch}: {per_sequence}; the law above was fitted on decoder-only models, so its "
            "optimum and predicted losses are not established for this architecture (FLOPs and MFU are)"]


def end_report(start: dict, steps_done: int, seconds: float, tokens: int, final_loss: float | None,
               eval_loss: float | None, n_devices: int, peak_flops_per_device: float) -> dict:
    """What the run spent and achieved: FLOPs, FLOP/s, MFU (PaLM count), losses beside the law's prediction."""
    law = Law(**start["law"])
    flops_spent = start["model_flops_per_token"] * tokens
    achieved = flops_spent / seconds if seconds > 0 else 0.0
    predicted = float(law.loss(start["params_total"], tokens)) if tokens > 0 else None
    return {
        "steps_done": steps_done, "seconds": seconds, "tokens": tokens, "flops_spent": flops_spent,
        "flops_spent_6n": start["flops_per_token"]["6N"] * tokens,
        "tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
        "achieved_flops_per_second": achieved,
        "mfu": achieved / (n_devices * peak_flops_per_device),
        "final_loss": final_loss, "eval_loss": eval_loss, "predicted_loss": predicted,
        "eval_minus_predicted": eval_loss - predicted if eval_loss is not None and predicted is not None else None,
        "law_is_yours": bool(start.get("law_is_yours")),
    }


def format_end_report(d: dict) -> str:
    """A compact block of the end report for the console."""
    losses = [f"{name} {d[key]:.4f}" for name, key in (("train", "final_loss"), ("eval", "eval_loss"))
              if d[key] is not None]
    if d["predicted_loss"] is not None:
        losses.append(f"your fit predicts {d['predicted_loss']:.4f}" if d.get("law_is_yours") else
                      f"law predicts {d['predicted_loss']:.4f} (fitted on other data)")
    return "\n".join([
        f"scaling: {d['steps_done']} steps, {human(d['tokens'])} tokens in {duration(d['seconds'])} "
        f"({human(d['tokens_per_second'])} tokens/s)",
        f"  FLOPs spent: {d['flops_spent']:.3g} (PaLM count), {d['flops_spent_6n']:.3g} (6N)",
        f"  achieved {human(d['achieved_flops_per_second'], 'FLOP/s')}, MFU {100 * d['mfu']:.1f}%",
        "  loss: " + (", ".join(losses) if losses else "not measured"),
    ])
