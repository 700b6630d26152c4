# shellcheck shell=bash
# Sourced by slurm/*.sbatch (never run on its own): job environment, the preemption trap, requeue.
#
# Flow: mst5_run starts the launch line in the background (`cmd & wait $!`, so bash runs the trap
# while it waits); SIGUSR1 (from `#SBATCH --signal=B:USR1@S` or `scancel --signal=USR1 --batch`)
# or SIGTERM reaching the batch shell is passed on as SIGUSR1 to `mst5_dist.slurm supervise`
# (directly, or through srun, which forwards it to every node's task), which signals the training
# workers; all ranks checkpoint at the next step boundary and exit 75. mst5_finish then checks
# that the newest complete checkpoint is the last logged step and calls `scontrol requeue`; the
# requeued job runs the same script, and the trainer starts with `--resume latest`.

mst5_log() { echo "[mst5 $(date +%T) job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}] $*" >&2; }

# Environment shared by every launch (see slurm/README.md). Everything can be preset by the caller.
mst5_env() {
  export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
  export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"          # compute nodes: read the cache, never download
  export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-$HF_HUB_OFFLINE}"
  if [[ -n ${HF_HOME:-} ]]; then export HF_HOME; fi      # shared cache folder, if the site has one
  local procs="${MST5_PROCS_PER_NODE:-1}" cpus="${SLURM_CPUS_PER_TASK:-1}"
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( cpus / procs > 0 ? cpus / procs : 1 ))}"
  export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
  export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"  # a dead rank ends the job
  # Rendezvous: the first node of the allocation, a port derived from the job id (same after requeue).
  MASTER_ADDR="$(python -m mst5_dist.slurm main-addr)" || return 1
  MASTER_PORT="$(python -m mst5_dist.slurm main-port)" || return 1
  export MASTER_ADDR MASTER_PORT
  mst5_log "nodes ${SLURM_JOB_NODELIST:-?} main ${MASTER_ADDR}:${MASTER_PORT} repo $PWD"
}

MST5_STOP=0
MST5_CHILD=
MST5_RC=0

mst5_on_signal() {
  MST5_STOP=1
  mst5_log "batch shell got SIG$1: asking the trainer to checkpoint"
  if [[ -n $MST5_CHILD ]]; then kill -USR1 "$MST5_CHILD" 2>/dev/null || true; fi
}

# mst5_run CMD...: run CMD in the background and wait for it, trapping USR1 and TERM meanwhile.
mst5_run() {
  trap 'mst5_on_signal USR1' USR1
  trap 'mst5_on_signal TERM' TERM
  if (( MST5_STOP )); then MST5_RC=75; return; fi        # signalled before anything started
  "$@" &
  MST5_CHILD=$!
  local rc r
  while true; do
    wait "$MST5_CHILD"; rc=$?                           # > 128 when a trapped signal interrupted wait
    kill -0 "$MST5_CHILD" 2>/dev/null || break
  done
  if (( rc > 128 )); then                                # interrupted just before CMD ended: real status
    wait "$MST5_CHILD"; r=$?
    if (( r != 127 )); then rc=$r; fi
  fi
  MST5_CHILD=
  MST5_RC=$rc
}

# mst5_finish TRAIN_ARGS...: exit 0 when training completed; after a stop signal, requeue the job
# if the checkpoint is complete (MST5_REQUEUE=0: exit 75 and leave resubmitting to the user).
mst5_finish() {
  local rc=$MST5_RC
  if (( rc == 0 )); then mst5_log "${MST5_DRY_RUN:+dry run: }training completed"; exit 0; fi
  if (( MST5_STOP || rc == 75 )) && python -m mst5_dist.slurm resumable -- "$@"; then
    local state
    state=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
    if [[ $state == CANCELLED ]]; then                   # scancel: the user wants it stopped
      mst5_log "job cancelled: checkpoint kept, not requeued (resubmit the same command to resume)"
    elif [[ ${MST5_REQUEUE:-1} == 1 ]]; then
      mst5_log "checkpoint complete (launcher exit $rc): scontrol requeue $SLURM_JOB_ID"
      scontrol requeue "$SLURM_JOB_ID" || mst5_log "scontrol requeue failed; resubmit to resume"
    fi
    exit 75
  fi
  mst5_log "training failed (exit $rc)"
  exit "$rc"
}
