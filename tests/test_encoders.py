"""Encoders (BERT) and encoder-decoders (T5, Transformer): attention masks, T5's relative buckets, the
objectives' statistics and lengths, KV-cached decoding, published counts and Hugging Face parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from meshtron.configs import load_config
from meshtron.configs.objectives import span_corruption_lengths
from meshtron.model.families import build
from meshtron.model.counting import count_params
from meshtron.model.relative_position import relative_bucket
from meshtron.model.seq_counting import with_pooler
from meshtron.train.data import objectives

from conftest import TINY

BERT = ["model.family=bert", "model.max_positions=40"]
T5 = ["model.family=t5", "model.n_decoder_layers=3", "model.relative_buckets=8", "model.relative_max_distance=20"]
T5V11 = T5 + ["model.mlp=geglu", "model.tie_embeddings=false"]
VASWANI = ["model.family=transformer"]


def config(*overrides):
    return load_config("tiny", TINY + ["model.vocab_size=500"] + list(overrides)).model


def perturbed(cfg, seed=1):
    """A model whose biases and norms are random too, so a wrong mapping cannot hide behind zeros and ones."""
    model = build(cfg, seed=seed)
    leaves, tree = jax.tree.flatten(nnx.state(model))
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    nnx.update(model, jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]))
    return model


@pytest.fixture(scope="module")
def bert():
    cfg = config(*BERT)
    return cfg, perturbed(cfg)


@pytest.fixture(scope="module")
def t5():
    cfg = config(*T5)
    return cfg, perturbed(cfg)


def tokens(shape, seed=0):
    return np.random.default_rng(seed).integers(3, 400, shape)


# -- attention ---------------------------------------------------------------------------------------------------
def test_encoder_attention_is_bidirectional_and_ignores_padding(bert):
    cfg, model = bert
    forward = nnx.jit(lambda m, t, mask: m(t, mask))
    x = tokens((2, 24))
    changed = x.copy()
    changed[:, 20] = (changed[:, 20] + 7) % 400
    full = jnp.ones((2, 24), bool)
    a, b = np.asarray(forward(model, x, full)), np.asarray(forward(model, changed, full))
    assert np.abs(a[:, :20] - b[:, :20]).max() > 1e-4  # a later token changes earlier outputs
    real = full.at[:, 18:].set(False)  # positions 18.. are padding
    a, b = np.asarray(forward(model, x, real)), np.asarray(forward(model, changed, real))
    np.testing.assert_allclose(a[:, :18], b[:, :18], atol=1e-5)


def test_decoder_stays_causal_with_cross_attention(t5):
    cfg, model = t5
    forward = nnx.jit(lambda m, s, d: m(s, d))
    source, target = tokens((2, 16)), tokens((2, 12), seed=1)
    changed = target.copy()
    changed[:, 8] = (changed[:, 8] + 5) % 400
    a, b = np.asarray(forward(model, source, target)), np.asarray(forward(model, source, changed))
    np.testing.assert_allclose(a[:, :8], b[:, :8], atol=1e-6)
    assert np.abs(a[:, 8:] - b[:, 8:]).max() > 1e-5
    other_source = source.copy()
    other_source[:, 15] = (other_source[:, 15] + 3) % 400  # the last input token reaches the first output
    assert np.abs(np.asarray(forward(model, other_source, target))[:, 0] - a[:, 0]).max() > 1e-5


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_buckets_equal_transformers(bidirectional):
    import torch
    from transformers.models.t5.modeling_t5 import T5Attention

    distances = np.arange(-300, 301)
    for buckets, max_distance in ((32, 128), (8, 20)):
        theirs = T5Attention._relative_position_bucket(torch.tensor(distances), bidirectional, buckets, max_distance)
        ours = relative_bucket(jnp.asarray(distances), bidirectional, buckets, max_distance)
        np.testing.assert_array_equal(np.asarray(ours), theirs.numpy())


def test_kv_cached_decoding_equals_the_full_forward(t5):
    cfg, model = t5
    source, target = jnp.asarray(tokens((2, 16))), jnp.asarray(tokens((2, 10), seed=2))
    full = np.asarray(nnx.jit(lambda m, s, d: m(s, d))(model, source, target))

    @nnx.jit
    def step(m, token, cross, cache, i):
        x, cache = m.decode(token, cross=cross, cache=cache, cache_index=i)
        return m.logits(x), cache

    cross = nnx.jit(lambda m, s: m.cross_kv(m.encode(s)))(model, source)
    cache = model.init_cache(2, 10)
    steps = []
    for i in range(10):
        logits, cache = step(model, target[:, i:i + 1], cross, cache, i)
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=2e-5)


# -- objectives --------------------------------------------------------------------------------------------------
SPECIALS = objectives.Specials(eos_id=2, mask_id=499, vocab_size=500, ordinary=390)


def test_mlm_masks_15_percent_with_80_10_10():
    windows = tokens((1000, 100))
    batch = objectives.mlm(windows, seed=3, step=7, specials=SPECIALS)
    chosen = batch["weights"] > 0
    assert chosen.mean() == pytest.approx(0.15, abs=0.005)
    masked = batch["inputs"][chosen] == SPECIALS.mask_id
    kept = batch["inputs"][chosen] == windows[chosen]
    assert masked.mean() == pytest.approx(0.8, abs=0.01)
    assert (~masked & ~kept).mean() == pytest.approx(0.1 * 389 / 390, abs=0.01)  # a random id may be the same
    np.testing.assert_array_equal(batch["inputs"][~chosen], windows[~chosen])  # the loss sees only chosen ones
    np.testing.assert_array_equal(batch["targets"], windows)
    again = objectives.mlm(windows, seed=3, step=7, specials=SPECIALS)
    np.testing.assert_array_equal(again["inputs"], batch["inputs"])  # seed and step decide everything
    assert (objectives.mlm(windows, seed=3, step=8, specials=SPECIALS)["inputs"] != batch["inputs"]).any()


@pytest.mark.parametrize("inputs_length,expected", [(512, (568, 114)), (128, (141, 29)), (32, (34, 8))])
def test_span_corruption_lengths_follow_t5(inputs_length, expected):
    """T5's random_spans_helper gives 568 raw tokens and 114 targets for 512 inputs (the T5 paper's setup)."""
    assert span_corruption_lengths(inputs_length) == expected
    raw, target = expected
    batch = objectives.span_corruption(tokens((4, raw)), seed=0, step=1, specials=SPECIALS)
    assert batch["inputs"].shape == (4, inputs_length) and batch["targets"].shape == (4, target)
    assert (batch["inputs"][:, -1] == 2).all() and (batch["targets"][:, -1] == 2).all()
    assert (batch["decoder_inputs"][:, 0] == 0).all()
    np.testing.assert_array_equal(batch["decoder_inputs"][:, 1:], batch["targets"][:, :-1])


def test_span_corruption_round_trips_the_text():
    raw = tokens((3, 141))
    batch = objectives.span_corruption(raw, seed=5, step=2, specials=SPECIALS)
    for row, inputs, targets in zip(raw, batch["inputs"], batch["targets"]):
        spans, sentinel, rebuilt = {}, None, []
        for t in targets[:-1]:
            sentinel = t if t >= 400 else sentinel
            if t < 400:
                spans.setdefault(sentinel, []).append(t)
        for t in inputs[:-1]:
            rebuilt.extend(spans[t] if t >= 400 else [t])
        assert sorted(spans) == list(range(500 - len(spans), 500))  # sentinels counted down from the top
        np.testing.assert_array_equal(rebuilt, row)


def test_prefix_lm_puts_the_loss_on_the_suffix():
    batch = objectives.prefix_lm(tokens((64, 33)), seed=1, step=1, specials=SPECIALS)
    for prefix, weights in zip(batch["prefix"], batch["weights"]):
        assert 1 <= prefix < 32
        np.testing.assert_array_equal(weights, np.arange(32) + 1 >= prefix)


# -- counts and Hugging Face ---------------------------------------------------------------------------------------
def _hf_count(model_cls, hf_config, untie=False):
    import torch

    with torch.device("meta"):
        model = model_cls(hf_config)
        extra = model.lm_head.weight.numel() if untie else 0  # transformers 5 builds T5 tied from a config
        return sum(p.numel() for p in model.parameters()) + extra


def test_preset_counts_equal_transformers():
    import transformers as T

    bert = lambda c: T.BertConfig(num_hidden_layers=c.n_layers, hidden_size=c.d_model,  # noqa: E731
                                  num_attention_heads=c.n_heads, intermediate_size=c.d_ff)
    t5 = lambda c: T.T5Config(num_layers=c.n_layers, d_model=c.d_model, num_heads=c.n_heads, d_kv=64,  # noqa: E731
                              d_ff=c.d_ff, vocab_size=c.vocab_size,
                              feed_forward_proj="gated-gelu" if c.mlp == "geglu" else "relu")
    published = {"bert-base": 109_514_298, "bert-large": 335_174_458, "t5-small": 60_506_624,
                 "t5-base": 222_903_552, "t5-v1_1-base": 247_577_856}
    for name, count in published.items():
        cfg = load_config(name).model
        ours = count_params(cfg).total
        if cfg.arch == "encoder":
            assert ours == count == _hf_count(T.BertForMaskedLM, bert(cfg)), name
            assert with_pooler(cfg, ours) == _hf_count(T.BertModel, bert(cfg)), name
        else:
            assert ours == count == _hf_count(T.T5ForConditionalGeneration, t5(cfg), not cfg.tie_embeddings), name
    assert with_pooler(load_config("bert-base").model, 109_514_298) == 109_482_240
    assert 60e6 < count_params(load_config("transformer-base").model).total < 66e6


@pytest.mark.parametrize("overrides", [BERT, T5, T5V11, VASWANI, BERT[:-1] + ["model.position=relative"]],
                         ids=["bert", "t5", "t5v11", "vaswani", "relative-encoder"])
def test_count_equals_the_arrays_the_model_holds(overrides):
    cfg = config(*overrides)
    model = build(cfg, vocab_rows=cfg.vocab_size)
    assert count_params(cfg).total == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model)))


@pytest.mark.parametrize("kind", ["bert", "t5", "t5v11"])
def test_exports_load_in_transformers_with_equal_logits_and_import_back(kind, tmp_path, bert, t5):
    import torch
    import transformers as T
    from safetensors.numpy import load_file

    from meshtron.train.hf.export import flatten_params
    from meshtron.train.hf.seq_export import export_seq_hf, seq_params_from_hf, trim_vocab

    cfg, model = {"bert": bert, "t5": t5}.get(kind) or (config(*T5V11), perturbed(config(*T5V11)))
    params = nnx.to_pure_dict(nnx.state(model))
    export_seq_hf(cfg, params, tmp_path / "hf")
    source, target = tokens((2, 30)), tokens((2, 12), seed=4)
    with torch.no_grad():
        if kind == "bert":
            hf = T.BertForMaskedLM.from_pretrained(tmp_path / "hf").eval()
            theirs = hf(input_ids=torch.tensor(source)).logits.numpy()
            ours = np.asarray(model(jnp.asarray(source)))[..., :500]
        else:
            hf = T.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
            theirs = hf(input_ids=torch.tensor(source), decoder_input_ids=torch.tensor(target)).logits.numpy()
            ours = np.asarray(model(jnp.asarray(source), jnp.asarray(target)))[..., :500]
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    back = seq_params_from_hf(cfg, load_file(tmp_path / "hf" / "model.safetensors").get)
    mine = trim_vocab(cfg, flatten_params(params))
    assert set(back) == set(mine)
    for key, value in mine.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_prefix_lm_reads_the_prefix_both_ways_and_the_rest_causally():
    cfg = config("model.family=llama", "train.objective=prefix_lm")
    model = build(cfg, seed=2)
    x = jnp.asarray(tokens((1, 16)))
    losses = nnx.jit(lambda m, t, p: m.hidden(t, prefix=p)[0])
    changed = x.at[:, 5].set((x[:, 5] + 7) % 400)
    a = np.asarray(losses(model, x, jnp.array([8])))
    b = np.asarray(losses(model, changed, jnp.array([8])))
    assert np.abs(a[:, :5] - b[:, :5]).max() > 1e-5  # inside the prefix, a later token is seen
    changed = x.at[:, 12].set((x[:, 12] + 7) % 400)
    b = np.asarray(losses(model, changed, jnp.array([8])))
    np.testing.assert_allclose(a[:, :12], b[:, :12], atol=1e-6)  # after it, attention stays causal
    causal = np.asarray(nnx.jit(lambda m, t: m.hidden(t)[0])(model, x))
    np.testing.assert_allclose(np.asarray(losses(model, x, jnp.array([1]))), causal, atol=1e-6)


def test_objectives_that_do_not_fit_are_one_line_errors():
    from meshtron.configs import ConfigError

    cases = [(["train.objective=mlm"], "train.objective"),  # mlm on a decoder
             (["model.family=bert", "train.objective=span_corruption"], "train.objective"),
             (["model.family=t5", "model.vocab_size=300"], "model.vocab_size"),  # no room for 100 sentinels
             (["model.family=t5", "model.seq_len=4"], "model.seq_len"),
             (["model.family=gpt2", "model.arch=encoder"], "model.arch")]
    for overrides, key in cases:
        with pytest.raises(ConfigError) as err:
            load_config("tiny", TINY + overrides)
        assert key in str(err.value) and "\n" not in str(err.value), overrides
