r"""Multi-node GPU training under SLURM: write a batch script and (with --submit) sbatch it.

  python launch/slurm.py --nodes=4 --partition=gpu --time=48:00:00 --venv=$PWD/.venv \
      --job_name=maskgit_b --submit -- --config=configs/maskgit_b.py:paper --workdir=/ckpt/maskgit_b

The script runs `srun python -m phenaki_jax.train ARGS` on every node, one process per host
(each sees all its GPUs; the default) or one per GPU (--one_process_per=gpu: srun
--gpus-per-task=1 gives each its own GPU through CUDA_VISIBLE_DEVICES). The coordinator is the
first node of $SLURM_JOB_NODELIST (`scontrol show hostnames`) at --port, exported as
JAX_COORDINATOR_ADDRESS. `jax.distributed.initialize()` with no arguments detects SLURM and
takes the process count and index from SLURM_NTASKS and SLURM_PROCID; it would also pin each
process to GPU number SLURM_LOCALID, so the script sets JAX_LOCAL_DEVICE_IDS to the GPUs each
process should use (all of them per host; the single visible one per GPU).

--dry_run prints the script and the sbatch command and writes nothing; without --submit the
script is written (--script, default `<job_name>.sbatch`) and the sbatch command printed.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys

import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME = re.compile(r"^([0-9]+-)?[0-9]+(:[0-9]{1,2}){0,2}$")  # minutes, H:M:S, D-H:M:S ...


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  own, train_args = common.split_train_args(argv)
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n")[0],
    usage="%(prog)s --nodes=N --partition=P --time=T --venv=PATH [options] -- --config=...",
  )
  parser.add_argument("--nodes", type=int, required=True)
  parser.add_argument("--gpus_per_node", type=int, default=8)
  parser.add_argument("--partition", required=True)
  parser.add_argument("--time", required=True, help="Time limit, e.g. 48:00:00 or 2-00:00:00.")
  parser.add_argument("--account", help="SLURM account to charge.")
  parser.add_argument("--venv", required=True, help="Virtual environment with the package.")
  parser.add_argument("--job_name", default="phenaki")
  parser.add_argument("--one_process_per", choices=("host", "gpu"), default="host")
  parser.add_argument("--port", type=int, default=12321, help="Coordinator port on node 0.")
  parser.add_argument("--repo_dir", default=REPO, help="Checkout the job runs in.")
  parser.add_argument("--xla_flags", default="", help="Extra XLA_FLAGS after the GPU defaults.")
  parser.add_argument("--script", help="Where to write the script (default <job_name>.sbatch).")
  parser.add_argument("--submit", action="store_true", help="Run sbatch on the script.")
  parser.add_argument("--dry_run", action="store_true", help="Print the script and sbatch.")
  args = parser.parse_args(own)
  if args.nodes < 1:
    parser.error(f"--nodes must be at least 1; got {args.nodes}")
  if args.gpus_per_node < 1:
    parser.error(f"--gpus_per_node must be at least 1; got {args.gpus_per_node}")
  if not 1 <= args.port <= 65535:
    parser.error(f"--port must be in 1..65535; got {args.port}")
  if not TIME.match(args.time):
    parser.error(f"--time={args.time!r} is not a SLURM time (e.g. 48:00:00 or 2-00:00:00)")
  if not re.match(r"^[A-Za-z0-9_.-]+$", args.job_name):
    parser.error(f"--job_name={args.job_name!r}: use letters, digits, '_', '.', '-'")
  common.check_train_args(parser, train_args)
  return args, train_args


def batch_script(args: argparse.Namespace, train_args: list[str]) -> str:
  per_gpu = args.one_process_per == "gpu"
  tasks_per_node = args.gpus_per_node if per_gpu else 1
  local_devices = "0" if per_gpu else ",".join(str(i) for i in range(args.gpus_per_node))
  sbatch = {
    "job-name": args.job_name,
    "nodes": args.nodes,
    "gpus-per-node": args.gpus_per_node,
    "ntasks-per-node": tasks_per_node,
    "partition": args.partition,
    "time": args.time,
    **({"account": args.account} if args.account else {}),
    "output": "%x-%j.out",
  }
  srun = ["srun", "--kill-on-bad-exit=1", *(["--gpus-per-task=1"] if per_gpu else [])]
  python = os.path.join(args.venv, "bin", "python")
  train = shlex.join([*srun, python, "-m", common.TRAIN_MODULE, *train_args])
  lines = [
    "#!/bin/bash",
    *(f"#SBATCH --{k}={v}" for k, v in sbatch.items()),
    "#SBATCH --exclusive",
    "set -euo pipefail",
    "",
    f"# {args.nodes} node(s) x {args.gpus_per_node} GPUs, one process per {args.one_process_per}.",
    "# jax.distributed.initialize() detects SLURM: process count and index from SLURM_NTASKS and",
    "# SLURM_PROCID, the coordinator from JAX_COORDINATOR_ADDRESS, the GPUs from",
    "# JAX_LOCAL_DEVICE_IDS (without it, each process would get GPU number SLURM_LOCALID only).",
    'head_node="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
    f'export JAX_COORDINATOR_ADDRESS="${{head_node}}:{args.port}"',
    f"export JAX_LOCAL_DEVICE_IDS={local_devices}",
    f"export XLA_FLAGS={shlex.quote(common.gpu_xla_flags(args.xla_flags))}",
    "",
    f"cd {shlex.quote(os.path.abspath(args.repo_dir))}",
    'echo "coordinator $JAX_COORDINATOR_ADDRESS; $SLURM_NTASKS processes on $SLURM_JOB_NODELIST"',
    train,
    "",
  ]
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  args, train_args = parse_args(argv)
  script = batch_script(args, train_args)
  path = args.script or f"{args.job_name}.sbatch"
  command = ["sbatch", path]
  if args.dry_run:
    print(script, end="")
    print(shlex.join(command))
    return
  with open(path, "w") as f:
    f.write(script)
  print(f"# wrote {path}", file=sys.stderr)
  print(shlex.join(command), flush=True)
  if args.submit:
    subprocess.run(command, check=True)


if __name__ == "__main__":
  main(sys.argv[1:])
