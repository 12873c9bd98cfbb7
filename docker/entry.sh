#!/usr/bin/env bash
# Entry point of the bigan container image (see ../Dockerfile), installed as /entry.sh.
#
# Base images often set TORCH_CUDA_ARCH_LIST to the architectures their own torch was built for. Unset, torch's
# extension builder compiles the custom CUDA ops (torch_utils/ops) for the GPU that is actually present, which is
# quicker and always matches. Then the given command replaces this shell, so it gets the signals and the exit code.
unset TORCH_CUDA_ARCH_LIST
if [ "$#" -eq 0 ]; then
    set -- bash
fi
exec "$@"
