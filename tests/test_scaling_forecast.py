"""Repeated data (Muennighoff et al. 2023), the run's loss-curve forecast, and `scaling predict` on a fit file."""

import json
import math

import numpy as np
import pytest

from meshtron.configs.errors import UserError
from meshtron.train.scaling.curve import fit_curve, overfitting_start
from meshtron.train.scaling.laws import Law, optimal_by_compute, optimal_by_tokens
from meshtron.train.scaling.predict import load_fit, predict
from meshtron.train.scaling.repeat import data_constrained, optimal_constrained

HOFFMANN = Law.named("hoffmann")


def paper_effective(U, total, r_star):
    """The paper's Eq. 5/6, written out: U + U R* (1 - e^(-R/R*)), R = total/U - 1."""
    R = total / U - 1
    return U + U * r_star * (1 - math.exp(-R / r_star))


def test_effective_data_matches_the_paper():
    # 4 epochs over 100B unique tokens: R_D = 3 repeats worth 15.387756 (1 - e^(-3/15.387756)) = 2.7257 epochs
    c = data_constrained(N=1e9, D=400e9, unique=100e9, law=HOFFMANN)
    assert c.D_eff == pytest.approx(100e9 * (1 + 15.387756 * (1 - math.exp(-3 / 15.387756))), rel=1e-12)
    assert c.D_eff == pytest.approx(372.57e9, rel=1e-4)
    assert c.epochs == 4 and c.repeated
    # Infinitely many repeats approach R*_D + 1 epochs of fresh data.
    assert data_constrained(1e9, 1e15, 1e9, HOFFMANN).D_eff == pytest.approx(1e9 * (1 + 15.387756))


def test_effective_params_decay_beyond_the_optimum_for_the_unique_data():
    U = 10e9
    U_N = optimal_by_tokens(U, HOFFMANN).N  # the size U unique tokens make compute-optimal
    N = 20 * U_N
    c = data_constrained(N=N, D=5 * U, unique=U, law=HOFFMANN)
    assert c.unique_params == pytest.approx(U_N)
    assert c.N_eff == pytest.approx(paper_effective(U_N, N, 5.309743), rel=1e-12)
    assert c.D_eff == pytest.approx(paper_effective(U, 5 * U, 15.387756), rel=1e-12)
    assert c.loss == pytest.approx(HOFFMANN.E + HOFFMANN.A / c.N_eff**HOFFMANN.alpha + HOFFMANN.B / c.D_eff**HOFFMANN.beta)
    assert c.loss > c.loss_unconstrained


def test_no_repeats_is_the_plain_law():
    c = data_constrained(N=1e9, D=20e9, unique=50e9, law=HOFFMANN)
    assert (c.N_eff, c.D_eff) == (1e9, 20e9) and c.loss == pytest.approx(HOFFMANN.loss(1e9, 20e9))
    assert not c.repeated


def test_optimal_under_scarce_data_spends_compute_on_epochs_not_parameters():
    C = 1e22
    free = optimal_by_compute(C, HOFFMANN)
    plenty = optimal_constrained(C, unique=10 * free.D, law=HOFFMANN)
    assert plenty["N"] == pytest.approx(free.N, rel=1e-3)
    scarce = optimal_constrained(C, unique=free.D / 20, law=HOFFMANN)
    # Excess parameters decay faster than repeated tokens (R*_N < R*_D): the paper's Fig. 3 advice is
    # more epochs on a smaller model than Chinchilla's.
    assert scarce["N"] < free.N and scarce["D"] > free.D
    assert scarce["loss"] > free.loss


def test_curve_fit_recovers_a_noisy_power_law():
    rng = np.random.default_rng(0)
    E, A, a = 2.1, 9.0, 0.45
    steps = np.arange(20, 1001, 20)
    losses = E + A * steps ** (-a) + rng.normal(0, 0.01, len(steps))
    half = steps <= 500
    fit = fit_curve(steps[half], losses[half], target_step=2000, bootstrap=100)
    truth = E + A * 2000 ** (-a)
    assert fit.forecast == pytest.approx(truth, abs=0.03)
    assert fit.interval[0] <= truth <= fit.interval[1]
    full = fit_curve(steps, losses, target_step=1000, bootstrap=0)
    assert (full.E, full.A, full.a) == pytest.approx((E, A, a), rel=0.15)


def test_curve_fit_needs_four_points_in_one_line():
    with pytest.raises(UserError, match="at least 4") as error:
        fit_curve([10, 20, 30], [3.0, 2.5, 2.4], target_step=100)
    assert "\n" not in str(error.value)


def test_overfitting_is_caught_where_it_started():
    trains = [(s, 4 - s / 1000) for s in range(0, 1001, 50)]
    evals = [(100, 3.5), (200, 3.2), (300, 3.1), (400, 3.15), (500, 3.2), (600, 3.3)]
    assert overfitting_start(evals, trains) == 300
    assert overfitting_start(evals[:5], trains) is None  # two rises are not yet a trend
    flat_train = [(s, 3.0) for s, _ in trains]
    assert overfitting_start(evals, flat_train) is None  # both rising: not overfitting


def write_fit(path, law, samples):
    path.write_text(json.dumps({"E": law.E, "A": law.A, "B": law.B, "alpha": law.alpha, "beta": law.beta,
                                "n_runs": 15, "bootstrap_samples": samples}))
    return path


def test_predict_gives_intervals_from_the_bootstrap_refits(tmp_path):
    law = Law.named("epoch")
    samples = [[law.E * f, law.A, law.B, law.alpha, law.beta] for f in np.linspace(0.95, 1.05, 41)]
    fit = load_fit(write_fit(tmp_path / "fit.json", law, samples))
    d = predict(fit, 1e8, 2e9)
    assert d["loss"] == pytest.approx(law.loss(1e8, 2e9))
    low, high = d["loss_interval"]
    assert low == pytest.approx(law.loss(1e8, 2e9) - 0.05 * law.E * 0.95, abs=0.01) and low < d["loss"] < high
    assert d["optimal"]["N"] == pytest.approx(optimal_by_compute(6 * 1e8 * 2e9, law).N)
    constrained = predict(fit, 1e8, 2e9, unique=2e8)
    assert constrained["loss"] > d["loss"] and constrained["data_constrained"]["epochs"] == 10


def test_predict_cli_and_its_one_line_errors(tmp_path, meshtron_cli):
    path = write_fit(tmp_path / "fit.json", Law.named("epoch"), [])
    code, out, _ = meshtron_cli("scaling", "predict", "--fit", path, "--compute", "1e20", "--json")
    d = json.loads(out)
    assert code == 0 and d["optimal"]["N"] == pytest.approx(d["N"]) and d["loss_interval"] is None
    for argv, message in [(["--fit", tmp_path / "none.json", "--compute", "1e20"], "no such file"),
                          (["--fit", path], "give --params N --tokens D"),
                          (["--fit", path, "--compute", "1e20", "--params", "1e6"], "drop --params"),
                          (["--fit", path, "--params", "-3", "--tokens", "1e9"], "positive")]:
        code, _, err = meshtron_cli("scaling", "predict", *argv)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    (tmp_path / "bad.json").write_text("{\"E\": 1}")
    code, _, err = meshtron_cli("scaling", "predict", "--fit", tmp_path / "bad.json", "--compute", "1e20")
    assert code == 2 and "needs the numbers" in err


def test_loss_cli_uses_the_data_constrained_law_with_unique_tokens(meshtron_cli):
    code, out, _ = meshtron_cli("scaling", "loss", "--params", "1e9", "--tokens", "400e9", "--unique-tokens", "100e9",
                                "--json")
    d = json.loads(out)
    assert code == 0 and d["data_constrained"]["epochs"] == 4
    assert d["loss"] == pytest.approx(data_constrained(1e9, 400e9, 100e9, HOFFMANN).loss)
    assert d["loss"] > d["loss_without_repeats"]
    code, out, _ = meshtron_cli("scaling", "optimal", "--compute", "1e21", "--unique-tokens", "1e9", "--json")
    assert code == 0 and json.loads(out)["N"] < optimal_by_compute(1e21, HOFFMANN).N


def test_a_run_forecasts_its_final_loss_at_25_50_75_percent(tmp_path, text_corpus, meshtron_cli):
    from conftest import TINY

    from meshtron.train.run.metrics import read_metrics

    fit = write_fit(tmp_path / "fit.json", Law.named("epoch"), [])
    code, out, err = meshtron_cli("train", "--run-dir", tmp_path / "run", "--fit", fit, *TINY,
                                  f"data.source={text_corpus}", "train.steps=40", "train.eval_every=4",
                                  "train.lr=3e-3")
    assert code == 0, err
    records = read_metrics(tmp_path / "run")
    forecasts = [r for r in records if r.get("event") == "forecast"]
    assert [r["fraction"] for r in forecasts] == [0.25, 0.5, 0.75] and [r["step"] for r in forecasts] == [10, 20, 30]
    assert all(r["forecast_of"] == "final evaluation loss" for r in forecasts[1:])
    assert "forecast at 50% of the steps (step 20): final evaluation loss" in out
    assert "epochs over" in out and f"law: your fit {fit}" in out and "Chinchilla's constants" not in out
    assert "forecast at 75%:" in out and "vs final evaluation loss" in out  # the end report compares
