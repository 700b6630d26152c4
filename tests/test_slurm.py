"""slurm/*.sbatch against a real local SLURM 22.05 cluster (../shared/tools/slurm-local).

One single-node cluster (this host, 2 CPUs; start-cluster.sh) and one two-"node" cluster (two
slurmd on this host, 1 CPU each) are started for the session and stopped at the end. All jobs are
submitted at once by the ``jobs`` fixture so that they overlap (startup dominates on 2 cores);
watcher threads send ``scancel --signal=USR1 --batch`` once a run has logged a few steps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, read_log
from safetensors.torch import load_file

from mst5_dist import slurm

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(480)]

TOOLS = Path(os.environ.get("MST5_SLURM_TOOLS", REPO.parent / "shared" / "tools" / "slurm-local"))
LOCAL_DIR = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/slurm-local"))
SCRIPTS = sorted((REPO / "slurm").glob("*.sbatch")) + sorted((REPO / "slurm").glob("*.sh"))
STEPS = 40  # per training run; a USR1 lands after step 3
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
JOB_DEADLINE = 420  # seconds from submission; every wait below is bounded


# ------------------------------------------------------------------ clusters


def _up(conf: Path) -> bool:
    r = subprocess.run(
        ["scontrol", "ping"], env={**os.environ, "SLURM_CONF": str(conf)}, capture_output=True, text=True
    )
    return "is UP" in r.stdout


@pytest.fixture(scope="session")
def cluster():
    """The single-node cluster; stopped at the end only if this session started it."""
    start = TOOLS / "start-cluster.sh"
    assert start.is_file(), f"{start} not found (set MST5_SLURM_TOOLS)"
    conf = LOCAL_DIR / "etc" / "slurm.conf"
    was_up = shutil.which("scontrol") is not None and conf.is_file() and _up(conf)
    env = {**os.environ, "SLURM_LOCAL_DIR": str(LOCAL_DIR), "LINK_ETC": "0"}
    r = subprocess.run(["bash", str(start)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    yield conf
    if not was_up:
        subprocess.run(["bash", str(TOOLS / "stop-cluster.sh")], env=env, capture_output=True, timeout=180)


TWO_NODE_CONF = """\
ClusterName=multi
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=600
MailProg=/bin/true
SlurmctldPort=6827
StateSaveLocation={d}/state/ctld
SlurmdSpoolDir={d}/state/%n
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
NodeName=n1 NodeHostname={host} NodeAddr=127.0.0.1 Port=6831 CPUs=1 RealMemory=1000
NodeName=n2 NodeHostname={host} NodeAddr=127.0.0.1 Port=6832 CPUs=1 RealMemory=1000
PartitionName=multi Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="session")
def two_node_cluster(cluster):
    """Two slurmd "nodes" n1, n2 on this host (STACK-FACTS), with their own slurmctld on port 6827.
    Needs the packages and munged that ``cluster`` set up."""
    d = LOCAL_DIR / "multi"
    for sub in ("etc", "state/ctld", "log", "run"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    conf = d / "etc" / "slurm.conf"
    conf.write_text(TWO_NODE_CONF.format(host=socket.gethostname().split(".")[0], d=d))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    was_up = _up(conf)
    if not was_up:
        subprocess.run(["slurmctld", "-f", str(conf), "-c"], env=env, check=True, timeout=60)
        _wait(lambda: _up(conf), 30, "two-node slurmctld")
    for node in ("n1", "n2"):
        if _pid(d / "run" / f"slurmd-{node}.pid") is None:
            subprocess.run(["slurmd", "-f", str(conf), "-N", node], env=env, check=True, timeout=60)

    def idle() -> bool:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=env, capture_output=True, text=True).stdout
        return len(re.findall(r"\b(idle|mixed|allocated)\b", out)) == 2

    _wait(idle, 60, "two-node cluster idle")
    yield conf
    if not was_up:
        pids = [_pid(d / "run" / n) for n in ("slurmctld.pid", "slurmd-n1.pid", "slurmd-n2.pid")]
        subprocess.run(["scancel", "--partition=multi"], env=env, capture_output=True, timeout=30)
        subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True, timeout=30)
        for pid in filter(None, pids):
            deadline = time.time() + 20
            while time.time() < deadline and _alive(pid):
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _wait(cond, timeout: float, what: str, every: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ------------------------------------------------------------------ jobs


class Job:
    def __init__(self, conf: Path, script: str, args: list[str], sbatch_opts: list[str], env: dict, out: Path):
        self.conf, self.out = conf, out
        self.env = {**os.environ, **env, "SLURM_CONF": str(conf)}
        # the job runs `python` and `accelerate` from this interpreter's environment
        self.env["PATH"] = f"{Path(sys.executable).parent}:{self.env.get('PATH', '')}"
        cmd = ["sbatch", "--parsable", f"--output={out}", *sbatch_opts, f"slurm/{script}", *args]
        r = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        self.id = r.stdout.strip().split(";")[0]
        self.submitted = time.time()
        self.signalled_at: float | None = None
        self.restarted_at: float | None = None
        self.error: str | None = None

    def tasks(self) -> list[dict[str, str]]:
        """scontrol's record of the job (one per array task)."""
        r = subprocess.run(
            ["scontrol", "show", "job", "-o", self.id], env=self.env, capture_output=True, text=True, timeout=30
        )
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in r.stdout.splitlines() if "JobState=" in line]

    def info(self) -> dict[str, str]:
        tasks = self.tasks()
        return tasks[-1] if tasks else {}

    def log(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def wait(self, restarts: int = 0) -> dict[str, str]:
        """Until the job is done (after ``restarts`` requeues); its final scontrol record."""
        left = JOB_DEADLINE - (time.time() - self.submitted)

        def done():
            tasks = self.tasks()
            ok = tasks and all(i["JobState"] in TERMINAL and int(i.get("Restarts", 0)) >= restarts for i in tasks)
            return tasks[-1] if ok else None

        try:
            return _wait(done, max(left, 1), f"job {self.id}", every=0.5)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.info()}\n--- job output ---\n{self.log()[-4000:]}") from None

    def cancel(self) -> None:
        subprocess.run(["scancel", self.id], env=self.env, capture_output=True, timeout=30)

    def interrupt_after(self, log_file: Path, steps: int) -> threading.Thread:
        """Background: once ``log_file`` has ``steps`` lines, USR1 the batch shell; note when the
        requeued job starts again (its first output line with ``restart 1``)."""

        def run():
            try:
                _wait(
                    lambda: log_file.exists() and len(log_file.read_text().splitlines()) >= steps, JOB_DEADLINE, "steps"
                )
                subprocess.run(["scancel", "--signal=USR1", "--batch", self.id], env=self.env, check=True, timeout=30)
                self.signalled_at = time.time()
                _wait(lambda: " restart 1]" in self.log(), JOB_DEADLINE, "the requeued job", every=0.1)
                self.restarted_at = time.time()
            except Exception as e:  # reported by the test
                self.error = f"{type(e).__name__}: {e}"

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t


def _train_args(base: Path, out: Path) -> list[str]:
    return [
        "--config",
        "configs/tiny.yaml",
        f"model.name_or_path={base}",
        f"train.output_dir={out}",
        "model.dropout=0.0",
        "train.progress_bar=false",
        "train.report_to=[]",
        "train.epochs=40",
        f"train.max_steps={STEPS}",
    ]


CPU_ONE_NODE = ["--gpus-per-node=0", "--cpus-per-task=1"]
CPU_DDP = {
    "MST5_PROCS_PER_NODE": "2",
    "ACCELERATE_CONFIG": "ds_configs/accelerate_cpu_ddp.yaml",
    "ACCELERATE_USE_CPU": "true",
}


@pytest.fixture(scope="module")
def jobs(cluster, two_node_cluster, tiny_base, tmp_path_factory):
    """Submit every job at once (short dry runs first, so they do not queue behind training)."""
    tmp = tmp_path_factory.mktemp("slurm")
    j: dict[str, Job] = {}
    try:
        dry = {"MST5_DRY_RUN": "1", "SWEEP_DIR": str(tmp / "sweep")}
        j["sweep_lr"] = Job(
            cluster, "sweep_lr.sbatch", _train_args(tiny_base, tmp / "x"), CPU_ONE_NODE, dry, tmp / "lr-%a.out"
        )
        j["sweep_size"] = Job(cluster, "sweep_size.sbatch", [], CPU_ONE_NODE, dry, tmp / "size-%a.out")
        j["multi_dry"] = Job(
            two_node_cluster,
            "train_multinode.sbatch",
            [*_train_args(tiny_base, tmp / "multi dry"), "optim.lr=1e-3"],
            ["--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1"],
            {"MST5_PROCS_PER_NODE": "1", "MST5_DRY_RUN": "1"},
            tmp / "multi-dry.out",
        )
        # each single-node job takes 1 of the 2 CPUs so both run together (2 processes each)
        j["reference"] = Job(
            cluster, "train.sbatch", _train_args(tiny_base, tmp / "ref"), CPU_ONE_NODE, CPU_DDP, tmp / "ref.out"
        )
        j["preempted"] = Job(
            cluster, "train.sbatch", _train_args(tiny_base, tmp / "pre"), CPU_ONE_NODE, CPU_DDP, tmp / "pre.out"
        )
        # the shipped multinode launch config (DeepSpeed ZeRO-2, launcher `standard`), 1 CPU process per node
        j["multi"] = Job(
            two_node_cluster,
            "train_multinode.sbatch",
            _train_args(tiny_base, tmp / "multi"),
            ["--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1"],
            {"MST5_PROCS_PER_NODE": "1"},
            tmp / "multi.out",
        )
        watchers = {
            "preempted": j["preempted"].interrupt_after(tmp / "pre" / "train_log.jsonl", 3),
            "multi": j["multi"].interrupt_after(tmp / "multi" / "train_log.jsonl", 3),
        }
        yield {"tmp": tmp, "jobs": j, "watchers": watchers}
    finally:
        for job in j.values():
            job.cancel()


def _steps(run: Path) -> list[int]:
    return [r["step"] for r in read_log(run)]


def _assert_completed(job: Job, restarts: int) -> dict:
    info = job.wait(restarts)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{job.log()[-4000:]}"
    assert int(info["Restarts"]) == restarts, info
    return info


# ------------------------------------------------------------------ tests


def test_shellcheck_passes_on_every_script():
    exe = shutil.which("shellcheck")
    assert exe, "shellcheck not installed (apt-get install -y shellcheck)"
    assert len(SCRIPTS) >= 5
    r = subprocess.run([exe, "-x", *map(str, SCRIPTS)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hostlist_expansion_matches_scontrol(cluster):
    env = {**os.environ, "SLURM_CONF": str(cluster)}
    for nodelist in [
        "n1",
        "n[1-2]",
        "gpu[01-03,07],cpu1",
        "r[1-2]-n[08-10]",
        "x[1,3-4]y[2-3]",
        "a[9-11],c",
        "a[009-011]",
    ]:
        r = subprocess.run(["scontrol", "show", "hostnames", nodelist], env=env, capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.strip(), r.stderr
        assert slurm.expand_hostlist(nodelist) == r.stdout.split(), nodelist


@pytest.mark.unit
def test_checkpoint_rule_matches_the_trainer(tmp_path):
    from mst5_dist import layout

    ck = tmp_path / "checkpoints"
    for name, complete in [
        ("step-00000010", True),
        ("step-00000020", True),
        ("step-00000030.tmp", True),
        ("step-00000040", False),
    ]:
        (ck / name).mkdir(parents=True)
        if complete:
            (ck / name / "trainer_state.json").write_text("{}")
    assert slurm.checkpoint_steps(tmp_path) == [int(p.name.split("-")[1]) for p in layout.checkpoint_dirs(tmp_path)]
    assert slurm.checkpoint_steps(tmp_path) == [10, 20]
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 21)))
    assert slurm.resume_state(tmp_path)[0]  # checkpoint 20, last step 20
    log.write_text(log.read_text() + json.dumps({"step": 21}) + "\n")
    assert not slurm.resume_state(tmp_path)[0]  # step 21 would run twice
    assert slurm.resume_state(tmp_path, log_every=5)[0] is False
    (tmp_path / "final").mkdir()
    assert not slurm.resume_state(tmp_path)[0]  # done: nothing to resume


def test_main_address_is_the_first_nodes_slurm_address(two_node_cluster, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(two_node_cluster))
    assert slurm.main_address({"SLURM_JOB_NODELIST": "n[1-2]"}) == "127.0.0.1"  # NodeAddr of n1
    assert slurm.main_address({"SLURM_JOB_NODELIST": "n[1-2]", "MASTER_ADDR": "10.0.0.5"}) == "10.0.0.5"
    assert slurm.main_port({"SLURM_JOB_ID": "123"}) == 20123
    assert slurm.main_port({"SLURM_JOB_ID": "20124"}) == 20124  # 20000 + id mod 20000: another job, another port
    assert slurm.main_port({"SLURM_JOB_ID": "123", "MASTER_PORT": "29999"}) == 29999


def test_supervisor_holds_an_early_signal_until_the_trainer_can_checkpoint(tiny_base, tmp_path):
    """USR1 while the trainer is still loading (no handler yet) is delivered once it has one:
    a checkpoint is written and the trainer exits 75 instead of dying of the signal."""
    out = tmp_path / "run"
    args = [a for a in _train_args(tiny_base, out) if not a.startswith("train.max_steps")] + ["train.max_steps=400"]
    cmd = [sys.executable, "-m", "mst5_dist.slurm", "supervise", "--", sys.executable, "-m", "mst5_dist.train", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # the supervisor's handlers are installed; the trainer is importing torch
    assert not (out / "train_log.jsonl").exists()
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 75, err[-3000:]
    steps = _steps(out)
    assert 1 <= len(steps) < 400 and steps == list(range(1, len(steps) + 1))
    assert slurm.checkpoint_steps(out) == [steps[-1]]


def test_sweep_arrays_give_each_task_its_own_lr_and_output_dir(jobs):
    tmp, j = jobs["tmp"], jobs["jobs"]
    for name in ("sweep_lr", "sweep_size"):
        j[name].wait()
        states = {(i["ArrayTaskId"], i["JobState"], i["ExitCode"]) for i in j[name].tasks()}
        assert {s[1:] for s in states} == {("COMPLETED", "0:0")}, states
    lines = {}
    for i, lr in enumerate(["1e-5", "5e-5", "1e-4", "5e-4"]):
        text = (tmp / f"lr-{i}.out").read_text()
        launch = [ln for ln in text.splitlines() if "accelerate launch" in ln]
        assert len(launch) == 1, text
        assert f"optim.lr={lr} train.output_dir={tmp / 'sweep'}/lr{lr} --resume latest" in launch[0]
        lines[lr] = launch[0]
    assert len(set(lines.values())) == 4
    for i, size in enumerate(["small", "base", "large", "xl", "xxl"]):
        text = (tmp / f"size-{i}.out").read_text()
        assert f"--config configs/mt5-{size}-xnli.yaml train.output_dir={tmp / 'sweep'}/mt5-{size}-xnli" in text, text
        assert (REPO / "configs" / f"mt5-{size}-xnli.yaml").is_file()


def test_multinode_launch_lines_for_two_nodes(jobs):
    """Each node expands its own machine rank; everything else is the same on both nodes."""
    job = jobs["jobs"]["multi_dry"]
    _assert_completed(job, 0)
    lines = dict(re.findall(r"^\[(n[12])\] (accelerate launch .*)$", job.log(), re.M))
    assert sorted(lines) == ["n1", "n2"], job.log()
    for node, rank in (("n1", "0"), ("n2", "1")):
        line = lines[node]
        assert f"--machine_rank {rank} " in line
        assert "--num_machines 2 " in line and "--num_processes 2 " in line
        assert "--main_process_ip 127.0.0.1 " in line
        assert "--deepspeed_multinode_launcher standard " in line
        assert "--config_file ds_configs/accelerate_multinode_zero2.yaml " in line
        assert line.endswith("optim.lr=1e-3 --resume latest")
        assert "'train.output_dir=" in line  # a path with a space stays one argument
    ports = {re.search(r"--main_process_port (\d+)", v).group(1) for v in lines.values()}
    assert len(ports) == 1
    assert lines["n1"].replace("--machine_rank 0", "--machine_rank 1") == lines["n2"]


def test_single_node_job_completes_with_final_model(jobs):
    job = jobs["jobs"]["reference"]
    _assert_completed(job, 0)
    run = jobs["tmp"] / "ref"
    assert (run / "final" / "adapter_model.safetensors").is_file()
    assert _steps(run) == list(range(1, STEPS + 1))
    assert json.loads((run / "train_log.jsonl").read_text().splitlines()[0])["world_size"] == 2


def test_usr1_requeues_resumes_and_matches_the_uninterrupted_run(jobs):
    job = jobs["jobs"]["preempted"]
    _assert_completed(job, 1)
    jobs["watchers"]["preempted"].join(timeout=60)
    assert job.error is None, job.error
    run, ref = jobs["tmp"] / "pre", jobs["tmp"] / "ref"
    log = job.log()
    assert "batch shell got SIGUSR1" in log and "scontrol requeue" in log, log[-4000:]
    m = re.search(r"resumed from \S+step-(\d+) at step (\d+)", log)
    assert m, log[-4000:]
    assert 3 <= int(m.group(2)) < STEPS
    assert _steps(run) == list(range(1, STEPS + 1))  # every step exactly once
    _assert_completed(jobs["jobs"]["reference"], 0)
    a = load_file(run / "final" / "adapter_model.safetensors")
    b = load_file(ref / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert (a[k] - b[k]).abs().max().item() <= 1e-6, k
    print(
        f"\nsingle node: USR1 -> requeued job running again in {job.restarted_at - job.signalled_at:.1f} s "
        f"(stopped at step {m.group(2)})"
    )


def test_two_node_job_survives_usr1_through_srun(jobs):
    """Real 2-"node" DeepSpeed ZeRO-2 job: srun forwards the batch shell's USR1 to every node's
    supervisor (and to every process of the step: the accelerate agents must survive it)."""
    job = jobs["jobs"]["multi"]
    _assert_completed(job, 1)
    jobs["watchers"]["multi"].join(timeout=60)
    assert job.error is None, job.error
    run, log = jobs["tmp"] / "multi", job.log()
    assert len(re.findall(r"resumed from \S+ at step \d+", log)) == 2, log[-4000:]  # one per rank
    assert "exitcode  : 75" in log or "exitcode: 75" in log, log[-4000:]  # workers stopped cleanly
    assert _steps(run) == list(range(1, STEPS + 1))
    assert json.loads((run / "train_log.jsonl").read_text().splitlines()[0])["world_size"] == 2
    assert (run / "final" / "adapter_model.safetensors").is_file()
    print(f"\ntwo nodes: USR1 -> requeued job running again in {job.restarted_at - job.signalled_at:.1f} s")
