#!/usr/bin/env bash
# A real single-node SLURM on this machine, for tests/test_slurm.py (CI runs it before `make test-slurm`).
#
# Run as root (it installs packages, writes /etc/slurm/slurm.conf and starts daemons):
#   sudo .ci/slurm-setup.sh            # about 15 s when it installs the packages, 1-2 s when they are there
#   sudo .ci/slurm-setup.sh --stop     # stop the daemons it started (slurmd, slurmctld, munged)
#
# What it does, idempotently (run it again at any time: it only does what is missing):
#   1. apt-get installs Debian's slurm-wlm (slurmctld, slurmd, slurm-client) and munge if any is missing;
#   2. writes a minimal single-node /etc/slurm/slurm.conf for this host: its real CPUs and memory (`slurmd -C`),
#      one partition "debug", no cgroups (proctrack/linuxproc, task/none: works in containers), daemons as root,
#      everything on 127.0.0.1. A slurm.conf it did not write is left alone (the script stops with an error);
#   3. starts munged, slurmctld and slurmd directly (no systemd: CI containers have none) unless running;
#   4. waits (up to SLURM_SETUP_TIMEOUT seconds, default 120) until `sinfo` shows the node idle.
# Logs: /var/log/slurm/slurmctld.log, /var/log/slurm/slurmd.log, /var/log/munge/munged.log.
set -euo pipefail

MARKER="# written by clustermass .ci/slurm-setup.sh"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
TIMEOUT="${SLURM_SETUP_TIMEOUT:-120}"
NODE="$(hostname -s)"

say() { echo "slurm-setup: $*"; }
die() { echo "slurm-setup: error: $*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "run me as root (sudo $0): I install packages, write $CONF and start daemons"

pid_alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [[ "${1:-}" == "--stop" ]]; then
    for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
        if pid_alive "$pidfile"; then
            say "stopping $(basename "$pidfile" .pid) (pid $(cat "$pidfile"))"
            kill "$(cat "$pidfile")"
        fi
    done
    exit 0
fi

# --- 1. packages ----------------------------------------------------------------------------------------------
missing=()
for tool in slurmctld:slurmctld slurmd:slurmd sinfo:slurm-client munged:munge; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
    say "installing slurm-wlm munge (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null; }
    apt_install || { apt-get update -q >/dev/null && apt_install; } || die "apt-get install slurm-wlm munge failed"
fi

# --- 2. slurm.conf --------------------------------------------------------------------------------------------
if [[ -e "$CONF" ]] && ! grep -qxF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; not touching a real SLURM configuration"
fi
# the node's real hardware, as slurmd sees it: "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105"
hardware="$(slurmd -C | head -n1 | sed -E 's/^NodeName=[^ ]+ //')"
[[ "$hardware" == *CPUs=* && "$hardware" == *RealMemory=* ]] || die "unexpected 'slurmd -C' output: $hardware"
mkdir -p "$CONF_DIR" /var/log/slurm /var/spool/slurmctld /var/spool/slurmd
new_conf="$(cat <<EOF
$MARKER
# A single-node cluster on 127.0.0.1 for tests/test_slurm.py. Regenerated on every run of the script.
ClusterName=clustermass-ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# no cgroups: they are often unavailable or read-only in containers
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# a node that went down (e.g. the machine was restarted) comes back when slurmd registers again
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=60
NodeName=$NODE NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)"
reconfigure=0
if [[ ! -e "$CONF" ]] || [[ "$(cat "$CONF")" != "$new_conf" ]]; then
    printf '%s\n' "$new_conf" > "$CONF"
    reconfigure=1
    say "wrote $CONF: NodeName=$NODE $hardware"
fi

# --- 3. daemons -----------------------------------------------------------------------------------------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
    [[ -s /etc/munge/munge.key ]] || { mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null || \
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; }
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

if ((reconfigure)); then  # a changed slurm.conf: restart the daemons that run with the old one
    for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
        if pid_alive "$pidfile"; then
            say "restarting $(basename "$pidfile" .pid) for the new slurm.conf"
            kill "$(cat "$pidfile")"
            for _ in $(seq 40); do pid_alive "$pidfile" || break; sleep 0.25; done
        fi
    done
fi
if ! pid_alive /run/slurmctld.pid; then
    say "starting slurmctld"
    /usr/sbin/slurmctld
fi
if ! pid_alive /run/slurmd.pid; then
    say "starting slurmd"
    /usr/sbin/slurmd
fi

# --- 4. wait for the node -------------------------------------------------------------------------------------
state=""
deadline=$((SECONDS + TIMEOUT))
while ((SECONDS < deadline)); do
    state="$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1 || true)"
    case "$state" in
        idle|mixed|allocated) break ;;
        down*|drain*|drained*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 1
done
if [[ "$state" != idle && "$state" != mixed && "$state" != allocated ]]; then
    tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    die "node $NODE is '${state:-not known to slurmctld}' after ${TIMEOUT} s (logs above)"
fi
sinfo -N -l
say "SLURM is up: node $NODE $state"
