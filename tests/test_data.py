"""Data: sources, splits, deterministic and resumable batches, clear errors."""

import numpy as np
import pytest

from meshtron.configs import ConfigError, load_config
from meshtron.train.data.prepare import prepare_data

from conftest import TINY


@pytest.fixture(scope="module")
def dataset(text_corpus):
    return prepare_data(load_config("tiny", TINY + [f"data.source={text_corpus}"]), log=lambda *a: None)


def test_windows_are_seq_len_plus_one_tokens_of_the_vocabulary(dataset):
    batch = next(dataset.train_batches(8, seed=0))
    assert batch.shape == (8, 33) and batch.dtype == np.int32
    assert batch.min() >= 0 and batch.max() < dataset.tokenizer.vocab_size


def test_documents_are_separated_by_eos(dataset):
    tokens = np.asarray(dataset.train.tokens)
    assert (tokens == dataset.tokenizer.eos_id).sum() >= 2  # several files, one EOS after each
    assert tokens[-1] == dataset.tokenizer.eos_id


def test_same_seed_same_order_other_seed_other_order(dataset):
    a = [next(dataset.train_batches(8, seed=0)) for _ in range(1)][0]
    b = next(dataset.train_batches(8, seed=0))
    c = next(dataset.train_batches(8, seed=1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_resuming_at_a_step_continues_the_same_stream(dataset):
    it = dataset.train_batches(8, seed=0)
    stream = [next(it) for _ in range(6)]
    resumed = dataset.train_batches(8, seed=0, start_step=4)
    np.testing.assert_array_equal(next(resumed), stream[4])
    np.testing.assert_array_equal(next(resumed), stream[5])


def test_processes_take_contiguous_rows_of_the_global_batch(dataset):
    whole = next(dataset.train_batches(8, seed=0, start_step=3))
    parts = [next(dataset.train_batches(8, seed=0, start_step=3, process_index=p, process_count=2)) for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_epochs_are_reshuffled_and_cover_every_window(dataset):
    n = len(dataset.train)
    steps = n // 8 * 2 + 2
    it = dataset.train_batches(8, seed=0)
    seen = {tuple(row) for _ in range(steps) for row in next(it)}
    assert seen == {tuple(dataset.train[i]) for i in range(n)}  # every window appears


def test_validation_batches_are_fixed_and_disjoint_from_training(dataset):
    a = dataset.val_batches(8, 2)
    b = dataset.val_batches(8, 2)
    np.testing.assert_array_equal(a[0], b[0])
    assert len(dataset.val) > 0 and len(dataset.train) > len(dataset.val)


def test_stdlib_default_corpus_prepares():
    config = load_config("tiny", TINY + ["data.max_documents=20"])
    ds = prepare_data(config, log=lambda *a: None)
    assert ds.key.startswith("stdlib-py3") and len(ds.train) > 10


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="data.source.*does not exist"):
        prepare_data(load_config("tiny", TINY + [f"data.source={tmp_path / 'nope'}"]))


def test_empty_file_and_folder_without_text_are_refused(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        prepare_data(load_config("tiny", TINY + [f"data.source={empty}"]))
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "blob.bin").write_bytes(b"\0\1\2" * 100)
    with pytest.raises(ConfigError, match="no readable, non-empty text files"):
        prepare_data(load_config("tiny", TINY + [f"data.source={folder}"]))


def test_text_shorter_than_a_window_is_refused(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("just a few words")
    with pytest.raises(ConfigError, match="fewer than model.seq_len"):
        prepare_data(load_config("tiny", TINY + [f"data.source={short}", "model.vocab_size=300"]))


def test_unknown_tfds_dataset_is_a_clear_error():
    with pytest.raises(ConfigError, match="TFDS dataset 'no_such_dataset_xyz' not found"):
        prepare_data(load_config("tiny", TINY + ["data.source=tfds:no_such_dataset_xyz"]))


def test_tokenizer_larger_than_the_model_vocabulary_is_refused(dataset, text_corpus):
    with pytest.raises(ConfigError, match="model.vocab_size"):
        prepare_data(load_config("tiny", TINY + [f"data.source={text_corpus}", "model.vocab_size=300",
                                                 f"data.tokenizer={dataset.tokenizer.path}"]))


def test_non_utf8_bytes_are_replaced_not_fatal(tmp_path):
    folder = tmp_path / "latin1"
    folder.mkdir()
    (folder / "a.txt").write_bytes(("café ünïcode " * 400).encode("latin-1"))
    (folder / "b.txt").write_text("plain ascii text line\n" * 300)
    ds = prepare_data(load_config("tiny", TINY + [f"data.source={folder}", "model.vocab_size=300"]),
                      log=lambda *a: None)
    assert len(ds.train) > 0


def test_the_document_order_does_not_depend_on_where_the_corpus_sits(tmp_path, text_corpus):
    """Two checkouts (or two hosts mounting the data at different paths) must read the same stream."""
    import shutil

    from meshtron.train.data.corpus import text_splits

    orders = []
    for where in ("a", "elsewhere/deeper/b"):
        folder = tmp_path / where
        shutil.copytree(text_corpus, folder)
        config = load_config("tiny", [f"data.source={folder}"])
        train, val, _ = text_splits(config.data, tmp_path / "cache")
        orders.append(([train[i]["path"] for i in range(len(train))], [val[i]["path"] for i in range(len(val))]))
    assert len(orders[0][0]) >= 5 and orders[0] == orders[1]
