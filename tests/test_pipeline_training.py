"""Training with pipeline stages equals one device: every schedule, composed with data, tensor and ZeRO."""

import numpy as np
import pytest

from meshtron.configs import ConfigError, load_config
from meshtron.parallel.mesh import resolve_mesh_shape

from test_parallel import BASE, run_steps

FOUR_LAYERS = ["model.n_layers=4"]
COMPOSITIONS = {
    "p2_data2_tensor2_zero1_1f1b": ["parallel.pipeline=2", "parallel.data=2", "parallel.tensor=2",
                                    "parallel.zero_stage=1", "parallel.microbatches=2"],
    "p2_data2_tensor2_zero3_gpipe": ["parallel.pipeline=2", "parallel.data=2", "parallel.tensor=2",
                                     "parallel.zero_stage=3", "parallel.schedule=gpipe", "parallel.microbatches=4"],
    "p4_data2_gpipe": ["parallel.pipeline=4", "parallel.data=2", "parallel.schedule=gpipe",
                       "parallel.microbatches=2"],
    "p2_interleaved_v2": ["parallel.pipeline=2", "parallel.data=4", "parallel.schedule=interleaved",
                          "parallel.virtual_stages=2", "parallel.microbatches=2"],
    "p4_1f1b_m8": ["parallel.pipeline=4", "parallel.data=2", "parallel.microbatches=8"],
}


@pytest.fixture(scope="module")
def single_device():
    return run_steps(FOUR_LAYERS + ["parallel.data=1"], 1)


@pytest.mark.parametrize("name", sorted(COMPOSITIONS))
def test_pipelined_training_matches_one_device(single_device, name):
    ref_losses, ref_params = single_device
    losses, params = run_steps(FOUR_LAYERS + COMPOSITIONS[name], 8)
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5, atol=2e-5)
    for key, ref in ref_params.items():
        np.testing.assert_allclose(params[key], ref, rtol=1e-4, atol=2e-5, err_msg=key)


@pytest.mark.parametrize("overrides,key,fix", [
    (["parallel.pipeline=3"], "parallel.pipeline", "divisor of 4"),
    (["parallel.pipeline=4", "parallel.microbatches=2"], "parallel.microbatches", "microbatches=8"),
    (["parallel.pipeline=2", "parallel.schedule=interleaved", "parallel.virtual_stages=3",
      "parallel.microbatches=2"], "parallel.virtual_stages", "divisor of 2"),
    (["parallel.pipeline=2", "parallel.data=4", "parallel.microbatches=3"], "parallel.microbatches", "multiple of"),
    (["parallel.pipeline=2", "parallel.microbatches=2", "train.grad_accum=2"], "train.grad_accum",
     "microbatches=4"),
    (["parallel.pipeline=2", "parallel.microbatches=2", "model.family=bert"], "parallel.pipeline",
     "parallel.pipeline=1"),
    (["parallel.pipeline=2", "parallel.microbatches=2", "model.family=t5"], "parallel.pipeline",
     "parallel.pipeline=1"),
    (["parallel.pipeline=2", "parallel.microbatches=2", "train.objective=prefix_lm"], "parallel.pipeline",
     "train.objective=causal"),
])
def test_impossible_pipelines_are_one_line_errors_before_compiling(overrides, key, fix):
    with pytest.raises(ConfigError) as err:
        resolve_mesh_shape(load_config("tiny", BASE + FOUR_LAYERS + overrides), 8)
    message = str(err.value)
    assert key in message and fix in message and "\n" not in message
