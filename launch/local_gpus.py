r"""Train on the GPUs of one host: one process that sees all of them (or --gpus).

  python launch/local_gpus.py -- --config=configs/cvivit_b.py --workdir=workdirs/cvivit_b

Runs `env XLA_FLAGS=... python -m phenaki_jax.train ARGS` with the XLA flags commonly used for
multi-GPU training (the latency-hiding scheduler overlaps collectives with compute), then any
XLA_FLAGS already set, then --xla_flags (later flags win); --gpus=0,1,2,3 sets CUDA_VISIBLE_DEVICES. The
mesh over the local devices comes from `config.mesh`. --dry_run prints the command only.
"""

import argparse
import os
import re
import sys

import common


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  own, train_args = common.split_train_args(argv)
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n")[0], usage="%(prog)s [options] -- --config=... [...]"
  )
  parser.add_argument("--gpus", help="Comma-separated GPU indices (CUDA_VISIBLE_DEVICES).")
  parser.add_argument("--python", default=sys.executable, help="Interpreter (default: this one).")
  parser.add_argument("--xla_flags", default="", help="Extra XLA_FLAGS, after the defaults.")
  parser.add_argument("--dry_run", action="store_true", help="Print the command; run nothing.")
  args = parser.parse_args(own)
  if args.gpus is not None and not re.match(r"^[0-9]+(,[0-9]+)*$", args.gpus):
    parser.error(f"--gpus={args.gpus!r} is not a comma-separated list of indices, e.g. 0,1,2,3")
  common.check_train_args(parser, train_args)
  return args, train_args


def command(args: argparse.Namespace, train_args: list[str]) -> list[str]:
  xla_flags = common.gpu_xla_flags(f"{os.environ.get('XLA_FLAGS', '')} {args.xla_flags}")
  env = [f"XLA_FLAGS={xla_flags}"]
  if args.gpus is not None:
    env.append(f"CUDA_VISIBLE_DEVICES={args.gpus}")
  return ["env", *env, args.python, "-m", common.TRAIN_MODULE, *train_args]


def main(argv: list[str]) -> None:
  args, train_args = parse_args(argv)
  common.run(command(args, train_args), args.dry_run)


if __name__ == "__main__":
  main(sys.argv[1:])
