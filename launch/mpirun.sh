#!/usr/bin/env bash
# The same through Open MPI's mpirun, with the flags Horovod's documentation recommends.
source "$(dirname "$0")/common.sh"
usage() {
  cat <<USAGE
Usage: launch/mpirun.sh -n N [-H HOSTS | --hostfile FILE] --stage S --config C --data DIR --workdir DIR [-- ARGS]

  -n, --np N             processes
  -H HOSTS               e.g. node1:8,node2:8 (default: localhost:N)
  --hostfile FILE        Open MPI hostfile
  --network-interface IF restrict MPI TCP traffic and NCCL sockets to IF
$COMMON_HELP
Flags used (Horovod docs, "Run Horovod with Open MPI"): -bind-to none -map-by slot, the
environment exported with -x (NCCL_DEBUG, LD_LIBRARY_PATH, PATH, PYTHONPATH), and
-mca pml ob1 -mca btl ^openib so MPI does not fight NCCL over InfiniBand.
USAGE
}
NP="" HOSTS="" HOSTFILE="" NIC=""
while (($#)); do
  common_arg "$@"; if ((SHIFT)); then shift "$SHIFT"; continue; fi
  case "$1" in
    -n|--np) [[ $# -ge 2 ]] || die "$1 needs a value"; NP=$2; shift 2 ;;
    -H|--hosts) [[ $# -ge 2 ]] || die "$1 needs a value"; HOSTS=$2; shift 2 ;;
    --hostfile) [[ $# -ge 2 ]] || die "$1 needs a value"; HOSTFILE=$2; shift 2 ;;
    --network-interface) [[ $# -ge 2 ]] || die "$1 needs a value"; NIC=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ -n "$NP" ]] || die "-n N is required (a positive integer)"
positive_int -n "$NP"
[[ -z "$HOSTS" ]] || SLOTS=$(slots_from_hosts "$HOSTS")
[[ -z "$HOSTFILE" ]] || [[ -f "$HOSTFILE" ]] || die "--hostfile $HOSTFILE: no such file"
[[ -z "$HOSTS" || -z "$HOSTFILE" ]] || die "give -H or --hostfile, not both"
job_command
cmd=(mpirun -np "$NP")
if [[ -n "$HOSTFILE" ]]; then cmd+=(--hostfile "$HOSTFILE"); else cmd+=(-H "${HOSTS:-localhost:$NP}"); fi
cmd+=(-bind-to none -map-by slot -mca pml ob1 -mca btl ^openib
      -x NCCL_DEBUG=INFO -x LD_LIBRARY_PATH -x PATH -x "PYTHONPATH=$REPO_DIR")
[[ -n "$NIC" ]] && cmd+=(-mca btl_tcp_if_include "$NIC" -mca oob_tcp_if_include "$NIC" -x "NCCL_SOCKET_IFNAME=$NIC")
[[ $(id -u) -eq 0 ]] && cmd+=(--allow-run-as-root)
# TERM (a node drain, a pod's end, a scheduler) reaches the ranks as USR1 through mpirun, so
# they checkpoint before mpirun's own TERM handling would kill them (launch/signal_relay.sh).
run_or_print "$LAUNCH_DIR/signal_relay.sh" "${cmd[@]}" "${JOB[@]}"
