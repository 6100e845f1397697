"""`meshtron scaling run`: a CI-sized sweep (2 budgets x 3 sizes) trains, survives an interruption
without retraining finished runs, and fits; diverged runs are left out of fits with the reason."""

import json

import pytest

from meshtron.configs.errors import UserError
from meshtron.train.scaling.fit import load_runs
from meshtron.train.scaling.laws import Law
from meshtron.train.scaling.runner import diverged_reason, read_status, run_sweep
from meshtron.train.scaling.sweep import plan_sweep, write_sweep

# alpha = beta = 0.5 and A/B = 2.3: N_opt = 2.3 sqrt(C/6), about 30K parameters at C = 1e9, so a
# sweep of 1e9 and 2e9 FLOPs plans 12K..85K-parameter models trained for 10-60 steps.
CI_LAW = Law(E=1.5, A=23.0, B=10.0, alpha=0.5, beta=0.5, name="ci")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, text_corpus, sp_model):
    out = tmp_path_factory.mktemp("sweep")
    overrides = ["model.family=gpt2", "model.vocab_size=512", "model.seq_len=32", "train.batch_size=8",
                 "train.eval_every=0", "train.eval_batches=2", "train.log_every=5", "train.sample_tokens=0",
                 f"data.source={text_corpus}", f"data.tokenizer={sp_model}"]
    plan = plan_sweep([1e9, 2e9], CI_LAW, sizes=3, span=2.0, head_dim=16, data=8, overrides=overrides)
    write_sweep(plan, out, CI_LAW)
    return out, plan


def test_sweep_runs_resumes_after_an_interruption_and_fits(sweep, monkeypatch):
    from meshtron.train.run import loop

    out, plan = sweep
    assert len(plan) == 6 and len({p.params_total for p in plan if p.budget == 1e9}) == 3
    trained, lines = [], []

    def counting_train(config, run_dir, log=print, stop_after=None):
        trained.append(run_dir.name)
        return loop.train(config, run_dir, log=log, stop_after=stop_after)

    run_sweep(out, log=lines.append, max_runs=2, train_fn=counting_train)
    assert len(read_status(out)) == 2 and any("sweep ETA" in line for line in lines)
    # The third run is interrupted after 3 steps, as a kill or Ctrl-C would leave it (checkpoint saved).
    third = plan[2].config
    loop.train(third, out / third.name, log=lambda *a: None, stop_after=3)
    trained.clear()
    lines.clear()
    status = run_sweep(out, log=lines.append, train_fn=counting_train)
    assert trained == [p.config.name for p in plan[2:]]  # finished runs were not trained again
    assert "resumed from checkpoint at step 3" in (out / "logs" / f"{third.name}.log").read_text()
    assert len(status) == 6 and all(e["state"] == "done" for e in status.values())
    assert sum("[" in line and "eval loss" in line for line in lines) == 4  # one line per run trained
    trained.clear()
    run_sweep(out, log=lines.append, train_fn=counting_train)
    assert trained == []
    runs = load_runs([out])
    assert len(runs.N) == 6 and sorted(runs.N) == sorted(p.params_total for p in plan)


def test_fit_cli_on_the_sweep_leaves_out_diverged_runs_with_the_reason(sweep, meshtron_cli):
    out, plan = sweep
    status = run_sweep(out, log=lambda *a: None)  # nothing left to train after the test above
    name = plan[0].config.name
    status[name] = {"state": "diverged", "reason": "training stopped: 5 consecutive steps had a NaN/Inf loss"}
    (out / "status.json").write_text(json.dumps(status))
    code, stdout, err = meshtron_cli("scaling", "fit", out, "--json", "--bootstrap", "4", "--out", out / "fit.json")
    assert code == 0, err
    d = json.loads(stdout)
    assert d["n_runs"] == 5 and "final evaluation loss" in d["loss_used"] and len(d["bootstrap_samples"]) <= 4
    assert d["excluded"] == [{"run": name, "reason": "diverged: training stopped: 5 consecutive steps had a "
                                                     "NaN/Inf loss"}]
    code, stdout, _ = meshtron_cli("scaling", "fit", out, "--approach", "3")
    assert code == 0 and f"left out {name}" in stdout and "NaN/Inf" in stdout
    code, _, err = meshtron_cli("scaling", "fit", out, "--approach", "2")  # a budget left with 2 sizes
    assert code == 2 and "need 2 or more" in err
    code, stdout, _ = meshtron_cli("scaling", "predict", "--fit", out / "fit.json", "--compute", "4e9", "--json")
    assert code == 0 and json.loads(stdout)["optimal"]["N"] > 0


def test_divergence_rule_and_run_errors(tmp_path, meshtron_cli):
    assert diverged_reason(float("nan"), 512) == "final evaluation loss is nan"
    assert "above ln(vocab)" in diverged_reason(8.0, 512)
    assert diverged_reason(4.0, 512) is None
    with pytest.raises(UserError, match="no manifest.json"):
        run_sweep(tmp_path)
    code, _, err = meshtron_cli("scaling", "run", tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1
