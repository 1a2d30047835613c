#!/usr/bin/env bash
# Queues an index job on Slurm: an array of SHARDS tasks and a merge that runs after all of
# them succeed. S3 settings (AWS_*) and LOUPE (the binary) pass through the environment.
#   deploy/slurm/submit.sh job.toml 8
set -euo pipefail
job="${1:?usage: submit.sh JOB.toml [SHARDS]}"
shards="${2:-4}"
[ "$shards" -ge 1 ] || { echo "SHARDS must be at least 1" >&2; exit 2; }
here="$(cd "$(dirname "$0")" && pwd)"
job="$(cd "$(dirname "$job")" && pwd)/$(basename "$job")"
array=$(sbatch --parsable --array="0-$((shards - 1))" --export="ALL,LOUPE_JOB=$job" "$here/index.sbatch")
array="${array%%;*}"
merge=$(sbatch --parsable --dependency="afterok:$array" --export="ALL,LOUPE_JOB=$job,LOUPE_SHARDS=$shards" "$here/merge.sbatch")
echo "index array job $array ($shards shards), merge job ${merge%%;*} after it"
