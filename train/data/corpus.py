"""Text sources as TFDS datasets: the default corpus (this Python's standard library source),
local text files or folders, and any prepared `tfds:NAME` dataset.

Local text is prepared once by a Meshtron TFDS builder into array_record files (offline,
no TensorFlow) and read back with random access. Documents go to the validation split by
a hash of their path, so the split does not depend on file order or on the machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import sys
import sysconfig
import zlib
from pathlib import Path

import tensorflow_datasets as tfds
from absl import logging as absl_logging
from etils import epath

from meshtron.configs.errors import ConfigError
from meshtron.configs.schema import DataConfig

TEXT_SUFFIXES = {".py", ".txt", ".md", ".rst", ".json", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".c", ".h",
                 ".cc", ".cpp", ".hpp", ".rs", ".go", ".java", ".js", ".ts", ".html", ".css", ".sh", ".tex",
                 ".csv", ".tsv", ".xml", ".jsonl", ""}
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "__pycache__", "turtledemo", "lib2to3"}


@dataclasses.dataclass
class TextCorpusConfig(tfds.core.BuilderConfig):
    """Which files make up the corpus; the name fingerprints them, so a change re-prepares."""

    files: tuple = dataclasses.field(default=(), repr=False)
    root: str = ""
    val_fraction: float = 0.05


class MeshtronText(tfds.core.GeneratorBasedBuilder):
    """Plain-text documents (one per file), split into train and validation by path hash."""

    VERSION = tfds.core.Version("1.0.0")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file (TFDS's default lookup fails on a namespace package such as `meshtron`)."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description="Text files prepared by Meshtron.",
                                     features=tfds.features.FeaturesDict({"text": tfds.features.Text(),
                                                                          "path": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        files = list(self.builder_config.files)
        threshold = int(self.builder_config.val_fraction * 10_000)
        is_val = [zlib.crc32(os.path.relpath(f, self.builder_config.root).encode()) % 10_000 < threshold
                  for f in files]
        if len(files) > 1 and not any(is_val):
            is_val[-1] = True  # always hold something out
        if len(files) > 1 and all(is_val):
            is_val[0] = False
        train = [f for f, v in zip(files, is_val) if not v] or files
        val = [f for f, v in zip(files, is_val) if v] or files
        return {"train": self._generate_examples(train), "validation": self._generate_examples(val)}

    def _generate_examples(self, files):
        for path in files:
            text = Path(path).read_bytes().decode("utf-8", errors="replace")
            if text:  # keyed by the path inside the source: TFDS orders examples by key hash, and the order
                # must not depend on where the folder sits (two checkouts, two hosts' mounts)
                relative = os.path.relpath(path, self.builder_config.root)
                yield relative, {"text": text, "path": relative}


@contextlib.contextmanager
def _quiet():
    """TFDS logs every custom config and draws progress bars; Meshtron prints its own one-line summary."""
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    tfds.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # "Downloading and preparing dataset ..." lines
            yield
    finally:
        absl_logging.set_verbosity(level)


def stdlib_files() -> tuple[list[str], str]:
    """The .py files of this Python's standard library (tests and tooling folders left out), sorted."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    return files, root


def _looks_like_text(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError:
        return False
    return b"\0" not in head


def local_files(source: str) -> tuple[list[str], str]:
    """Text files of a file or folder path (binary files skipped); ConfigError when there are none."""
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(f"config key 'data.source': {source} does not exist; give stdlib, a text file or "
                          "folder, or tfds:NAME")
    if path.is_file():
        if not os.access(path, os.R_OK):
            raise ConfigError(f"config key 'data.source': {source} is not readable")
        if path.stat().st_size == 0:
            raise ConfigError(f"config key 'data.source': {source} is empty; give a file with text in it")
        if not _looks_like_text(str(path)):
            raise ConfigError(f"config key 'data.source': {source} is a binary file, not text")
        return [str(path.resolve())], str(path.resolve().parent)
    if not path.is_dir():
        raise ConfigError(f"config key 'data.source': {source} is neither a file nor a folder; give stdlib, a text "
                          "file or folder, or tfds:NAME")
    files, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if (Path(name).suffix.lower() in TEXT_SUFFIXES and not name.startswith(".") and os.access(full, os.R_OK)
                    and os.path.getsize(full) > 0 and _looks_like_text(full)):
                identity = (os.stat(full).st_dev, os.stat(full).st_ino)  # one file reached by several paths (links)
                if identity not in seen:
                    seen.add(identity)
                    files.append(str(Path(full).resolve()))
    if not files:
        raise ConfigError(f"config key 'data.source': folder {source} holds no readable, non-empty text files")
    return files, str(path.resolve())


def _fingerprint(files: list[str], val_fraction: float) -> str:
    h = hashlib.sha256(f"{val_fraction}".encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:16]


def text_splits(data: DataConfig, cache_dir: Path):
    """(train source, validation source, dataset key) of random-access records with a text field."""
    source = data.source.strip()
    if source.startswith("tfds:"):
        return _tfds_splits(source[5:], data)
    if source == "stdlib":
        files, root = stdlib_files()
        name = f"stdlib-py{sys.version_info.major}{sys.version_info.minor}-{_fingerprint(files, data.val_fraction)}"
    else:
        files, root = local_files(source)
        name = f"files-{_fingerprint(files, data.val_fraction)}"
    config = TextCorpusConfig(name=name, version="1.1.0", files=tuple(files), root=root,
                              val_fraction=data.val_fraction)
    with _quiet():
        builder = MeshtronText(config=config, data_dir=str(cache_dir / "tfds"))
        builder.download_and_prepare(file_format="array_record",
                                     download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return builder.as_data_source("train"), builder.as_data_source("validation"), name


def _tfds_splits(name: str, data: DataConfig):
    if not name:
        raise ConfigError("config key 'data.source': tfds: needs a dataset name, for example tfds:my_corpus")
    try:
        builder = tfds.builder(name)
    except Exception as e:  # TFDS raises several types for unknown or broken datasets
        raise ConfigError(f"config key 'data.source': TFDS dataset '{name}' not found "
                          f"({e.__class__.__name__}); prepare it first with tfds build") from None
    splits = builder.info.splits
    if "train" not in splits:
        raise ConfigError(f"config key 'data.source': TFDS dataset '{name}' has no train split")
    val_name = next((s for s in ("validation", "valid", "test") if s in splits), None)
    try:
        train = builder.as_data_source("train")
        val = builder.as_data_source(val_name) if val_name else None
    except Exception as e:
        raise ConfigError(f"config key 'data.source': TFDS dataset '{name}' is not prepared in array_record "
                          f"format ({e.__class__.__name__}); rebuild it with --file_format=array_record") from None
    if val is None:  # hold out the tail of train
        n = len(train)
        cut = max(1, int(n * (1 - data.val_fraction)))
        return _Slice(train, 0, cut), _Slice(train, cut, n), f"tfds-{name}"
    return train, val, f"tfds-{name}"


class _Slice:
    """A contiguous range of a random-access source."""

    def __init__(self, source, start: int, stop: int):
        self.source, self.start, self.stop = source, start, max(start + 1, stop)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        return self.source[self.start + i]
