#!/usr/bin/env bash
# A one-node SLURM cluster on localhost for the tests (Debian's slurm-wlm + munge, no systemd).
#   tests/slurm/cluster.sh start    install when missing, configure, start, wait for the node (idempotent)
#   tests/slurm/cluster.sh stop     stop the daemons by their PID files
#   tests/slurm/cluster.sh status   exit 0 when the node answers and is usable
# Needs root. Partitions: cpu (default) and gpu, both on this node. The node declares 2 GPUs as GRES
# (gres.conf names /dev/nvidia0-1, created here as device nodes where none exist): SLURM then
# schedules --gpus requests against them and sets CUDA_VISIBLE_DEVICES in each job, as on a GPU
# cluster; there is no GPU behind them, so torch in such a job finds no usable device.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
GPUS=2
PIDS=(/run/slurm/slurmd.pid /run/slurm/slurmctld.pid /run/munge/munged.pid)

die() { echo "cluster.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts daemons)"

install() {
    if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
        echo "installing slurm-wlm and munge"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
    fi
}

gpu_devices() {
    local i
    for i in $(seq 0 $((GPUS - 1))); do
        # A character device like the driver's (major 195); a plain file where mknod is not allowed.
        [ -e /dev/nvidia$i ] || mknod -m 666 /dev/nvidia$i c 195 $i 2>/dev/null || touch /dev/nvidia$i
    done
}

# replace_if_changed NEW DEST WHAT: move NEW onto DEST when they differ (exit 0), else drop NEW (exit 1).
replace_if_changed() {
    if cmp -s "$1" "$2"; then
        rm -f "$1"
        return 1
    fi
    mv "$1" "$2"
    chmod 644 "$2"
    echo "wrote $2 ($3)"
}

write_conf() {
    local host cpus mem tmp gres_tmp changed=1
    host=$(hostname -s)
    # `slurmd -C` prints this node's hardware as slurm.conf would describe it.
    cpus=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -1)
    mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
    mem=$((mem * 9 / 10))
    mkdir -p /etc/slurm
    tmp=$(mktemp)
    cat >"$tmp" <<CONF
# Written by tests/slurm/cluster.sh: a one-node test cluster on localhost.
ClusterName=hpatest
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
GresTypes=gpu
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
# Finished jobs stay visible to squeue for 10 min: the executor, without sacct, polls with squeue.
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} Gres=gpu:${GPUS} State=UNKNOWN
PartitionName=cpu Nodes=${host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=${host} MaxTime=INFINITE State=UP
CONF
    gres_tmp=$(mktemp)
    echo "NodeName=${host} Name=gpu File=/dev/nvidia[0-$((GPUS - 1))]" >"$gres_tmp"
    replace_if_changed "$gres_tmp" "$GRES_CONF" "$GPUS GPUs" && changed=0
    replace_if_changed "$tmp" "$CONF" "node $host, $cpus CPUs, $mem MB, $GPUS GPUs" && changed=0
    return $changed
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_ready() {
    local state
    state=$(sinfo -h -n "$(hostname -s)" -o %T 2>/dev/null | head -1)
    case "$state" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac
}

start() {
    install
    gpu_devices
    local changed=0
    write_conf && changed=1
    if [ "$changed" -eq 0 ] && alive /run/slurm/slurmctld.pid && alive /run/slurm/slurmd.pid && node_ready; then
        echo "cluster already up"
        return 0
    fi
    stop >/dev/null 2>&1 || true
    mkdir -p /run/munge /run/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /var/log/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
    chmod 400 /etc/munge/munge.key
    chmod 755 /run/munge
    runuser -u munge -- /usr/sbin/munged
    /usr/sbin/slurmctld
    /usr/sbin/slurmd
    for _ in $(seq 1 60); do
        if node_ready; then
            echo "cluster up: $(sinfo -h -o '%P %T %c CPUs %m MB %G' | tr '\n' ';')"
            return 0
        fi
        # A node left DOWN by an earlier run of these daemons comes back on request.
        scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true
        sleep 1
    done
    tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    die "node not idle after 60 s"
}

stop() {
    local pid
    for f in "${PIDS[@]}"; do
        if alive "$f"; then
            pid=$(cat "$f")
            kill "$pid"
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$f"
    done
    echo "cluster stopped"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) alive /run/slurm/slurmctld.pid && alive /run/slurm/slurmd.pid && node_ready ;;
    *) die "usage: $0 start|stop|status" ;;
esac
