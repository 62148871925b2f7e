#!/usr/bin/env bash
# An overnight autotransfer search as a SLURM job array: every array task is one worker of the same
# Optuna study in PostgreSQL; a last job, run after all of them, confirms the finalists and writes the
# report. Not run on a real cluster here: the test suite only checks its syntax (bash -n).
#
#   sbatch --export=ALL,AUTOTRANSFER_DB="postgresql+psycopg://autotransfer:SECRET@db-host/autotransfer" \
#       examples/slurm_array.sh /shared/data/flowers flowers
#
#SBATCH --job-name=autotransfer
#SBATCH --array=0-7                 # 8 workers; each takes trials until the study has --n-trials
#SBATCH --cpus-per-task=4
#SBATCH --gres=gpu:1                # one GPU per worker (drop this line for CPU workers)
#SBATCH --mem=16G
#SBATCH --time=08:00:00             # SLURM's limit; --timeout below stops starting trials before it
#SBATCH --output=autotransfer-%A_%a.log
set -euo pipefail

DATA=${1:?usage: sbatch examples/slurm_array.sh DATA_DIR STUDY_NAME}
STUDY=${2:?usage: sbatch examples/slurm_array.sh DATA_DIR STUDY_NAME}
: "${AUTOTRANSFER_DB:?set AUTOTRANSFER_DB to the PostgreSQL URL of the study (postgresql+psycopg://...)}"
: "${AUTOTRANSFER_ZOO:=/shared/weights/zoo.yaml}"   # the local zoo, on a filesystem every node sees
export AUTOTRANSFER_ZOO OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-4}

# Every task runs the same command; the first to start creates the study, the others join it.
# --finalists 0: the workers only search; the confirmation runs once, in the job below.
srun autotransfer search "$DATA" --space default --n-trials 400 --epochs 5 \
    --timeout 27000 --storage "$AUTOTRANSFER_DB" --study-name "$STUDY" --finalists 0 \
    --heartbeat-interval 60 --out "reports/$STUDY/worker-${SLURM_ARRAY_TASK_ID}"

# The last task to finish submits nothing; submit the confirmation once, after the whole array:
#   sbatch --dependency=afterany:<ARRAY_JOB_ID> --gres=gpu:1 --wrap \
#     "autotransfer confirm --storage \"$AUTOTRANSFER_DB\" --study-name $STUDY && \
#      autotransfer report --storage \"$AUTOTRANSFER_DB\" --study-name $STUDY --out reports/$STUDY/report.html"
