#!/bin/sh
# Entrypoint of the D-Gate Triton image (Dockerfile.triton).
#
#   serve [tritonserver args...]  (the default) serve DGATE_MODEL_REPOSITORY; when it is missing, first
#                                 export it from DGATE_EXPORT_MODEL, or wait for a Job to export it
#   export                        export DGATE_EXPORT_MODEL into DGATE_MODEL_REPOSITORY, then exit
#   wait                          wait until DGATE_MODEL_REPOSITORY exists, then exit (an init container)
#
# Environment:
#   DGATE_MODEL_REPOSITORY  a local folder (default /models/repository) or s3://, gs://, as://
#                           (Triton reads those itself; export and wait then do nothing)
#   DGATE_EXPORT_MODEL      checkpoint folders, space-separated (mounted read-only, e.g. /checkpoints/sd15)
#   DGATE_EXPORT_ARGS       more `dgate export` arguments, e.g. "--engine torch --device gpu --precision fp16"
#   DGATE_WAIT_TIMEOUT_S    how long `wait` (and `serve` without a checkpoint) waits; 0: for ever (default)
#   DGATE_EXIT_TIMEOUT_S    how long Triton drains in-flight requests after SIGTERM (default 120)
#   DGATE_CUDA_POOL_MB      Triton's CUDA memory pool per visible GPU (default 1024)
#
# An export is written beside the repository (<repository>.partial) and renamed into place when it is
# complete, so a server never reads a half-written repository and the folder's existence is the signal.
set -eu

REPOSITORY="${DGATE_MODEL_REPOSITORY:-/models/repository}"

log() { printf 'dgate-triton: %s\n' "$*" >&2; }

is_remote() {
    case "$REPOSITORY" in
        s3://* | gs://* | as://*) return 0 ;;
        *) return 1 ;;
    esac
}

repository_ready() {
    is_remote || [ -d "$REPOSITORY" ]
}

export_repository() {
    if is_remote; then
        log "$REPOSITORY is object storage: export to a local folder and upload it (see helm-free-k8s/README.md)"
        return 1
    fi
    if [ -z "${DGATE_EXPORT_MODEL:-}" ]; then
        log "DGATE_EXPORT_MODEL is not set: nothing to export"
        return 1
    fi
    partial="${REPOSITORY}.partial"
    rm -rf "$partial"
    mkdir -p "$(dirname "$REPOSITORY")"
    set --
    for model in $DGATE_EXPORT_MODEL; do
        set -- "$@" --model "$model"
    done
    log "exporting ${DGATE_EXPORT_MODEL} into ${REPOSITORY}"
    # DGATE_EXPORT_ARGS is split into words on purpose: it holds several flags.
    # shellcheck disable=SC2086
    dgate export "$@" --out "$partial" ${DGATE_EXPORT_ARGS:-}
    if [ -d "$REPOSITORY" ]; then  # a re-export: running servers already loaded the old one
        rm -rf "${REPOSITORY}.previous"
        mv "$REPOSITORY" "${REPOSITORY}.previous"
    fi
    mv "$partial" "$REPOSITORY"
    log "model repository ready: $REPOSITORY"
}

wait_for_repository() {
    timeout="${DGATE_WAIT_TIMEOUT_S:-0}"
    waited=0
    until repository_ready; do
        if [ "$timeout" -gt 0 ] && [ "$waited" -ge "$timeout" ]; then
            log "no model repository at $REPOSITORY after ${timeout}s"
            return 1
        fi
        if [ $((waited % 60)) -eq 0 ]; then
            log "waiting for a model repository at $REPOSITORY (exported by the export Job)"
        fi
        sleep 5
        waited=$((waited + 5))
    done
}

# One --cuda-memory-pool-byte-size per visible GPU (none on a CPU node): Python-backend models pass
# GPU tensors through this pool, and Triton's 64 MB default makes large ones fall back to slow CUDA IPC.
cuda_pool_args() {
    bytes=$((${DGATE_CUDA_POOL_MB:-1024} * 1024 * 1024))
    gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null || true)
    for gpu in $gpus; do
        printf -- '--cuda-memory-pool-byte-size=%s:%s\n' "$gpu" "$bytes"
    done
}

serve() {
    if ! repository_ready; then
        if [ -n "${DGATE_EXPORT_MODEL:-}" ]; then
            export_repository
        else
            wait_for_repository
        fi
    fi
    pool=$(cuda_pool_args)
    log "starting tritonserver on $REPOSITORY"
    # $pool holds one flag a line, without spaces: split on purpose.
    # shellcheck disable=SC2086
    exec tritonserver \
        --model-repository="$REPOSITORY" \
        --strict-readiness=true \
        --exit-on-error=true \
        --allow-metrics=true \
        --exit-timeout-secs="${DGATE_EXIT_TIMEOUT_S:-120}" \
        $pool "$@"
}

command="${1:-serve}"
[ "$#" -gt 0 ] && shift
case "$command" in
    serve) serve "$@" ;;
    export) export_repository ;;
    wait) wait_for_repository ;;
    -*) serve "$command" "$@" ;;  # only tritonserver flags: serve with them
    *)
        log "unknown command '$command' (serve, export or wait)"
        exit 2
        ;;
esac
