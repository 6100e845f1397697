"""Every registered model family keeps the contract of model/README.md (the registry's part; counts
against the module are in test_model.py, single-device equality under every layout in test_parallel.py
and test_comm.py, Hugging Face parity in test_hf_export.py)."""

import jax
import pytest
from flax import nnx

from meshtron.configs import load_config
from meshtron.configs.schema import CHOICES, FAMILY_DEFAULTS
from meshtron.model.families import FAMILIES, LOGICAL_AXES, build
from meshtron.parallel.zero import logical_names
from meshtron.train.hf.architectures import ARCHITECTURES
from meshtron.train.hf.seq_tables import SEQ_MODEL_TYPES

TINY_MODEL = ["model.n_layers=2", "model.d_model=32", "model.n_heads=4", "model.n_kv_heads=2", "model.d_ff=64",
              "model.vocab_size=400", "model.seq_len=16"]


def test_the_registry_and_the_config_schema_name_the_same_families():
    assert set(FAMILIES) == set(FAMILY_DEFAULTS) == set(CHOICES["model.family"])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_parameters_name_only_known_logical_axes(name):
    cfg = load_config("tiny", TINY_MODEL + [f"model.family={name}"]).model
    params = nnx.state(build(cfg), nnx.Param)
    named = jax.tree.leaves(jax.tree.map(lambda v: [logical_names(v)], params,
                                         is_leaf=lambda x: isinstance(x, nnx.Variable)),
                            is_leaf=lambda x: isinstance(x, tuple))
    assert named and all(set(names) <= set(LOGICAL_AXES) for names in named)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_hugging_face_twin_has_a_table(name):
    model_type = FAMILIES[name].hf_model_type
    assert model_type is None or model_type in ARCHITECTURES or model_type in SEQ_MODEL_TYPES
