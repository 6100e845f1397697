"""The chaos soak, short: a 2-process job whose coordinator is killed with SIGKILL, restarted, and finished."""

from meshtron.tools.chaos_soak import soak


def test_killing_the_coordinator_mid_run_ends_on_the_parameters_of_an_uninterrupted_run(tmp_path):
    # seed 7: the first kill is of process 0 (the coordinator) once step 3 is logged, after checkpoint 2
    report = soak(tmp_path, cycles=1, seed=7, steps=6)
    kill = report["kills"][0]
    assert kill["victim"] == 0 and kill["logged_at_kill"] >= 3
    assert kill["survivor_exit"] == 75 and kill["survivor_one_line"], kill  # parallel/peers.py
    assert report["final_params_equal"]
