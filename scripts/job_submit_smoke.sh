#!/usr/bin/env bash
# Run a psec stream as a Ray job on a local head node, exactly as on a cluster:
#
#   scripts/job_submit_smoke.sh [STREAM.yaml] [STORE]
#
# defaults: configs/dmc_walker.yaml at scale $PSEC_SCALE (smoke) into a fresh temporary
# store. It starts `ray start --head` with RAY_AUTH_MODE=disabled (Ray 2.60 turns token
# auth on by default), submits
#
#   ray job submit --working-dir . -- psec run STREAM --scale smoke --store STORE
#
# lists what the job stored, and stops the head node it started (and nothing else).
# On a real cluster only the submit line is needed, with --address of the head's dashboard.
set -euo pipefail
cd "$(dirname "$0")/.."

# The venv's tools (ray, psec, python), whether or not it is activated: the job's
# entrypoint inherits this PATH through the head node it runs on. PSEC_VENV overrides.
VENV=$(cd "${PSEC_VENV:-.venv}" && pwd)
if [ ! -x "$VENV/bin/ray" ]; then
    echo "job_submit_smoke: no ray in $VENV/bin (run scripts/setup.sh, or set PSEC_VENV)" >&2
    exit 1
fi
export PATH="$VENV/bin:$PATH"

STREAM=${1:-configs/dmc_walker.yaml}
# Absolute: the job runs in Ray's copy of the working dir, not here.
STORE=$(python -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' \
        "${2:-$(mktemp -d /tmp/psec-job.XXXXXX)/store}")
SCALE=${PSEC_SCALE:-smoke}
CPUS=${PSEC_CPUS:-2}
export RAY_AUTH_MODE=disabled

# Idle workers the head keeps (pipeline/runtime.py: worker_limit), as psec's local Ray does.
: "${RAY_num_workers_soft_limit:=$(python -c "from pipeline.runtime import worker_limit; print(worker_limit($CPUS))")}"
export RAY_num_workers_soft_limit

# Start a head node: free ports for every server of it, so it never collides with another
# Ray instance on this machine, and a temp dir of its own, which keeps
# `ray_current_cluster` out of /tmp/ray so other processes' `ray.init()` do not attach to
# it; every process of the node names that dir on its command line.
start_head() {
    read -r GCS DASH CLIENT AGENT_HTTP AGENT_GRPC METRICS RUNTIME_ENV < <(python - <<'PY'
import socket
socks = [socket.socket() for _ in range(7)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
PY
    )
    TEMP=$(mktemp -d /tmp/psecray.XXXX)
    ray start --head --block --num-cpus "$CPUS" --port "$GCS" --dashboard-port "$DASH" \
        --ray-client-server-port "$CLIENT" --dashboard-agent-listen-port "$AGENT_HTTP" \
        --dashboard-agent-grpc-port "$AGENT_GRPC" --metrics-export-port "$METRICS" \
        --runtime-env-agent-port "$RUNTIME_ENV" --temp-dir "$TEMP" --disable-usage-stats \
        > "$TEMP/head.log" 2>&1 &
    HEAD=$!
    ADDRESS="http://127.0.0.1:$DASH"
}

# Ready when the job API itself answers (it lists the jobs): the dashboard answers
# /api/version before its job module is up, and a submission sent then can be dropped.
# Fails when the head process ends first.
head_ready() {
    for _ in $(seq 120); do
        if python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' \
            "$ADDRESS/api/jobs/" 2>/dev/null; then
            return 0
        fi
        kill -0 "$HEAD" 2>/dev/null || return 1
        sleep 1
    done
    return 0  # still starting after 120 s: the submission below says what is wrong
}

# --block makes one process own the head node: stopping it stops the node.
trap 'kill "$HEAD" 2>/dev/null || true; wait "$HEAD" 2>/dev/null || true; rm -rf "$TEMP"' EXIT

# Ray gives a new node a fixed 30 s to register its raylet; on a busy machine that runs
# out now and then, so a head that did not start is started again (3 attempts in all).
for attempt in 1 2 3; do
    start_head
    head_ready && break
    cat "$TEMP/head.log" >&2
    kill "$HEAD" 2>/dev/null || true
    pkill -9 -f -- "$TEMP" || true  # what the failed start left running (its GCS, raylet)
    wait "$HEAD" 2>/dev/null || true
    rm -rf "$TEMP"
    if [ "$attempt" = 3 ]; then
        echo "job_submit_smoke: the head node did not start (3 attempts)" >&2
        exit 1
    fi
    echo "job_submit_smoke: the head node did not start; starting it again" >&2
done

# On a busy machine the job server now and then drops the submission request without an
# answer (RemoteDisconnected) though it lists jobs. The submission carries an id of its
# own: a job the dropped request did not create is submitted again; one it did create is
# followed to its end instead of being submitted twice.
ID="psec-smoke-$$-$RANDOM"
for attempt in 1 2 3; do
    if ray job submit --address "$ADDRESS" --submission-id "$ID" --working-dir . \
        -- psec run "$STREAM" --scale "$SCALE" --store "$STORE"; then
        break
    fi
    if STATUS=$(ray job status --address "$ADDRESS" "$ID" 2>/dev/null); then
        case "$STATUS" in
            *SUCCEEDED*) ;;
            *FAILED*|*STOPPED*) echo "$STATUS" >&2; exit 1 ;;
            *) ray job logs --address "$ADDRESS" --follow "$ID"
               STATUS=$(ray job status --address "$ADDRESS" "$ID")
               case "$STATUS" in *SUCCEEDED*) ;; *) echo "$STATUS" >&2; exit 1 ;; esac ;;
        esac
        echo "job_submit_smoke: job '$ID' succeeded"
        break
    fi
    if [ "$attempt" = 3 ]; then
        echo "job_submit_smoke: the job server did not take the submission (3 attempts)" >&2
        exit 1
    fi
    echo "job_submit_smoke: the submission did not reach the job server; submitting again" >&2
    sleep 5
done
psec skills list --store "$STORE"
