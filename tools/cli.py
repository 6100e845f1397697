"""The `meshtron` command: one subcommand per module in tools/ (train, generate, export, ...).

Each subcommand module has `add_arguments(parser)` and `run(args) -> int`. Errors a user
can fix (`ConfigError`, `UserError`) print one line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from meshtron.configs.errors import UserError, one_line

COMMANDS = {
    "train": ("meshtron.tools.train_command", "train a model (default: the quickstart preset on the Python stdlib)"),
    "generate": ("meshtron.tools.generate_command", "sample text from a run directory (or answer an --input)"),
    "fill": ("meshtron.tools.fill_command", "predict the [MASK] tokens of a text with an encoder run"),
    "export": ("meshtron.tools.export_command", "write a run as a Hugging Face or safetensors directory"),
    "import": ("meshtron.tools.import_command", "turn a Hugging Face GPT-2/Llama directory into a run"),
    "plan": ("meshtron.tools.plan_command", "per-device memory and communication of a config on a mesh"),
    "scaling": ("meshtron.tools.scaling_command", "Chinchilla budgets, FLOP counts and fits of your runs"),
    "bench": ("meshtron.tools.bench_command", "time training steps: tokens/s, MFU, compile time"),
}


def _set_cpu_devices(argv: list[str]) -> None:
    """--cpu-devices N must act before JAX starts, so it is read before anything imports jax."""
    for i, arg in enumerate(argv):
        value = None
        if arg == "--cpu-devices" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--cpu-devices="):
            value = arg.split("=", 1)[1]
        if value is not None:
            if not value.isdigit() or int(value) < 1:
                raise UserError(f"--cpu-devices {value}: give a positive number of simulated CPU devices")
            flags = os.environ.get("XLA_FLAGS", "")
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={value}".strip()
            os.environ.setdefault("JAX_PLATFORMS", "cpu")


_COMMON_WITH_VALUE = ("--cpu-devices", "--coordinator", "--num-processes", "--process-id")


def _command_first(argv: list[str]) -> tuple[str | None, list[str]]:
    """The command name, and argv with the options given before it moved after it
    (`meshtron --cpu-devices 8 train ...` == `meshtron train --cpu-devices 8 ...`)."""
    before, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in _COMMON_WITH_VALUE:
            before += argv[i:i + 2]
            i += 2
        elif arg.startswith("-"):
            before.append(arg)
            i += 1
        else:
            return arg, [arg, *before, *argv[i + 1:]]
    return None, argv


def _add_common_options(parser) -> None:
    group = parser.add_argument_group("devices and processes")
    group.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                       help="simulate N devices on the CPU (try sharding layouts on a laptop)")
    group.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="multi-process job: address of process 0 (SLURM, Open MPI and TPU pods are detected)")
    group.add_argument("--num-processes", type=int, default=None, metavar="N", help="multi-process job: processes")
    group.add_argument("--process-id", type=int, default=None, metavar="I", help="multi-process job: this one's index")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (its usage block is for --help)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)}; see `{self.prog} --help`\n")


def _usage() -> str:
    lines = ["usage: meshtron COMMAND [options]   (meshtron COMMAND --help for each)", "", "commands:"]
    lines += [f"  {name:<9} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def json_out(obj) -> None:
    """Print one JSON object to stdout (the --json contract)."""
    print(json.dumps(obj, indent=None, default=_jsonable))


def _jsonable(x):
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `meshtron` console command."""
    console, argv = argv is None, list(sys.argv[1:] if argv is None else argv)
    try:
        if console:  # a multi-process job's work runs in a watched child process (tools/supervise.py)
            from meshtron.tools.supervise import maybe_supervise

            code = maybe_supervise(argv)
            if code is not None:
                return code
        _set_cpu_devices(argv)
        from meshtron.parallel.jax_compat import skip_absent_tpu
        from meshtron.parallel.xla_flags import apply_default_flags

        apply_default_flags()
        skip_absent_tpu()
        name, argv = _command_first(argv)
        if name not in COMMANDS:
            if name is None:
                print(_usage())
                return 0 if any(a in ("-h", "--help") for a in argv) else 2
            print(f"meshtron: error: unknown command '{one_line(name)}'; commands: {', '.join(COMMANDS)}",
                  file=sys.stderr)
            return 2
        parser = _Parser(prog="meshtron")
        sub = parser.add_subparsers(dest="command")
        module = importlib.import_module(COMMANDS[name][0])
        p = sub.add_parser(name, description=COMMANDS[name][1])
        _add_common_options(p)
        module.add_arguments(p)
        args = parser.parse_args(argv)
        from meshtron.parallel.distributed import initialize

        initialize(args.coordinator, args.num_processes, args.process_id)
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("meshtron: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # user-fixable errors are one line; anything else is a bug and keeps its traceback
        if isinstance(e, UserError):
            print(f"meshtron: error: {e}", file=sys.stderr)  # UserError's text is one line
            return 2
        _peer_failure(e)
        raise


def _peer_failure(error: Exception) -> None:
    """A collective of a multi-process job that failed because a peer died ends in one line (parallel/peers.py)."""
    if "jax" not in sys.modules:
        return
    import jax

    from meshtron.parallel.peers import exit_peer_lost, is_peer_failure

    if jax.process_count() > 1 and is_peer_failure(error):
        exit_peer_lost(jax.process_index(), jax.process_count(),
                       f"a collective failed ({one_line(str(error).strip().splitlines()[0])[:160]})")


if __name__ == "__main__":
    sys.exit(main())
