"""Property-based fuzzing (Hypothesis) of everything a user types: config files, overrides, every command's flags.

The only outcomes allowed are success, or one line `meshtron...: error: ...` with exit code 2: never a
traceback. Commands run in-process; the work behind a fully valid command line (training, compiling,
timing, joining a multi-process job) is replaced by a sentinel, so each example costs milliseconds.

The suite runs a bounded number of examples; MESHTRON_FUZZ_EXAMPLES=N raises it (see the README).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshtron.configs.errors import UserError
from meshtron.configs.loader import config_from_raw, load_config
from meshtron.configs.schema import SECTION_CLASSES

EXAMPLES = int(os.environ.get("MESHTRON_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

KEYS = [f"{s}.{f.name}" for s, cls in SECTION_CLASSES.items() for f in dataclasses.fields(cls)]
# keys naming files or folders only take values from a pool of prepared paths: a random "." or "/" would
# make the fuzzer read (or write a cache into) whole trees
PATH_KEYS = {"data.source", "data.tokenizer", "data.cache_dir"}
YAML_ODDITIES = ["null", "~", "", "[1, 2]", "{a: 1}", "1e400", "-1e400", ".inf", ".nan", "-0", "0x10", "0o7", "1_000",
                 "yes", "no", "on", "'quoted'", "\"q\"", "!!binary aGk=", "&a 1", "*a", "!!python/object:os.system",
                 "2026-11-30", "12:30:00", "- 1", "? x", "%YAML 1.2", "\t", "\x00", "é", "1" * 400, "1.5", "-7"]


class Reached(Exception):
    """Raised in place of the work behind a valid command line: the arguments were accepted."""


ROOT = Path(tempfile.mkdtemp(prefix="meshtron-fuzz-"))  # made at import: strategies below are built once
SOURCES = [str(ROOT / n) for n in ("file.txt", "empty.txt", "binary.bin", "empty_dir", "link_to_file", "dangling",
                                   "loop", "missing")] + ["stdlib", "tfds:", "tfds:no_such_set", " "]
ANYWHERE = SOURCES + [str(ROOT / n) for n in ("bad.yaml", "list.yaml", "good.yaml", "fake_run", "not_a_run",
                                              "new/out", "file.txt/below_a_file")]


@pytest.fixture(scope="module", autouse=True)
def paths():
    """Files and folders of every kind a user might point a flag at, in ROOT."""
    for name in ("empty_dir", "fake_run", "not_a_run"):
        (ROOT / name).mkdir(exist_ok=True)
    (ROOT / "file.txt").write_text("hello world\n" * 50)
    (ROOT / "empty.txt").write_text("")
    (ROOT / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (ROOT / "bad.yaml").write_text("model: [unclosed\n")
    (ROOT / "list.yaml").write_text("- 1\n- 2\n")
    (ROOT / "good.yaml").write_text("model:\n  n_layers: 1\n  d_model: 32\n  n_heads: 2\n")
    for link, target in (("link_to_file", "file.txt"), ("dangling", "nowhere"), ("loop", "loop")):
        if not (ROOT / link).is_symlink():
            (ROOT / link).symlink_to(ROOT / target)
    (ROOT / "fake_run" / "config.yaml").write_text("name: tiny\nmodel: {n_layers: 1}\n")
    (ROOT / "not_a_run" / "x.txt").write_text("x")
    yield ROOT
    shutil.rmtree(ROOT, ignore_errors=True)


# -- strategies -------------------------------------------------------------------------------------------------
scalar_text = st.one_of(st.sampled_from(YAML_ODDITIES), st.text(max_size=12),
                        st.integers(-2**70, 2**70).map(str), st.floats(allow_nan=True).map(repr),
                        st.sampled_from(["0", "1", "2", "3", "4", "8", "64", "-1", "true", "false", "1e-3"]))
section_key = st.one_of(st.sampled_from(KEYS), st.text(max_size=10),
                        st.tuples(st.sampled_from(list(SECTION_CLASSES)), st.text(max_size=6)).map(".".join))


def _pair(key: str, value: str, pool: list[str]) -> str:
    return f"{key}={value if key not in PATH_KEYS else pool[hash(value) % len(pool)]}"


def override(pool: list[str]):
    """key=value (path keys take a pooled path), or text without '='."""
    return st.one_of(st.builds(lambda k, v: _pair(k, v, pool), section_key, scalar_text), st.text(max_size=10))


leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                 st.text(max_size=8), st.sampled_from(SOURCES))
yaml_value = st.one_of(leaf, st.lists(leaf, max_size=3), st.dictionaries(st.text(max_size=6), leaf, max_size=3))
section = st.dictionaries(st.one_of(st.sampled_from(sorted({k.split(".")[1] for k in KEYS})), st.text(max_size=8)),
                          yaml_value, max_size=5)
raw_config = st.dictionaries(st.one_of(st.sampled_from(list(SECTION_CLASSES) + ["name"]), st.text(max_size=8)),
                             st.one_of(section, yaml_value), max_size=4).map(lambda d: _safe_paths(d))


def _safe_paths(raw: dict) -> dict:
    """Path keys get a pooled value (see PATH_KEYS)."""
    data = raw.get("data")
    if isinstance(data, dict):
        for k in ("source", "tokenizer", "cache_dir"):
            if k in data and data[k] not in SOURCES:
                data[k] = SOURCES[0]
    return raw


# -- the config loader ------------------------------------------------------------------------------------------
def check_one_line(error: BaseException) -> None:
    text = str(error)
    assert isinstance(error, UserError), f"{type(error).__name__}: {text}"
    assert text and "\n" not in text.strip() and "Traceback" not in text, text


@FUZZ
@given(raw=raw_config, overrides=st.lists(override(SOURCES), max_size=4))
def test_random_config_documents_load_or_fail_in_one_line(raw, overrides):
    try:
        config_from_raw(raw, "fuzz", overrides)
    except UserError as e:
        check_one_line(e)


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.lists(st.sampled_from(YAML_ODDITIES + ["model:", "  n_layers: 2",
                                                                                        "train:", "  lr: x", ":",
                                                                                        "model: 3", "\"unclosed"]),
                                                       max_size=8).map("\n".join)))
def test_random_yaml_files_load_or_fail_in_one_line(text):
    path = ROOT / "fuzzed.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        load_config(str(path))
    except UserError as e:
        check_one_line(e)


# -- every command's arguments ----------------------------------------------------------------------------------
def _command_parsers() -> dict[str, argparse.ArgumentParser]:
    from meshtron.tools import cli

    out = {}
    for name, (module_name, _) in cli.COMMANDS.items():
        parser = cli._Parser(prog=f"meshtron {name}")
        cli._add_common_options(parser)
        importlib.import_module(module_name).add_arguments(parser)
        out[name] = parser
    return out


def _argv_for(parser: argparse.ArgumentParser, pool: list[str]):
    """A strategy of argument lists for `parser`: its own flags (with fitting and unfitting values), positionals,
    unknown flags, and for sub-parsers a (possibly unknown) sub-command."""
    value = st.one_of(scalar_text, st.sampled_from(pool))
    parts = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            choices = sorted(action.choices)
            parts.append(st.one_of(st.sampled_from(choices).flatmap(
                lambda c, a=action: _argv_for(a.choices[c], pool).map(lambda rest, c=c: [c, *rest])),
                st.text(max_size=6).map(lambda t: [t])))
            continue
        if not action.option_strings:  # positionals
            parts.append(st.lists(st.one_of(st.sampled_from(pool), override(pool)), max_size=3))
            continue
        flag = st.sampled_from(action.option_strings)
        if action.nargs == 0:
            parts.append(st.one_of(st.just([]), flag.map(lambda f: [f])))
        else:
            choice = st.sampled_from(list(action.choices)) if action.choices else value
            parts.append(st.one_of(st.just([]), st.tuples(flag, st.one_of(choice, value)).map(list),
                                   st.tuples(flag, choice).map(lambda t: [f"{t[0]}={t[1]}"]), flag.map(lambda f: [f])))
    odd_flags = st.sampled_from(["--", "-", "--nope", "-x", "--json=1", "--help"])
    unknown = st.lists(st.one_of(odd_flags, st.text(max_size=5)),
                       max_size=2)
    return st.tuples(st.permutations(parts).flatmap(lambda ps: st.tuples(*ps)) if parts else st.just(()),
                     unknown).map(lambda t: [x for part in t[0] for x in part] + t[1])


def _stub_work(monkeypatch) -> None:
    """Replace what runs after the arguments are accepted (train, compile, time, join a job) by Reached."""
    def reached(*args, **kwargs):
        raise Reached

    for module_name, attr in [("meshtron.train.run.loop", "train"), ("meshtron.tools.bench", "compile_seconds"),
                              ("meshtron.train.planner.compiled", "compile_step"), ("jax.distributed", "initialize")]:
        monkeypatch.setattr(importlib.import_module(module_name), attr, reached)


def run_cli(argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of `meshtron ARGV` run in-process; Reached and --help count as success."""
    from meshtron.tools.cli import main

    err, out = io.StringIO(), io.StringIO()
    saved_env = dict(os.environ)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(argv)
    except Reached:
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 2
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
    return code, err.getvalue()


def check_outcome(argv: list[str], code: int, err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    if code == 0:
        return
    assert code == 2, f"meshtron {argv}: exit {code}\n{err}"
    assert len(lines) == 1 and lines[0].startswith("meshtron") and ": error: " in lines[0], f"meshtron {argv}:\n{err}"


@pytest.mark.parametrize("command", ["train", "generate", "export", "import", "plan", "scaling", "bench"])
def test_random_command_lines_succeed_or_fail_in_one_line(command, monkeypatch):
    _stub_work(monkeypatch)
    monkeypatch.chdir(ROOT)  # relative paths a command writes land in the fuzz folder
    parser = _command_parsers()[command]
    pool = ANYWHERE

    @FUZZ
    @given(argv=_argv_for(parser, pool))
    def check(argv):
        code, err = run_cli([command, *argv])
        check_outcome([command, *argv], code, err)

    check()
