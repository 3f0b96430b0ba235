#!/usr/bin/env bash
# SLURM example: N nodes x 8 GPUs, one torchrun per node, rendezvous on the first node (c10d backend).
# Preemption: SLURM sends SIGUSR1 90 s before the time limit (--signal); the ranks get a SIGTERM (see below),
# finish their step, write the mid-epoch checkpoint and exit; the job is requeued and --resume auto continues.
#
#   sbatch scripts/slurm_train.sh -a pdresnet50 --data_train /data/imagenet/train --data_val /data/imagenet/val \
#       -b 192 -j 8 --prefix run1 --ckptdirprefix experiment_1/
#
#SBATCH --job-name=partialconv
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@90
#SBATCH --requeue
#SBATCH --output=slurm-%j.out
set -euo pipefail

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
RDZV_PORT=${RDZV_PORT:-29500}

# SLURM signals only this batch shell (B:USR1). torchrun forwards SIGTERM to every rank in all versions, but
# SIGUSR1 only when it is listed in --signals-to-handle (env PET_SIGNALS_TO_HANDLE; recent torch); on older
# torch a SIGUSR1 kills torchrun and orphans the ranks. So the batch shell turns SLURM's USR1 into a TERM for
# srun -> torchrun -> ranks (train.py treats both alike: finish the step, checkpoint, exit), which works with
# every torch >= 2.4, and gives the ranks time to write the checkpoint before torchrun kills them.
export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-120}
# With torchrun --max-restarts over several nodes, torch's default shared rendezvous store hands a restarted
# group the previous group's addresses and it hangs in its set-up (pytorch/pytorch#135712): one store per group.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
PREEMPTED=0
trap 'PREEMPTED=1; kill -TERM "$SRUN_PID" 2>/dev/null' USR1 TERM

srun --kill-on-bad-exit=1 torchrun \
    --nnodes "$SLURM_NNODES" \
    --nproc_per_node "$GPUS_PER_NODE" \
    --rdzv_id "$SLURM_JOB_ID" \
    --rdzv_backend c10d \
    --rdzv_endpoint "$HEAD_NODE:$RDZV_PORT" \
    train.py --resume auto "$@" &
SRUN_PID=$!

set +e
wait "$SRUN_PID"
rc=$?
while kill -0 "$SRUN_PID" 2>/dev/null; do  # a trapped signal interrupts wait before the run has exited
    wait "$SRUN_PID"
    rc=$?
done
if [ "$PREEMPTED" -eq 1 ]; then
    echo "preempted: requeueing job $SLURM_JOB_ID; train.py continues with --resume auto"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
