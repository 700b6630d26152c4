"""SLURM glue for ``slurm/*.sbatch``: the logic the batch scripts need, kept here so it is tested.

    python -m mst5_dist.slurm hosts [NODELIST]        expand a Slurm hostlist (default $SLURM_JOB_NODELIST)
    python -m mst5_dist.slurm main-addr               address of the allocation's first node (rank-0 host)
    python -m mst5_dist.slurm main-port               rendezvous port for this job
    python -m mst5_dist.slurm supervise [--dry-run] -- CMD ...
        run CMD (an ``accelerate launch ... -m mst5_dist.train ...`` line); on SIGUSR1 / SIGTERM /
        SIGINT send SIGUSR1 to the training WORKERS (never to the launcher agent, which dies of
        SIGUSR1 and takes the workers with it); exit with CMD's status
    python -m mst5_dist.slurm resumable -- --config FILE [k=v ...]
        exit 0 if OUTPUT_DIR can be resumed with ``--resume latest`` without losing or repeating
        a step (the newest complete checkpoint is the last logged step), 1 otherwise

Only the standard library and psutil (an Accelerate dependency) are imported: these commands run
inside signal traps, where a 4-second ``import torch`` would eat into the grace time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from mst5_dist.commands import Parser, positive_float
from mst5_dist.files import read_jsonl
from mst5_dist.layout import FINAL_DIR, TRAIN_LOG, checkpoint_dirs, checkpoint_step

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


def log(msg: str) -> None:
    print(f"[mst5.slurm {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ hostlists


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets: ``a[1-2,4],b`` -> ``a[1-2,4]``, ``b``."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in hostlist {text!r}")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise ValueError(f"unbalanced '[' in hostlist {text!r}")
    parts.append(cur)
    return [p for p in parts if p]


def _expand_ranges(spec: str) -> list[str]:
    """``01-03,7`` -> ``01 02 03 7`` (zero padding kept, as Slurm does)."""
    out = []
    for item in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if not m:
            raise ValueError(f"bad range {item!r} in hostlist")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise ValueError(f"bad range {item!r} in hostlist")
        width = len(lo) if lo.startswith("0") else 0
        out += [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    return out


def expand_hostlist(text: str) -> list[str]:
    """Expand a Slurm hostlist (``gpu[01-03,07],cpu1``, ``r[1-2]-n[1-2]``) in Slurm's order."""
    hosts: list[str] = []
    for part in _split_top_level(text.strip()):
        m = re.search(r"\[([^\]]*)\]", part)
        if not m:
            hosts.append(part)
            continue
        head, tail = part[: m.start()], part[m.end() :]
        for value in _expand_ranges(m.group(1)):
            hosts += expand_hostlist(head + value + tail)
    return hosts


def node_address(host: str) -> str:
    """The address Slurm itself uses for ``host`` (NodeAddr; equal to the name on most clusters).

    Falls back to the name when ``scontrol`` is absent or does not know the node.
    """
    try:
        out = subprocess.run(
            ["scontrol", "show", "node", "-o", host], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return host
    m = re.search(r"\bNodeAddr=(\S+)", out)
    return m.group(1) if m else host


def main_address(env: dict[str, str] | None = None) -> str:
    """``MASTER_ADDR`` if set, else the address of the first node of ``SLURM_JOB_NODELIST``."""
    env = os.environ if env is None else env
    if env.get("MASTER_ADDR"):
        return env["MASTER_ADDR"]
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise SystemExit("mst5.slurm: neither MASTER_ADDR nor SLURM_JOB_NODELIST is set")
    return node_address(expand_hostlist(nodelist)[0])


def main_port(env: dict[str, str] | None = None) -> int:
    """``MASTER_PORT`` if set, else 20000 + job id mod 20000: two jobs sharing a node do not collide,
    and a requeued job (same id) gets the same port."""
    env = os.environ if env is None else env
    if env.get("MASTER_PORT"):
        return int(env["MASTER_PORT"])
    return 20000 + int(env.get("SLURM_JOB_ID", "9500")) % 20000


# ------------------------------------------------------------------------------------ supervise


def catches(pid: int, sig: int) -> bool:
    """True once process ``pid`` has a handler installed for ``sig`` (``SigCgt`` in /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError):
        pass
    return False


def ready_workers(root_pid: int) -> list[int]:
    """Training processes under ``root_pid`` (itself included) whose SIGUSR1 handler is installed.

    The trainer installs it just before its first step; an ``accelerate launch`` / torchrun agent
    never does (SIGUSR1 would kill it), so it is never selected.
    """
    import psutil

    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    out = []
    for p in procs:
        try:
            if "mst5_dist" in " ".join(p.cmdline()) and catches(p.pid, signal.SIGUSR1):
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


def _ignore_usr1() -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def supervise(cmd: list[str], ready_timeout: float = 600.0, poll: float = 0.2) -> int:
    """Run ``cmd``; forward stop signals to its ready workers as SIGUSR1; return its exit status.

    One worker is enough (the trainer stops all ranks when any rank got a signal), but every
    ready worker on this node gets it. Workers still loading (no handler yet) are waited for; if
    none is ready ``ready_timeout`` seconds after the signal, the launcher is sent SIGTERM (there
    is no step to save yet: the job ends and resumes from its last checkpoint).
    """
    pending: list[float] = []  # time of the first undelivered stop signal

    def handle(signum, frame) -> None:
        log(f"got {signal.Signals(signum).name}; asking the trainer to checkpoint")
        if not pending:
            pending.append(time.monotonic())

    for sig in STOP_SIGNALS:
        signal.signal(sig, handle)
    # The launcher starts with SIGUSR1 ignored (inherited through exec): srun and `scancel --signal`
    # deliver a signal to EVERY process of a step, and an agent killed by SIGUSR1 takes its workers
    # down mid-checkpoint. The trainer installs its own handler, which replaces the inherited SIG_IGN.
    proc = subprocess.Popen(cmd, preexec_fn=_ignore_usr1)
    terminated = False
    while True:
        try:
            rc = proc.wait(timeout=poll)
            break
        except subprocess.TimeoutExpired:
            pass
        if pending:
            workers = ready_workers(proc.pid)
            if workers:
                for pid in workers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGUSR1)
                log(f"sent SIGUSR1 to worker(s) {workers}")
                pending.clear()
            elif not terminated and time.monotonic() - pending[0] > ready_timeout:
                log(f"no worker ready {ready_timeout:.0f} s after the signal: stopping the launcher")
                proc.terminate()
                terminated = True
    return 128 - rc if rc < 0 else rc


# ------------------------------------------------------------------------------------ resumable


def _train_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mst5.slurm resumable", add_help=False)
    p.add_argument("--config", required=True)
    p.add_argument("--resume", default=None)
    p.add_argument("overrides", nargs="*")
    return p.parse_args(argv)


def checkpoint_steps(output_dir: Path) -> list[int]:
    """Steps of the complete checkpoints, by the trainer's own rule (``layout.checkpoint_dirs``)."""
    return [checkpoint_step(p) for p in checkpoint_dirs(output_dir)]


def logged_steps(output_dir: Path) -> list[int]:
    path = output_dir / TRAIN_LOG
    # A line cut by a kill is skipped by read_jsonl, as the trainer's readers do.
    return [int(r["step"]) for r in read_jsonl(path) if isinstance(r.get("step"), int)] if path.is_file() else []


def resume_state(output_dir: Path, log_every: int = 1) -> tuple[bool, str]:
    """Can ``--resume latest`` continue ``output_dir`` with no step lost or repeated?"""
    if (output_dir / FINAL_DIR).is_dir():
        return False, f"{output_dir}/final exists: the run is complete"
    ckpts, steps = checkpoint_steps(output_dir), logged_steps(output_dir)
    ckpt, last = (ckpts[-1] if ckpts else 0), (steps[-1] if steps else 0)
    if ckpt >= last and ckpt - last < max(log_every, 1):
        return True, f"checkpoint at step {ckpt}, last logged step {last}"
    return False, f"newest complete checkpoint is step {ckpt} but step {last} was logged"


def resumable(argv: list[str]) -> int:
    from mst5_dist.config import ConfigError, load_config

    args = _train_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        log(f"resumable: {e}")
        return 2
    ok, why = resume_state(Path(cfg.train.output_dir), cfg.train.log_every)
    log(f"{'resumable' if ok else 'not resumable'}: {why}")
    return 0 if ok else 1


# ------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m mst5_dist.slurm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("hosts", help="expand a hostlist, one host per line")
    p.add_argument("nodelist", nargs="?", default=None)
    sub.add_parser("main-addr", help="address of the first node of the allocation")
    sub.add_parser("main-port", help="rendezvous port of this job")
    p = sub.add_parser("supervise", help="run a launch line, forwarding stop signals to its workers")
    p.add_argument("--dry-run", action="store_true", help="print the command (as this node expands it) and exit 0")
    p.add_argument("--ready-timeout", type=positive_float, default=600.0)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p = sub.add_parser("resumable", help="exit 0 if the run's output dir resumes without losing a step")
    p.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.command == "hosts":
        nodelist = args.nodelist or os.environ.get("SLURM_JOB_NODELIST", "")
        print("\n".join(expand_hostlist(nodelist)))
        return 0
    if args.command == "main-addr":
        print(main_address())
        return 0
    if args.command == "main-port":
        print(main_port())
        return 0
    rest = args.cmd if args.command == "supervise" else args.train_args
    if rest and rest[0] == "--":
        rest = rest[1:]
    if args.command == "resumable":
        return resumable(rest)
    if not rest:
        parser.error("supervise: no command given")
    if args.dry_run:
        node = os.environ.get("SLURMD_NODENAME", os.uname().nodename)
        print(f"[{node}] {shlex.join(rest)}", flush=True)
        return 0
    return supervise(rest, ready_timeout=args.ready_timeout)


if __name__ == "__main__":
    sys.exit(main())
