#!/usr/bin/env bash
# A real single-node SLURM on this machine, bound to loopback, for masklab's `slurm` tests (and for trying
# `--executor slurm` by hand). Debian's slurm-wlm 22.05 (slurmctld + slurmd), munge, and accounting
# (slurmdbd on a local MariaDB that listens on its unix socket only), so that `sacct` reports job states
# the way a production cluster does. Started without systemd; idempotent (a second run restarts nothing
# that runs with the same config); as root (CI runs as root). Ends by running `srun hostname`.
#
# Partitions (one node, this machine):
#   work         default; PreemptMode=REQUEUE (a preempted task goes back to the queue)
#   work-cancel  PreemptMode=CANCEL (a preempted task ends as PREEMPTED)
#   urgent       PriorityTier 2: its jobs preempt the two above, with the user signal first
#                (SlurmctldParameters=preempt_send_user_signal) so submitit can checkpoint.
# No cgroups: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none.
# Every daemon binds 127.0.0.1 (CommunicationParameters=NoCtldInAddrAny,NoInAddrAny with the node's
# address 127.0.0.1; slurmdbd with DbdAddr 127.0.0.1; MariaDB without networking).
#
#   bash scripts/slurm-local.sh            install (apt-get), configure, start, check
#   bash scripts/slurm-local.sh --stop     stop the daemons this script started
# Logs: /var/log/slurm/{slurmctld,slurmd,slurmdbd}.log. Exit 0 when `srun hostname` answered.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "slurm-local: run as root (it installs packages and starts daemons)" >&2
  exit 2
fi
start=$(date +%s)
say() { echo "slurm-local: $* ($(( $(date +%s) - start )) s)" >&2; }
CONF=/etc/slurm
HOST=$(hostname -s)
CLUSTER=masklab
DB_PASS=masklab-local  # the accounting database listens on a root-owned unix socket only

stop_pidfile() {  # stop the daemon of a pid file, waiting up to 20 s
  local file=$1 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$file"
}

if [ "${1:-}" = "--stop" ]; then
  stop_pidfile /run/slurm/slurmd.pid
  stop_pidfile /run/slurm/slurmctld.pid
  stop_pidfile /run/slurm/slurmdbd.pid
  stop_pidfile /run/mysqld/mariadb-local.pid
  stop_pidfile /run/munge/munged-local.pid
  stop_pidfile /run/munge/munged.pid  # munged's own (the one above may name a pid seen before it forked)
  say "stopped"
  exit 0
fi

# ---- packages ------------------------------------------------------------------------------------------
need=()
for cmd in sbatch slurmctld slurmd slurmdbd munged mariadbd; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$cmd")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing slurm-wlm, slurmdbd, munge and mariadb-server (missing: ${need[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d: the packages' postinst must not start services (no systemd here; we start them below)
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends slurm-wlm slurmdbd munge mariadb-server >/dev/null
  rm -f /usr/sbin/policy-rc.d
  trap - EXIT
fi

mkdir -p /run/slurm /var/log/slurm /var/log/mysql /var/spool/slurmctld /var/spool/slurmd /run/munge /run/mysqld
chown slurm:slurm /run/slurm /var/log/slurm /var/spool/slurmctld
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld /var/log/mysql

alive() { [ -f "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }
wait_for() {  # wait_for SECONDS WHAT COMMAND...: run COMMAND until it succeeds
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq $(( seconds * 5 ))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  say "ERROR: $what did not come up within $seconds s"
  return 1
}

# Every daemon gets /dev/null as its stdin, stdout and stderr (each logs to its own file): one that kept this
# script's output open would hold a caller's pipe (`bash scripts/slurm-local.sh | tee log`) open forever.
# ---- munge -----------------------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1
  pgrep -u munge -x munged | head -1 > /run/munge/munged-local.pid || true
  wait_for 20 munged sh -c 'munge -n | unmunge'
fi

# ---- MariaDB (unix socket only) ---------------------------------------------------------------------------
SOCK=/run/mysqld/mysqld.sock
if ! mariadb-admin --socket="$SOCK" ping >/dev/null 2>&1; then
  say "starting MariaDB (no networking: unix socket $SOCK)"
  if [ ! -d /var/lib/mysql/mysql ]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  fi
  runuser -u mysql -- /usr/sbin/mariadbd --skip-networking --socket="$SOCK" --pid-file=/run/mysqld/mariadb-local.pid \
    --datadir=/var/lib/mysql --innodb-buffer-pool-size=64M --log-error=/var/log/mysql/error.log </dev/null >/dev/null 2>&1 &
  disown
  wait_for 60 MariaDB mariadb-admin --socket="$SOCK" ping
fi
mariadb --socket="$SOCK" -u root <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

# ---- configuration ---------------------------------------------------------------------------------------
# The node as slurmd sees it (CPUs, sockets, memory), addressed as 127.0.0.1
node=$(slurmd -C | head -1 | sed -e "s/^NodeName=[^ ]*/NodeName=$HOST NodeAddr=127.0.0.1 NodeHostname=$HOST/")
write_if_changed() {  # write_if_changed FILE MODE OWNER (content on stdin); prints "changed" if it did
  local file=$1 mode=$2 owner=$3 tmp
  tmp=$(mktemp)
  cat > "$tmp"
  if [ -f "$file" ] && cmp -s "$tmp" "$file"; then
    rm -f "$tmp"
    return 0
  fi
  install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$tmp" "$file"
  rm -f "$tmp"
  echo changed
}
mkdir -p "$CONF"
changed_dbd=$(write_if_changed "$CONF/slurmdbd.conf" 600 slurm:slurm <<EOF
# written by masklab's scripts/slurm-local.sh
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=6819
CommunicationParameters=NoInAddrAny
SlurmUser=slurm
PidFile=/run/slurm/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=0
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
)
changed_ctl=$(write_if_changed "$CONF/slurm.conf" 644 root:root <<EOF
# written by masklab's scripts/slurm-local.sh: one node (this machine), loopback only, no cgroups
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
# a requeued job waits cred_expire seconds before it starts again (default 120): short, for quick tests
AuthInfo=cred_expire=10
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmctldPort=6817
SlurmdPort=6818
SrunPortRange=60001-60100
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobCompType=jobcomp/none
JobRequeue=1
KillWait=5
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
$node State=UNKNOWN
PartitionName=work Nodes=$HOST Default=YES PriorityTier=1 PreemptMode=REQUEUE MaxTime=INFINITE State=UP
PartitionName=work-cancel Nodes=$HOST PriorityTier=1 PreemptMode=CANCEL MaxTime=INFINITE State=UP
PartitionName=urgent Nodes=$HOST PriorityTier=2 PreemptMode=OFF MaxTime=INFINITE State=UP
EOF
)

# ---- daemons ---------------------------------------------------------------------------------------------
if [ -n "$changed_dbd" ]; then stop_pidfile /run/slurm/slurmdbd.pid; fi
if [ -n "$changed_ctl" ]; then
  stop_pidfile /run/slurm/slurmd.pid
  stop_pidfile /run/slurm/slurmctld.pid
fi
if ! alive /run/slurm/slurmdbd.pid; then
  say "starting slurmdbd"
  /usr/sbin/slurmdbd </dev/null >/dev/null 2>&1
  wait_for 60 slurmdbd sacctmgr -n list cluster
fi
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
  sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi
if ! alive /run/slurm/slurmctld.pid; then
  say "starting slurmctld"
  /usr/sbin/slurmctld </dev/null >/dev/null 2>&1
  wait_for 60 slurmctld scontrol ping
fi
if ! alive /run/slurm/slurmd.pid; then
  say "starting slurmd"
  /usr/sbin/slurmd -N "$HOST" </dev/null >/dev/null 2>&1
fi
# the node comes up idle; a node left DOWN or DRAINED by an earlier run is resumed
wait_for 60 "node $HOST" sh -c "sinfo -h -n $HOST -o %T | grep -qvE 'unknown|not_responding|down\\*'"
if sinfo -h -n "$HOST" -o %T | grep -qE 'down|drain'; then
  scontrol update NodeName="$HOST" State=RESUME || true
fi
out=$(timeout 60 srun --partition=work --time=1 hostname)
say "srun hostname answered: $out; partitions: $(sinfo -h -o %P | tr '\n' ' ')"
