#!/usr/bin/env bash
# Cache a dataset's snippets over a Slurm array: each task caches its share of the videos
# (`etad cache` reads SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT), all into one shared folder.
# Usage: sbatch --array=0-15 examples/slurm_cache.sh examples/anet_tsp_e2e.yaml [--set KEY=VALUE ...]
# Then, once every task has finished: etad cache --config RECIPE --what snippets --dry-run
# (it should report 0 videos to do) and train with torchrun (docs/pipelines.md).
#SBATCH --job-name=etad-cache
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=02:00:00
#SBATCH --output=logs/etad-cache-%A_%a.out
set -euo pipefail
recipe=${1:?usage: sbatch --array=0-N examples/slurm_cache.sh RECIPE.yaml [--set KEY=VALUE ...]}
shift
etad cache --config "$recipe" --what snippets --workers "${SLURM_CPUS_PER_TASK:-1}" "$@"
