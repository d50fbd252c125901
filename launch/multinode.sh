#!/usr/bin/env bash
# Several nodes with Horovod's own launcher: horovodrun -H host:slots,... or --hostfile.
source "$(dirname "$0")/common.sh"
usage() {
  cat <<USAGE
Usage: launch/multinode.sh (-H HOSTS | --hostfile FILE) [-n N] --stage S --config C --data DIR --workdir DIR [-- ARGS]

Starts N processes across nodes over passwordless SSH. Every node needs the same checkout
path (or --python), the records and a shared --workdir (or the same host order each time).
  -H HOSTS               e.g. node1:8,node2:8
  --hostfile FILE        lines of "node1 slots=8"
  -n, --np N             processes (default: the sum of slots)
  --network-interface IF NICs for Horovod traffic, e.g. eth0 or ib0 (comma-separated)
  --ssh-port P           SSH port of the nodes
  --ssh-identity FILE    SSH private key
  --mpi                  Open MPI controller instead of Gloo
$COMMON_HELP
Example:
  launch/multinode.sh -H node1:8,node2:8 --network-interface ib0 --stage all \\
      --config voc_paper --data /shared/records --workdir /shared/runs/voc -- --set global_batch=16 --set lr_scaling=linear
USAGE
}
HOSTS="" HOSTFILE="" NP="" NIC="" SSH_PORT="" SSH_ID="" CONTROLLER=--gloo
while (($#)); do
  common_arg "$@"; if ((SHIFT)); then shift "$SHIFT"; continue; fi
  case "$1" in
    -H|--hosts) [[ $# -ge 2 ]] || die "$1 needs a value"; HOSTS=$2; shift 2 ;;
    --hostfile) [[ $# -ge 2 ]] || die "$1 needs a value"; HOSTFILE=$2; shift 2 ;;
    -n|--np) [[ $# -ge 2 ]] || die "$1 needs a value"; NP=$2; shift 2 ;;
    --network-interface) [[ $# -ge 2 ]] || die "$1 needs a value"; NIC=$2; shift 2 ;;
    --ssh-port) [[ $# -ge 2 ]] || die "$1 needs a value"; SSH_PORT=$2; shift 2 ;;
    --ssh-identity) [[ $# -ge 2 ]] || die "$1 needs a value"; SSH_ID=$2; shift 2 ;;
    --mpi) CONTROLLER=--mpi; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ -n "$HOSTS" || -n "$HOSTFILE" ]] || die "give -H node1:8,node2:8 or --hostfile FILE"
[[ -z "$HOSTS" || -z "$HOSTFILE" ]] || die "give -H or --hostfile, not both"
if [[ -n "$HOSTS" ]]; then SLOTS=$(slots_from_hosts "$HOSTS"); else SLOTS=$(slots_from_hostfile "$HOSTFILE"); fi
if [[ -z "$NP" ]]; then NP=$SLOTS; fi
positive_int -n "$NP"
((NP <= SLOTS)) || die "-n $NP: more processes than the $SLOTS slots of the hosts"
job_command
cmd=("${HOROVODRUN[@]}" "$CONTROLLER" -np "$NP")
if [[ -n "$HOSTS" ]]; then cmd+=(-H "$HOSTS"); else cmd+=(--hostfile "$HOSTFILE"); fi
[[ -n "$NIC" ]] && cmd+=(--network-interface "$NIC")
[[ -n "$SSH_PORT" ]] && cmd+=(--ssh-port "$SSH_PORT")
[[ -n "$SSH_ID" ]] && cmd+=(--ssh-identity-file "$SSH_ID")
run_or_print "${cmd[@]}" "${JOB[@]}"
