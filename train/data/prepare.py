"""From a text source to batches of token windows, deterministic and resumable by step.

source (TFDS) -> SentencePiece ids, EOS after each document -> one flat token array per
split (cached on disk) -> windows of seq_len + 1 tokens -> a grain pipeline that shuffles
windows by train.seed (reshuffled every epoch) and batches them.

The global order is a pure function of (seed, step): batch `s` holds the windows at
positions [s*B, (s+1)*B) of the shuffled stream, and each process takes its own contiguous
rows of it. Resuming at step s, on any number of processes or devices, continues the same
stream: no batch repeated or skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grain
import numpy as np

from meshtron.configs.errors import ConfigError
from meshtron.configs.objectives import reserved_ids
from meshtron.configs.schema import Config, DataConfig
from meshtron.train.data import objectives, special_tokens
from meshtron.train.data.corpus import text_splits
from meshtron.train.data.tokenizer import TRAINER_OPTIONS, Tokenizer, train_tokenizer


def cache_root(data: DataConfig) -> Path:
    """Where prepared datasets, tokenizers and token arrays are kept."""
    root = data.cache_dir or os.environ.get("MESHTRON_CACHE") or "~/.cache/meshtron"
    return Path(root).expanduser()


@contextlib.contextmanager
def _locked(path: Path):
    """One preparer at a time per cache entry (several processes may start together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _text(record, key: str) -> str:
    value = record[key] if isinstance(record, dict) else record
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _documents(source, data: DataConfig) -> grain.MapDataset:
    """The split's documents as text, in order (at most data.max_documents)."""
    n = len(source)
    if data.max_documents:
        n = min(n, data.max_documents)
    key = data.text_key
    ds = grain.MapDataset.source(source)
    if n < len(source):
        ds = ds[:n]
    try:
        first = source[0]
    except Exception as e:
        raise ConfigError(f"config key 'data.source': cannot read records ({e.__class__.__name__})") from None
    if isinstance(first, dict) and key not in first:
        raise ConfigError(f"config key 'data.text_key': records have no field '{key}'; fields: {', '.join(first)}")
    return ds.map(lambda r: _text(r, key))


def _tokenizer(config: Config, train_docs: grain.MapDataset, dataset_key: str, root: Path, log,
               run_dir: Path | None) -> Tokenizer:
    data, vocab = config.data, config.model.vocab_size - reserved_ids(config.train.objective)
    if data.tokenizer:
        tokenizer = Tokenizer(Path(data.tokenizer).expanduser())
    elif run_dir is not None and any((Path(run_dir) / n).is_file() for n in ("tokenizer.model", "tokenizer.json")):
        tokenizer = Tokenizer.from_run_dir(run_dir)  # a run keeps the tokenizer it started with
    else:
        options = hashlib.sha256(repr(sorted(TRAINER_OPTIONS.items())).encode()).hexdigest()[:8]
        path = root / "tokenizers" / f"{dataset_key}-v{vocab}-c{data.tokenizer_chars}-{options}.model"
        with _locked(path):
            if not path.exists():
                log(f"training a {vocab}-piece SentencePiece tokenizer on {data.tokenizer_chars:,} characters")
                train_tokenizer((train_docs[i] for i in range(len(train_docs))), vocab, path, data.tokenizer_chars)
        tokenizer = Tokenizer(path)
    if tokenizer.vocab_size > vocab:
        need = tokenizer.vocab_size + config.model.vocab_size - vocab
        raise ConfigError(f"config key 'model.vocab_size': the tokenizer has {tokenizer.vocab_size} pieces but the "
                          f"model only {vocab} (besides the objective's special ids); set model.vocab_size >= {need}")
    return tokenizer


def _token_array(docs: grain.MapDataset, tokenizer: Tokenizer, path: Path, log) -> np.ndarray:
    """All documents of a split as one flat array, EOS after each; built once, then memory-mapped."""
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    with _locked(path):
        if not path.exists():
            start = time.time()
            tmp = path.with_suffix(".tmp")
            count = 0
            with open(tmp, "wb") as out:
                for texts in docs.batch(64, drop_remainder=False).to_iter_dataset():
                    for ids in tokenizer.encode_batch(list(texts)):
                        out.write(np.asarray(ids + [tokenizer.eos_id], dtype).tobytes())
                        count += len(ids) + 1
            tmp.replace(path)
            log(f"tokenized {len(docs):,} documents into {count:,} tokens ({time.time() - start:.1f}s)")
    return np.memmap(path, dtype=dtype, mode="r")


@dataclass
class TokenWindows:
    """Random access to windows of `length` tokens (seq_len + 1) with stride seq_len."""

    tokens: np.ndarray
    length: int

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // (self.length - 1))

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(i) * (self.length - 1)
        return np.asarray(self.tokens[start:start + self.length], np.int32)


@dataclass
class Dataset:
    """A tokenizer and the train / validation windows of one source."""

    tokenizer: Tokenizer
    train: TokenWindows
    val: TokenWindows
    key: str
    objective: str = "causal"
    specials: objectives.Specials | None = None

    def _shaped(self, windows: np.ndarray, seed: int, step: int, first_row: int):
        """Raw windows -> what the step reads: the windows themselves (causal) or the objective's arrays."""
        if self.objective == "causal":
            return windows
        return objectives.make_batch(self.objective, windows, seed, step, self.specials, first_row)

    @property
    def train_tokens(self) -> int:
        """Tokens in the training split."""
        return len(self.train.tokens)

    def train_batches(self, batch_size: int, seed: int, start_step: int = 0, process_index: int = 0,
                      process_count: int = 1, prefetch: int = 2) -> Iterator[np.ndarray]:
        """This process's rows of global batches start_step, start_step+1, ...: (B/P, T+1) int32."""
        rows = batch_size // process_count
        first = process_index * rows
        windows = self.train
        order = grain.MapDataset.range(len(windows)).shuffle(seed=seed).repeat(None)
        batches = (order.batch(batch_size)[start_step:].map_with_index(
            lambda n, idx: self._shaped(np.stack([windows[i] for i in idx[first:first + rows]]), seed,
                                        start_step + n, first)))
        options = grain.ReadOptions(num_threads=max(1, prefetch), prefetch_buffer_size=max(1, prefetch))
        return iter(batches.to_iter_dataset(options))

    def val_batches(self, batch_size: int, count: int, process_index: int = 0, process_count: int = 1) -> list:
        """The first `count` validation batches in order (the same every evaluation)."""
        rows = batch_size // process_count
        n = len(self.val)
        out = []
        for b in range(count):
            idx = [(b * batch_size + process_index * rows + r) % n for r in range(rows)]
            out.append(self._shaped(np.stack([self.val[i] for i in idx]), 0, b, process_index * rows))
        return out


def check_source(data: DataConfig) -> None:
    """The cheap part of source validation, run before anything else (a missing path is a config error)."""
    source = data.source.strip()
    if source != "stdlib" and not source.startswith("tfds:") and not Path(source).expanduser().exists():
        raise ConfigError(f"config key 'data.source': {source} does not exist; give stdlib, a text file or folder, "
                          "or tfds:NAME")


def prepare_data(config: Config, log=print, run_dir: Path | None = None) -> Dataset:
    """Prepare (or reuse from the cache) the dataset, tokenizer and token arrays of `config`; a run directory
    that already holds a tokenizer keeps it."""
    data, seq_len = config.data, config.model.seq_len
    root = cache_root(data)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"config key 'data.cache_dir': cannot create {root} ({e.strerror})") from None
    with _locked(root / "tfds" / "prepare"):  # processes of one job may start preparing together
        train_src, val_src, key = text_splits(data, root)
    train_docs, val_docs = _documents(train_src, data), _documents(val_src, data)
    if len(train_docs) == 0:
        raise ConfigError(f"config key 'data.source': {data.source} has no documents")
    tokenizer = _tokenizer(config, train_docs, key, root, log, run_dir)
    tok_key = hashlib.sha256(tokenizer.model_bytes()).hexdigest()[:12]
    limit = f"-n{data.max_documents}" if data.max_documents else ""
    arrays = {split: _token_array(docs, tokenizer, root / "tokens" / f"{key}-{tok_key}{limit}-{split}.bin", log)
              for split, docs in (("train", train_docs), ("validation", val_docs))}
    objective = config.train.objective
    length = objectives.raw_length(objective, seq_len)
    train, val = TokenWindows(arrays["train"], length), TokenWindows(arrays["validation"], length)
    for name, windows in (("train", train), ("validation", val)):
        if len(windows) == 0:
            raise ConfigError(f"config key 'data.source': the {name} split has {len(windows.tokens)} tokens, fewer "
                              f"than model.seq_len allows ({length} per example); add text or lower model.seq_len")
    specials = objectives.Specials(eos_id=tokenizer.eos_id, mask_id=special_tokens.mask_id(config.model.vocab_size),
                                   vocab_size=config.model.vocab_size, ordinary=tokenizer.vocab_size)
    return Dataset(tokenizer=tokenizer, train=train, val=val, key=key, objective=objective, specials=specials)
