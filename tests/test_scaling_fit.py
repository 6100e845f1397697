"""Approach 3 and Approach 2 fits recover known constants; runs are read from JSONL and run directories."""

import json

import numpy as np
import pytest
import yaml
from scipy.optimize import approx_fprime

from meshtron.configs import config_to_dict, load_config
from meshtron.configs.errors import UserError
from meshtron.model.counting import count_params
from meshtron.train.scaling.fit import (fit_approach2, fit_approach3, group_budgets, huber_objective, load_runs,
                                        make_runs)
from meshtron.train.scaling.laws import Law, optimal_by_compute


def synthetic_runs(law: Law, count: int, noise: float, seed: int = 0):
    """Runs spread over Hoffmann's range (70M-16B params, 5B-500B tokens), loss from `law` times log-normal noise."""
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(7e7), np.log(1.6e10), count))
    D = np.exp(rng.uniform(np.log(5e9), np.log(5e11), count))
    return make_runs(N, D, law.loss(N, D) * np.exp(rng.normal(0, noise, count)))


def isoflop_runs(law: Law, budgets, noise: float = 0.0, seed: int = 0):
    """Seven sizes per budget, log-spaced over N_opt/4 .. 4 N_opt, D = C / 6N."""
    rng = np.random.default_rng(seed)
    N = np.concatenate([optimal_by_compute(C, law).N * np.geomspace(0.25, 4, 7) for C in budgets])
    D = np.repeat(budgets, 7) / (6 * N)
    return make_runs(N, D, law.loss(N, D) * np.exp(rng.normal(0, noise, len(N))))


def test_huber_objective_gradient_matches_finite_differences():
    runs = synthetic_runs(Law.named("epoch"), 30, noise=0.01)
    args = (np.log(runs.N), np.log(runs.D), np.log(runs.loss))
    theta = np.array([6.0, 7.5, 0.6, 0.35, 0.37])
    _, grad = huber_objective(theta, *args)
    numeric = approx_fprime(theta, lambda t: huber_objective(t, *args)[0], 1e-7)
    assert grad == pytest.approx(numeric, rel=1e-3, abs=1e-7)


def test_approach3_recovers_exact_constants_from_100_runs():
    truth = Law.named("hoffmann")
    fit = fit_approach3(synthetic_runs(truth, 100, noise=0.0))
    for key in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit.law, key) == pytest.approx(getattr(truth, key), rel=1e-3), key
    assert fit.starts == 200


def test_approach3_recovers_constants_from_noisy_runs_with_bootstrap_intervals():
    truth = Law.named("epoch")
    fit = fit_approach3(synthetic_runs(truth, 100, noise=0.002, seed=1), bootstrap=20)
    law = fit.law
    assert (law.alpha, law.beta) == pytest.approx((truth.alpha, truth.beta), abs=0.02)
    assert law.E == pytest.approx(truth.E, abs=0.03)
    assert law.a == pytest.approx(truth.a, abs=0.015)  # the exponent of N_opt in C, what the fit is for
    assert law.loss(3e10, 1e12) == pytest.approx(truth.loss(3e10, 1e12), rel=0.005)  # beyond the data
    for key in ("alpha", "beta", "a"):
        low, high = fit.intervals[key]
        assert low <= getattr(law, key) <= high and high - low < 0.05, key
    json.dumps(fit.as_dict())


def test_approach3_needs_five_runs():
    with pytest.raises(UserError, match="at least 5"):
        fit_approach3(synthetic_runs(Law.named("epoch"), 4, noise=0.0))


@pytest.mark.parametrize("name", ["hoffmann", "epoch"])
def test_approach2_recovers_the_frontier_exponent(name):
    truth = Law.named(name)
    budgets = np.array([1e18, 3e18, 1e19, 3e19, 1e20, 3e20])
    fit = fit_approach2(isoflop_runs(truth, budgets, noise=0.001))
    assert fit.a == pytest.approx(truth.a, abs=0.01)
    assert fit.a + fit.b == pytest.approx(1.0, abs=1e-9)  # D_opt = C / 6 N_opt
    N_opt, _ = fit.optimal(1e19)
    assert N_opt == pytest.approx(optimal_by_compute(1e19, truth).N, rel=0.05)


def test_approach2_needs_two_budgets():
    runs = isoflop_runs(Law.named("epoch"), np.array([1e19]))
    with pytest.raises(UserError, match="need 2 or more"):
        fit_approach2(runs)


def test_budgets_are_grouped_by_near_equal_compute():
    C = np.array([1e19, 1.04e19, 0.97e19, 3e19, 3.1e19, 1e20])
    groups = sorted(sorted(g.tolist()) for g in group_budgets(C))
    assert groups == [[0, 1, 2], [3, 4], [5]]


def write_jsonl(path, rows):
    """Write dicts as JSON lines."""
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_runs_are_read_from_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "runs.jsonl", [{"N": 1e8, "D": 2e9, "loss": 3.1}, {"N": 2e8, "D": 1e9, "loss": 3.0}])
    runs = load_runs([path])
    assert runs.N.tolist() == [1e8, 2e8] and runs.D.tolist() == [2e9, 1e9] and runs.loss.tolist() == [3.1, 3.0]


@pytest.mark.parametrize("text, message", [
    ("", "no runs"),
    ("{\"N\": 1e8, \"D\": 2e9\n", "not JSON"),
    ("{\"N\": 1e8, \"D\": 2e9}\n", "needs the keys"),
    ("{\"N\": -1e8, \"D\": 2e9, \"loss\": 3}\n", "positive"),
    ("{\"N\": 1e8, \"D\": 2e9, \"loss\": \"3\"}\n", "positive"),
])
def test_bad_jsonl_raises_a_one_line_user_error(tmp_path, text, message):
    path = tmp_path / "runs.jsonl"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as error:
        load_runs([path])
    assert "\n" not in str(error.value)


def make_run_dir(path, overrides, metrics):
    """A run directory as the train loop leaves it: config.yaml and (unless None) metrics.jsonl."""
    path.mkdir(parents=True)
    config = load_config("tiny", overrides)
    (path / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config)))
    if metrics is not None:
        write_jsonl(path / "metrics.jsonl", metrics)
    return config


def test_runs_are_read_from_run_directories(tmp_path):
    config = make_run_dir(tmp_path / "a", ["train.steps=50", "model.n_layers=2"],
                          [{"step": 10, "loss": 5.0}, {"step": 25, "eval_loss": 4.5}, {"step": 50, "eval_loss": 4.2},
                           {"step": 50, "loss": 4.1}])
    make_run_dir(tmp_path / "b", ["train.steps=80"], [{"step": 40, "eval_loss": 4.4}])
    runs = load_runs([tmp_path])  # a folder of run directories
    assert runs.N[0] == count_params(config.model).total
    assert runs.D[0] == 50 * config.train.batch_size * config.model.seq_len
    assert runs.loss[0] == 4.2
    assert runs.D[1] == 40 * config.train.batch_size * config.model.seq_len  # evaluated at step 40 of 80


def test_run_directory_without_metrics_or_eval_loss_is_a_user_error(tmp_path):
    make_run_dir(tmp_path / "no-metrics", [], None)
    with pytest.raises(UserError, match="no metrics.jsonl"):
        load_runs([tmp_path / "no-metrics"])
    make_run_dir(tmp_path / "no-eval", [], [{"step": 10, "loss": 5.0}])
    with pytest.raises(UserError, match="no line with eval_loss"):
        load_runs([tmp_path / "no-eval"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.yaml"):
        load_runs([tmp_path / "empty"])
    with pytest.raises(UserError, match="no such file"):
        load_runs([tmp_path / "missing.jsonl"])
