#!/usr/bin/env bash
# Turns the TERM that ends a container or a job step into the USR1 dcsp_dist stops on, and
# waits for the job to save. Used where the process that receives TERM would otherwise end
# the ranks before they checkpoint:
#
#   signal_relay.sh CMD...             run CMD (mpirun, in the k8s launcher or launch/mpirun.sh);
#                                      TERM/INT to this script become USR1 to CMD, which mpirun
#                                      forwards to every rank; exits with CMD's status (75 when
#                                      the ranks were preempted and checkpointed).
#   signal_relay.sh --worker CMD...    a worker pod's PID 1 (CMD: its sshd): TERM becomes USR1 to
#                                      every dcsp_dist rank in the pod; once they have exited (or
#                                      after DCSP_RELAY_GRACE seconds, default 280), TERM to CMD.
#
# mpirun alone answers TERM by signalling the ranks and killing them after a short timeout,
# and a pod's PID 1 that exits takes every rank with it: neither leaves time for a save.
set -uo pipefail
WORKER=0
[[ "${1:-}" == --worker ]] && { WORKER=1; shift; }
(($#)) || { echo "usage: signal_relay.sh [--worker] CMD..." >&2; exit 2; }
GRACE="${DCSP_RELAY_GRACE:-280}"
RANKS='-m (dcsp_dist|data_tools)\.'      # the ranks' command lines

relay() {
  echo "signal_relay: got SIG$1; asking the job to stop at a safe point (USR1)" >&2
  if ((WORKER)); then
    pkill -USR1 -f -- "$RANKS" || true
    local waited=0
    while pgrep -f -- "$RANKS" >/dev/null && ((waited < GRACE)); do sleep 1; waited=$((waited + 1)); done
    kill -TERM "$CHILD" 2>/dev/null || true
  else
    kill -USR1 "$CHILD" 2>/dev/null || true
  fi
}
trap 'relay TERM' TERM
trap 'relay INT' INT
"$@" &
CHILD=$!
status=0
while true; do
  wait "$CHILD"; status=$?
  kill -0 "$CHILD" 2>/dev/null || break      # a trapped signal ends wait early; the child still runs
done
exit "$status"
