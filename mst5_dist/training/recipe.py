"""The m-ST5 training recipe, read top to bottom::

    train(cfg) = setup -> resume -> loop -> save -> cleanup

One process, one GPU, DDP or DeepSpeed ZeRO: the same code. The process group belongs to the entry
point that launched the run (``distributed.process_group``); ``train`` neither creates nor destroys
it, so ``train-modular`` runs several of them in one process. Cross-rank negatives come from the
objective's loss through ``distributed.Gather``; the sampler gives every rank an equal slice of a
global batch; checkpoints are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mst5_dist import distributed, objectives
from mst5_dist.config import Config, check_embedding_dim, flat_config, save_config, validate
from mst5_dist.data import formats as data_formats
from mst5_dist.errors import Interrupted
from mst5_dist.layout import BUILTIN_PREFIX, CHECKPOINTS, CONFIG_FILE, TRAIN_LOG
from mst5_dist.lora import count_parameters
from mst5_dist.outputs import append_text, check_output
from mst5_dist.training import builders, checkpoint, metrics
from mst5_dist.training.checkpoint import TrainState
from mst5_dist.training.evaluation import PeriodicEval
from mst5_dist.training.flops import FlopModel
from mst5_dist.training.output import OutputInUse, existing_run, output_lock, truncate_log
from mst5_dist.training.schedules import SCHEDULES
from mst5_dist.training.signals import STOP
from mst5_dist.training.step import train_step

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything ``setup`` built; the loop reads it, nothing in it changes after setup."""

    cfg: Config
    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    objective: Any
    dataset: Any
    sampler: Any
    collator: Any
    gather: distributed.Gather
    evaluator: PeriodicEval
    epoch_batches: list[int]
    total_steps: int
    flops: FlopModel
    output_dir: Path

    def step(self, batches) -> tuple[metrics.StepSums, Any]:
        """One optimizer step on ``batches`` (``training.step.train_step`` with this run's parts)."""
        return train_step(
            batches, model=self.model, objective=self.objective, optimizer=self.optimizer,
            scheduler=self.scheduler, accelerator=self.accelerator, gather=self.gather, cfg=self.cfg,
        )  # fmt: skip


def train(cfg: Config, resume: str | None = None, *, config_file: str | Path | None = None) -> Path:
    """Run the recipe; return ``OUTPUT_DIR/final``. Raises ``errors.Interrupted`` after a stop signal.
    ``config_file``: the YAML the config came from (the output may not contain it, unless resumed)."""
    STOP.install()  # a no-op under the entry points, which caught stop signals before anything loaded
    try:
        check_output_dir(cfg, resume, config_file)
        run = setup(cfg)
        with claim_output(run, resume):
            state = resume_from(run, resume)
            open_output(run)
            try:
                loop(run, state)
                return save(run, state)
            finally:
                cleanup(run)
    finally:
        STOP.finish()
        STOP.restore()


def check_output_dir(cfg: Config, resume: str | None, config_file: str | Path | None) -> None:
    """``train.output_dir`` is a folder of its own (``outputs.check_output``): not empty or the current
    folder, apart from the model, data and evaluation files it reads, and from the ``--config`` file
    (which a resumed run may keep inside its folder: its own config.yaml)."""
    reads = [("model.name_or_path", cfg.model.name_or_path), ("eval.sts_path", cfg.eval.sts_path)]
    reads += [("data.paths", p) for p in cfg.data.paths if not p.startswith(BUILTIN_PREFIX)]
    config = [("--config", config_file)]
    check_output(cfg.train.output_dir, "train.output_dir", reads + ([] if resume else config),
                 may_hold=config if resume else ())  # fmt: skip


def setup(cfg: Config) -> Run:
    """Build everything; nothing is written until the data and the model have loaded without error."""
    from accelerate.utils import set_seed

    validate(cfg)  # a Config built in code has not been through load_config's checks
    objective = objectives.build(cfg)  # checks the objective's settings before anything loads
    SCHEDULES.get(cfg.optim.scheduler)  # an unknown schedule or data format fails before anything loads too
    data_formats.get(cfg.data.format)
    accelerator = builders.setup_accelerator(cfg)
    set_seed(cfg.train.seed)
    encoder = builders.build_encoder(cfg)
    check_embedding_dim(cfg, encoder.embedding_dim)
    trainable, total = count_parameters(encoder)
    logger.info(f"parameters: {trainable:,} trainable / {total:,} total ({100 * trainable / max(total, 1):.3f}%)")
    flops = FlopModel.from_encoder(encoder, cfg)
    world, rank = accelerator.num_processes, accelerator.process_index
    dataset, sampler, collator = builders.build_data(cfg, encoder, objective, world, rank, accelerator.device)
    epoch_batches, total_steps = builders.plan_steps(cfg, sampler, len(dataset))
    logger.info(
        f"data: {len(dataset)} triplets, {epoch_batches[0]} global batches of {cfg.train.batch_size} in epoch 0 "
        f"({sampler.dropped} rows left out), {world} process(es), {total_steps} optimizer steps"
    )
    evaluator = PeriodicEval(cfg)
    optimizer, scheduler = builders.build_optimizer(cfg, encoder, total_steps)
    builders.configure_deepspeed(accelerator, cfg, sampler.local_batch, encoder.embedding_dim)
    model, optimizer = accelerator.prepare(encoder, optimizer)
    checkpoint.register_state(accelerator, model, cfg)
    return Run(
        cfg, accelerator, model, optimizer, scheduler, objective, dataset, sampler, collator,
        distributed.Gather(cfg.loss.gather_across_ranks), evaluator, epoch_batches, total_steps, flops,
        Path(cfg.train.output_dir),
    )  # fmt: skip


@contextmanager
def claim_output(run: Run, resume: str | None) -> Iterator[None]:
    """This process is the only writer of OUTPUT_DIR while the run lasts (an exclusive ``flock`` on
    ``OUTPUT_DIR/.mst5.lock``, which the kernel releases when the process ends, SIGKILL included),
    and a run without ``--resume`` never writes into the folder of another run."""
    problem, lock = None, None
    if run.accelerator.is_main_process:
        problem = existing_run(run.output_dir) if not resume else None
        if problem is None:
            lock, problem = output_lock(run.output_dir)
    # Every rank takes the same way out (a collective): nobody waits for a rank that gave up.
    if distributed.any_rank(problem is not None, run.accelerator.device):
        raise OutputInUse(problem or f"{run.output_dir}: the main process could not claim it")
    try:
        yield
    finally:
        if lock is not None:
            lock.close()


def resume_from(run: Run, resume: str | None) -> TrainState:
    """The state to start from: a fresh one, or the one of the checkpoint ``--resume`` names. The
    log keeps exactly the steps before it (a crash after the checkpoint left later lines)."""
    state = TrainState()
    if resume:
        ckpt = checkpoint.find_resume_checkpoint(run.output_dir, resume)
        if ckpt is None:
            logger.info(f"--resume {resume}: no checkpoint in {run.output_dir / CHECKPOINTS}, starting from scratch")
        else:
            state = checkpoint.load_checkpoint(run.accelerator, run.cfg, ckpt, run.scheduler)
            logger.info(f"resumed from {ckpt} at step {state.step}")
    if run.accelerator.is_main_process:  # a fresh run starts its own log (claim_output allowed it)
        truncate_log(run.output_dir / TRAIN_LOG, state.step)
    run.evaluator.resume(run.output_dir, state.step)
    return state


def open_output(run: Run) -> None:
    """The output folder, its ``config.yaml`` and the trackers; stop signals are caught from here on."""
    if run.accelerator.is_main_process:
        run.output_dir.mkdir(parents=True, exist_ok=True)
        save_config(run.cfg, run.output_dir / CONFIG_FILE)  # atomic: a link there is refused
    if run.cfg.train.report_to:
        # The run config as hyperparameters. The project name reaches MLflow (experiment) and W&B
        # (project); TensorBoard is a tracker object with its own folder name (builders.trackers).
        name = run.output_dir.name
        run.accelerator.init_trackers(
            run.cfg.train.tracker_project,
            config=flat_config(run.cfg),
            init_kwargs={"mlflow": {"run_name": name}, "wandb": {"name": name, "dir": str(run.output_dir)}},
        )


def epoch_loader(run: Run, state: TrainState):
    """An iterator over this rank's batches from where ``state`` stands (moving to the next epoch
    when the current one is used up)."""
    from torch.utils.data import DataLoader

    if state.batch_in_epoch >= run.epoch_batches[state.epoch]:
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    run.sampler.set_epoch(state.epoch, state.batch_in_epoch)
    # A private generator: creating a DataLoader iterator draws from the global torch RNG, which
    # would shift the dropout masks of a resumed run against an uninterrupted one.
    return iter(
        DataLoader(run.dataset, batch_sampler=run.sampler, collate_fn=run.collator, generator=torch.Generator())
    )


def loop(run: Run, state: TrainState) -> None:
    """Optimizer steps until ``total_steps``: step; at a record step (logged, evaluated, checkpointed,
    stopped or last) read the window's figures back, check them, log and evaluate; checkpoint when
    asked or stopped. Between records nothing is read back to the host (no sync per step), except
    ``distributed.any_rank``'s stop flag (a one-number all-reduce per step, in distributed runs)."""
    from tqdm.auto import tqdm

    cfg, accelerator = run.cfg, run.accelerator
    progress = tqdm(
        total=run.total_steps, initial=state.step, disable=not (accelerator.is_main_process and cfg.train.progress_bar)
    )
    window = metrics.LogWindow(accelerator.device)
    # A signal that came while the run was loading is honoured like any other: after the next step,
    # whose checkpoint keeps it (the SLURM supervisor relies on this: it forwards USR1 at once).
    run.model.train()
    while state.step < run.total_steps:
        loader = epoch_loader(run, state)
        while state.step < run.total_steps and state.batch_in_epoch < run.epoch_batches[state.epoch]:
            start = time.perf_counter()
            with distributed.collective(f"step {state.step + 1} (forward, backward, gradient all-reduce)"):
                window.add(state.step + 1, *run.step(loader), start)
            state.batch_in_epoch += cfg.train.grad_accum_steps
            state.step += 1
            progress.update(1)
            end_of_step(run, state, window, progress)
    progress.close()


def end_of_step(run: Run, state: TrainState, window: metrics.LogWindow, progress) -> None:
    """The record when one is due, then the checkpoint when asked or stopped (a stop signal is
    honoured here, at a step boundary: its checkpoint keeps the step and its record)."""
    stopping = distributed.any_rank(STOP.requested, run.accelerator.device)
    checkpointing = stopping or checkpoint_due(run, state.step)
    if checkpointing or record_due(run, state.step):
        with distributed.collective(f"step {state.step}: reducing the metrics of the record"):
            record = log_step(run, state, window)  # raises NonFinite before anything is written
        progress.set_postfix(loss=f"{record['loss']:.4f}")
    if checkpointing:
        path = checkpoint.save_checkpoint(run.accelerator, run.cfg, state, run.output_dir, run.scheduler)
        if stopping:
            progress.close()
            raise Interrupted(f"stopped by signal at step {state.step}; checkpoint {path}; rerun with --resume latest")


def checkpoint_due(run: Run, step: int) -> bool:
    """``train.save_every`` says so (the last step's checkpoint is ``save``'s)."""
    every = run.cfg.train.save_every
    return bool(every) and step % every == 0 and step < run.total_steps


def record_due(run: Run, step: int) -> bool:
    """A ``train_log.jsonl`` record now: every ``train.log_every`` steps, at evaluations and at the end
    (checkpoint steps too: the loop asks ``checkpoint_due`` first)."""
    return step % run.cfg.train.log_every == 0 or run.evaluator.due(step, run.total_steps) or step == run.total_steps


def log_step(run: Run, state: TrainState, window: metrics.LogWindow) -> dict[str, Any]:
    """The record of the window's steps: reduced over ranks (the one host sync), checked for a
    non-finite step, evaluated when due, written to train_log.jsonl and the trackers."""
    cfg, accelerator = run.cfg, run.accelerator
    summed, per_rank = window.metrics(metrics.peak_memory_mb()).pack(accelerator.device)
    figures = metrics.StepMetrics.unpack(
        accelerator.reduce(summed, reduction="sum").cpu(), accelerator.gather(per_rank).cpu()
    )
    elapsed = time.perf_counter() - window.started  # after the read-back: the window's work is done
    metrics.first_bad_step(figures)  # every rank holds the same gathered figures: all stop together
    record = metrics.step_record(
        step=state.step, epoch=state.epoch, window=window, figures=figures,
        lr=run.scheduler.get_last_lr()[0], elapsed=elapsed, world=accelerator.num_processes,
        accum=cfg.train.grad_accum_steps, flops=run.flops, peak_flops=metrics.peak_bf16_flops(),
    )  # fmt: skip
    window.reset()
    if run.evaluator.due(state.step, run.total_steps):
        run.evaluator.run(accelerator, run.model, run.output_dir, record)
    if accelerator.is_main_process:
        import json

        append_text(run.output_dir / TRAIN_LOG, json.dumps(record) + "\n")  # never through a link
    if cfg.train.report_to:
        accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=state.step)
    return record


def save(run: Run, state: TrainState) -> Path:
    """The last checkpoint and ``final/`` (all ranks: ZeRO-3 gathers the adapter first)."""
    checkpoint.save_checkpoint(run.accelerator, run.cfg, state, run.output_dir, run.scheduler)
    final = checkpoint.save_final(run.accelerator, run.model, run.cfg, run.output_dir)
    logger.info(f"done: {state.step} steps, model in {final}")
    run.accelerator.wait_for_everyone()
    return final


def cleanup(run: Run) -> None:
    """Flush the trackers (a local operation, safe on the way out of a failed run too)."""
    for tracker in run.accelerator.trackers:
        tracker.finish()
