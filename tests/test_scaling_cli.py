"""`meshtron scaling`: each subcommand's JSON against independent numbers, files it writes, and its errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meshtron.configs import load_config
from meshtron.model.counting import count_params
from meshtron.tools.cli import main
from meshtron.train.scaling.laws import Law, optimal_by_compute


def scaling_json(capsys, *argv) -> dict:
    """Run `meshtron scaling ... --json` in-process; the one JSON object it prints."""
    capsys.readouterr()
    assert main(["scaling", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1  # exactly one JSON object
    return json.loads(out)


def scaling_error(capsys, *argv) -> str:
    """Run `meshtron scaling ...` expecting exit code 2; the one-line error it prints."""
    capsys.readouterr()
    assert main(["scaling", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("meshtron: error: ") and "\n" not in err
    return err


def test_optimal_for_the_gopher_budget_is_40b_params(capsys):
    d = scaling_json(capsys, "optimal", "--compute", "5.76e23")
    assert d["N"] == pytest.approx(40e9, rel=0.025)
    assert d["C"] == pytest.approx(5.76e23)
    assert d["tokens_per_param"] == pytest.approx(d["D"] / d["N"])
    assert d["law"]["name"] == "hoffmann"


def test_optimal_by_params_and_tokens_accept_suffixes(capsys):
    by_params = scaling_json(capsys, "optimal", "--params", "70B", "--law", "epoch")
    assert by_params["N"] == 70e9 and 15 < by_params["tokens_per_param"] < 25
    by_tokens = scaling_json(capsys, "optimal", "--tokens", str(by_params["D"]), "--law", "epoch")
    assert by_tokens["N"] == pytest.approx(70e9, rel=1e-9)


def test_loss_compares_with_the_optimum_at_the_same_compute(capsys):
    d = scaling_json(capsys, "loss", "--params", "280e9", "--tokens", "300e9", "--law", "hoffmann-rounded")
    assert d["loss"] == pytest.approx(1.69 + 406.4 / 280e9**0.34 + 410.7 / 300e9**0.28)
    assert d["optimal"]["loss"] < d["loss"]
    assert "more parameters than compute-optimal" in d["allocation"]  # Gopher was oversized


def test_compute_is_what_the_cluster_buys(capsys):
    d = scaling_json(capsys, "compute", "--devices", "256", "--peak", "989e12", "--mfu", "0.4", "--hours", "24")
    assert d["C"] == pytest.approx(256 * 989e12 * 0.4 * 86400)
    assert d["N"] == pytest.approx(optimal_by_compute(d["C"], Law.named("hoffmann")).N)
    named = scaling_json(capsys, "compute", "--devices", "256", "--peak", "H100", "--mfu", "0.4", "--days", "1")
    assert named["C"] == pytest.approx(d["C"])


@pytest.mark.parametrize("preset, params", [("gpt2-124m", 124_439_808), ("llama-7b", 6_738_415_616)])
def test_flops_reports_published_parameter_counts(capsys, preset, params):
    d = scaling_json(capsys, "flops", "--config", preset)
    assert d["params_total"] == params
    config = load_config(preset)
    tokens = config.train.batch_size * config.model.seq_len
    assert set(d["flops_per_token"]) == {"6N", "palm", "chinchilla", "megatron"}
    assert d["flops_per_token"]["6N"] == 6 * params
    for key, value in d["flops_per_token"].items():
        assert d["flops_per_step"][key] == pytest.approx(value * tokens)


def test_flops_applies_overrides(capsys):
    d = scaling_json(capsys, "flops", "--config", "tiny", "model.n_layers=6")
    assert d["params_total"] == count_params(load_config("tiny", ["model.n_layers=6"]).model).total


def test_user_constants_change_the_law(capsys):
    d = scaling_json(capsys, "loss", "--params", "1e9", "--tokens", "2e10", "--E", "0", "--A", "1", "--B", "1",
                     "--alpha", "1", "--beta", "1")
    assert d["loss"] == pytest.approx(1 / 1e9 + 1 / 2e10)


def test_fit_prints_constants_and_writes_a_plot(capsys, tmp_path):
    law = Law.named("epoch")
    rows = []
    for C in (1e18, 1e19, 1e20):
        for N in optimal_by_compute(C, law).N * np.geomspace(0.25, 4, 5):
            rows.append({"N": N, "D": C / (6 * N), "loss": float(law.loss(N, C / (6 * N)))})
    path = tmp_path / "runs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    d = scaling_json(capsys, "fit", str(path), "--approach", "both", "--plot", str(tmp_path / "fit.png"))
    assert d["alpha"] == pytest.approx(law.alpha, rel=0.01) and d["beta"] == pytest.approx(law.beta, rel=0.01)
    assert d["approach2"]["a"] == pytest.approx(law.a, abs=0.02)
    assert Path(d["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_writes_loadable_configs_at_the_planned_budgets(capsys, tmp_path):
    out = tmp_path / "sweep"
    d = scaling_json(capsys, "sweep", "--compute", "1e15", "1e16", "--out", str(out), "--data", "4", "--tensor", "2",
                     "--plot", str(tmp_path / "sweep.png"))
    assert Path(d["manifest"]) == out / "manifest.json"
    assert len(d["runs"]) >= 10
    for row in d["runs"]:
        config = load_config(row["path"])  # what `meshtron train --config PATH` does
        m, t = config.model, config.train
        assert count_params(m).total == row["N"]
        assert row["D"] == t.steps * t.batch_size * m.seq_len
        assert row["C"] == pytest.approx(row["budget"], rel=0.01)
        assert m.dim_per_head == 64 and m.d_model % 128 == 0 and m.n_heads % 2 == 0 and m.ff_dim % 2 == 0
        assert 64 <= m.d_model / m.n_layers <= 128
        assert t.batch_size % 4 == 0 and (config.parallel.data, config.parallel.tensor) == (4, 2)
    for budget in (1e15, 1e16):
        sizes = [r["N"] for r in d["runs"] if r["budget"] == budget]
        assert min(sizes) < optimal_by_compute(budget, Law.named("hoffmann")).N < max(sizes)
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, message", [
    (["optimal", "--compute", "0"], "positive"),
    (["optimal", "--compute=-5e20"], "positive"),
    (["optimal", "--compute", "lots"], "not a number"),
    (["optimal", "--params", "1e20"], "outside the range"),
    (["optimal", "--compute", "1e20", "--law", "kaplan"], "unknown scaling law"),
    (["loss", "--params", "1e9", "--tokens", "1e10", "--E", "-1"], "must be >= 0"),
    (["compute", "--devices", "8", "--peak", "warp-drive", "--mfu", "0.4", "--days", "1"], "known device"),
    (["compute", "--devices", "8", "--peak", "1e15", "--mfu", "40", "--days", "1"], "fraction"),
    (["fit", "missing.jsonl"], "no such file"),
    (["sweep", "--compute", "1e15", "--out", "x", "--sizes", "2"], "at least 3"),
])
def test_bad_input_is_a_one_line_error_with_exit_code_2(capsys, argv, message):
    assert message in scaling_error(capsys, *argv)


def test_empty_runs_file_is_a_user_error(capsys, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    assert "no runs" in scaling_error(capsys, "fit", str(tmp_path / "empty.jsonl"))


def test_installed_console_script_prints_json():
    meshtron = Path(sys.executable).parent / "meshtron"
    result = subprocess.run([str(meshtron), "scaling", "optimal", "--compute", "5.76e23", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["N"] == pytest.approx(40.36e9, rel=0.01)
    table = subprocess.run([str(meshtron), "scaling", "optimal", "--compute", "5.76e23"], capture_output=True,
                           text=True, timeout=120)
    assert "40.4B" in table.stdout and "tokens per parameter" in table.stdout
