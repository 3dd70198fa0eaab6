"""What the launch scripts share: the `--` that separates their own flags from the trainer's,
and running (or, with --dry_run, printing) a list of commands."""

import shlex
import subprocess
import sys

TRAIN_MODULE = "phenaki_jax.train"

# XLA flags commonly set for multi-GPU training: overlap collectives with compute.
GPU_XLA_FLAGS = (
  "--xla_gpu_enable_latency_hiding_scheduler=true",
  "--xla_gpu_enable_highest_priority_async_stream=true",
)


def split_train_args(argv: list[str]) -> tuple[list[str], list[str]]:
  """(the script's own arguments, the arguments after the first `--`)."""
  if "--" in argv:
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]
  return argv, []


def check_train_args(parser, train_args: list[str]) -> None:
  """Exits with a message unless the trainer's arguments name a config."""
  if not train_args:
    parser.error("give the training arguments after `--`, e.g. -- --config=configs/cvivit_b.py")
  if not any(a == "--config" or a.startswith("--config=") for a in train_args):
    parser.error(f"the training arguments after `--` need --config=...; got {train_args}")


def gpu_xla_flags(extra: str = "") -> str:
  """The GPU XLA flags, then `extra` (flags given later win)."""
  return " ".join([*GPU_XLA_FLAGS, *extra.split()])


def run(command: list[str], dry_run: bool) -> None:
  """Prints the command (shell-quoted, one line); runs it with check=True unless dry_run."""
  print(shlex.join(command), flush=True)
  if not dry_run:
    subprocess.run(command, check=True)


def fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)
