#!/usr/bin/env bash
# Elastic training (Horovod elastic over Gloo): workers may leave (a preempted node) and join.
source "$(dirname "$0")/common.sh"
usage() {
  cat <<USAGE
Usage: launch/elastic.sh --min-np N --max-np M (--host-discovery-script FILE | -H HOSTS) --stage S --config C --data DIR --workdir DIR [-- ARGS]

Runs horovodrun --gloo --min-np N --max-np M --host-discovery-script FILE. The job keeps
going while at least N workers are alive: when a worker is lost, the others roll back to
the last commit (every elastic_commit_every steps, default 10) and continue with the global
batch re-split over the workers left (it must divide, else the job stops saying so); when
the discovery script lists a host again, its workers join at the next commit.
  --min-np N                  fewest workers to keep training with
  --max-np M                  most workers to use
  -n, --np N                  workers to start with (default: M)
  --host-discovery-script F   executable printing the usable hosts, one "host:slots" per line
  -H HOSTS                    fixed hosts (e.g. node1:8,node2:8): writes the discovery script for you
  --slots N                   slots per host when the script prints bare host names
  --blacklist-cooldown-range LOW HIGH   seconds before a failed host may be used again (default: never)
  --network-interface IF      NICs for Horovod traffic (needed when the job may start with one host:
                              Horovod otherwise waits for two hosts to compare their interfaces)
  --elastic-timeout S         seconds to wait for --min-np slots (Horovod's default: 600)
  --ssh-port P, --ssh-identity FILE
$COMMON_HELP
Example:
  launch/elastic.sh --min-np 8 --max-np 16 --host-discovery-script ./discover_hosts.sh \\
      --stage all --config voc_paper --data /shared/records --workdir /shared/runs/voc -- --set global_batch=16
USAGE
}
TIMEOUT="" MIN_NP="" MAX_NP="" NP="" DISCOVERY="" HOSTS="" SLOTS="" COOLDOWN=() NIC="" SSH_PORT="" SSH_ID=""
while (($#)); do
  common_arg "$@"; if ((SHIFT)); then shift "$SHIFT"; continue; fi
  case "$1" in
    --min-np) [[ $# -ge 2 ]] || die "$1 needs a value"; MIN_NP=$2; shift 2 ;;
    --max-np) [[ $# -ge 2 ]] || die "$1 needs a value"; MAX_NP=$2; shift 2 ;;
    -n|--np) [[ $# -ge 2 ]] || die "$1 needs a value"; NP=$2; shift 2 ;;
    --host-discovery-script) [[ $# -ge 2 ]] || die "$1 needs a value"; DISCOVERY=$2; shift 2 ;;
    -H|--hosts) [[ $# -ge 2 ]] || die "$1 needs a value"; HOSTS=$2; shift 2 ;;
    --slots) [[ $# -ge 2 ]] || die "$1 needs a value"; SLOTS=$2; shift 2 ;;
    --blacklist-cooldown-range) [[ $# -ge 3 ]] || die "$1 needs LOW HIGH"; COOLDOWN=("$2" "$3"); shift 3 ;;
    --network-interface) [[ $# -ge 2 ]] || die "$1 needs a value"; NIC=$2; shift 2 ;;
    --elastic-timeout) [[ $# -ge 2 ]] || die "$1 needs a value"; TIMEOUT=$2; shift 2 ;;
    --ssh-port) [[ $# -ge 2 ]] || die "$1 needs a value"; SSH_PORT=$2; shift 2 ;;
    --ssh-identity) [[ $# -ge 2 ]] || die "$1 needs a value"; SSH_ID=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ -n "$MIN_NP" && -n "$MAX_NP" ]] || die "--min-np and --max-np are required"
positive_int --min-np "$MIN_NP"; positive_int --max-np "$MAX_NP"
((MIN_NP <= MAX_NP)) || die "--min-np $MIN_NP is more than --max-np $MAX_NP"
NP="${NP:-$MAX_NP}"; positive_int -n "$NP"
((MIN_NP <= NP && NP <= MAX_NP)) || die "-n $NP must lie between --min-np $MIN_NP and --max-np $MAX_NP"
[[ -z "$SLOTS" ]] || positive_int --slots "$SLOTS"
[[ -z "$TIMEOUT" ]] || positive_int --elastic-timeout "$TIMEOUT"
if ((${#COOLDOWN[@]})); then positive_int --blacklist-cooldown-range "${COOLDOWN[0]}"; positive_int --blacklist-cooldown-range "${COOLDOWN[1]}"; fi
[[ -n "$DISCOVERY" || -n "$HOSTS" ]] || die "give --host-discovery-script FILE or -H node1:8,node2:8"
[[ -z "$DISCOVERY" || -z "$HOSTS" ]] || die "give --host-discovery-script or -H, not both"
if [[ -n "$HOSTS" ]]; then
  slots_from_hosts "$HOSTS" >/dev/null
  [[ -n "$WORKDIR" ]] || die "--workdir is required"
  DISCOVERY="$(from_caller "$WORKDIR")/discover_hosts.sh"
  if [[ "$DRY_RUN" == 0 ]]; then
    mkdir -p "$(dirname "$DISCOVERY")"
    printf '#!/bin/sh\n# written by launch/elastic.sh: the fixed host list %s\n' "$HOSTS" >"$DISCOVERY.tmp"
    tr ',' '\n' <<<"$HOSTS" | sed 's/^/echo /' >>"$DISCOVERY.tmp"
    chmod +x "$DISCOVERY.tmp"; mv "$DISCOVERY.tmp" "$DISCOVERY"
  fi
else
  DISCOVERY="$(from_caller "$DISCOVERY")"
  [[ -f "$DISCOVERY" ]] || die "--host-discovery-script $DISCOVERY: no such file"
  [[ -x "$DISCOVERY" ]] || die "--host-discovery-script $DISCOVERY: not executable (chmod +x)"
fi
TRAINING_NAMES="$(PYTHONPATH="$REPO_DIR" "$( [[ -x "$REPO_DIR/.venv/bin/python" ]] && echo "$REPO_DIR/.venv/bin/python" || echo python3)" \
  -m dcsp_dist.core.stages --training)"   # the stage table's training stages
if [[ "$ENTRY" != train ]]; then
  die "elastic jobs train; run --evaluate, --predict and --saliency with launch/local.sh or launch/multinode.sh"
elif [[ -n "$STAGE" && " $TRAINING_NAMES " != *" $STAGE "* ]]; then
  die "--stage $STAGE: elastic jobs run one training stage at a time (${TRAINING_NAMES// /, }); run the cue stages with launch/local.sh or launch/multinode.sh"
fi
job_command
cmd=("${HOROVODRUN[@]}" --gloo -np "$NP" --min-np "$MIN_NP" --max-np "$MAX_NP" --host-discovery-script "$DISCOVERY")
[[ -n "$SLOTS" ]] && cmd+=(--slots "$SLOTS")
((${#COOLDOWN[@]})) && cmd+=(--blacklist-cooldown-range "${COOLDOWN[@]}")
[[ -n "$NIC" ]] && cmd+=(--network-interface "$NIC")
[[ -n "$TIMEOUT" ]] && cmd+=(--elastic-timeout "$TIMEOUT")
[[ -n "$SSH_PORT" ]] && cmd+=(--ssh-port "$SSH_PORT")
[[ -n "$SSH_ID" ]] && cmd+=(--ssh-identity-file "$SSH_ID")
run_or_print "${cmd[@]}" "${JOB[@]}"
