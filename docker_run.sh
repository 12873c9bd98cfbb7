#!/usr/bin/env bash
# Run a command inside the bigan container image, with the current folder mounted at /scratch as the working
# directory, as the calling user (files it writes belong to you) and with HOME=/scratch (caches, such as the
# compiled CUDA ops, land in ./.cache). Build the image first: docker build --tag bigan:latest .
#
#   ./docker_run.sh python train_db_stylegan2.py --outdir runs --data DATASETS/faces --cfg auto --resume ffhq256
#
# Environment: IMAGE (default bigan:latest), GPUS (the value of docker run --gpus, default all; none: no GPUs).
set -euo pipefail

IMAGE="${IMAGE:-bigan:latest}"
GPUS="${GPUS:-all}"

usage() {
    cat <<EOF
Usage: $(basename "$0") COMMAND [ARGS...]

Runs COMMAND in the container image $IMAGE with the current folder mounted at /scratch (the working directory),
as user $(id -u):$(id -g) and with HOME=/scratch.

Environment:
  IMAGE  container image to run (default: bigan:latest); build it with: docker build --tag bigan:latest .
  GPUS   GPUs to pass to docker run --gpus (default: all; e.g. device=0, or none to run without GPUs)
EOF
}

if [ "$#" -gt 0 ] && { [ "$1" = "--help" ] || [ "$1" = "-h" ]; }; then
    usage
    exit 0
fi

if ! docker inspect --type=image "$IMAGE" >/dev/null 2>&1; then
    echo "Unknown container image: $IMAGE" >&2
    echo "build it with: docker build --tag $IMAGE ." >&2
    exit 1
fi

args=(run --shm-size=2g)
if [ "$GPUS" != "none" ]; then
    args+=(--gpus "$GPUS")
fi
if [ -t 0 ]; then
    args+=(-it)  # interactive only when stdin is a terminal, so that the script also works in pipelines and CI
fi
args+=(--rm -v "$(pwd)":/scratch --user "$(id -u)":"$(id -g)" --workdir=/scratch -e HOME=/scratch "$IMAGE")

exec docker "${args[@]}" "$@"
