#!/usr/bin/env bash
# Run a real Prometheus Alertmanager (Debian's prometheus-alertmanager package) on 127.0.0.1 for
# local work and the test suite: no gossip cluster, state in its own dir, one route to a receiver
# that notifies nobody. It receives what the agent's optional Alertmanager sink posts
# (exporters/alertmanager.py) and shows it in its UI and API.
#
#   deploy/local/alertmanager.sh start  [--port N] [--dir DIR] [--owner-pid PID]
#   deploy/local/alertmanager.sh stop   [--dir DIR]
#   deploy/local/alertmanager.sh status [--dir DIR]
#
# start prints the base URL (http://127.0.0.1:PORT) as the last line of stdout; everything meant
# for humans goes to stderr. start on a running server just prints its URL again. status exits 0
# when the server runs and 3 when it does not. When the binary is missing and this runs as root,
# start installs the package with apt-get (the packaged service is never started). See
# docs/operations.md#alertmanager.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/local/service-lib.sh
source "$SCRIPT_DIR/service-lib.sh"
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

ALERTMANAGER_BIN=${ALERTMANAGER_BIN:-/usr/bin/prometheus-alertmanager}
STATE_DIR=${ALERTMANAGER_STATE_DIR:-$REPO_ROOT/var/alertmanager}
PORT=${ALERTMANAGER_PORT:-}
START_TIMEOUT=${ALERTMANAGER_START_TIMEOUT:-60}
STOP_TIMEOUT=${ALERTMANAGER_STOP_TIMEOUT:-20}
# apt-get waits this long for the dpkg lock (another install, e.g. deploy/ci/install-tools.sh).
APT_LOCK_TIMEOUT=${ALERTMANAGER_APT_LOCK_TIMEOUT:-300}
OWNER_PID=""

log() { printf 'alertmanager.sh: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

usage() {
	sed -n '7,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

# --- helpers -----------------------------------------------------------------------------------

# 0 when GET /-/ready answers 200 (bash's /dev/tcp, so neither curl nor wget is needed).
ready() {
	local port=$1 status
	status=$(
		exec 2>/dev/null
		exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
		printf 'GET /-/ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
		timeout 2 head -n 1 <&3
	) || return 1
	[[ $status == "HTTP/1."?" 200"* ]]
}

running_pid() { pid_running "$PID_FILE" "--config.file=$CONF_FILE"; }

# The binary, installed from Debian's archive when missing and we are root. policy-rc.d 101 keeps
# the package's own service (on :9093, with its own storage) from ever starting: this script runs
# its server itself. Same pattern as deploy/ci/install-tools.sh.
ensure_binary() {
	if [[ -x $ALERTMANAGER_BIN ]]; then
		return 0
	fi
	if [[ $ALERTMANAGER_BIN != /usr/bin/prometheus-alertmanager ]]; then
		die "ALERTMANAGER_BIN=$ALERTMANAGER_BIN is not an executable"
	fi
	if [[ $(id -u) -ne 0 ]]; then
		die "$ALERTMANAGER_BIN not found; install it (sudo apt-get install prometheus-alertmanager) or run this as root"
	fi
	command -v apt-get >/dev/null || die "$ALERTMANAGER_BIN not found and there is no apt-get to install prometheus-alertmanager"
	log "installing Debian's prometheus-alertmanager (once)"
	export DEBIAN_FRONTEND=noninteractive
	local policy=/usr/sbin/policy-rc.d created_policy=0 rc=0
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
	fi
	{
		apt-get -o DPkg::Lock::Timeout="$APT_LOCK_TIMEOUT" update -qq &&
			apt-get -o DPkg::Lock::Timeout="$APT_LOCK_TIMEOUT" install -y -qq --no-install-recommends \
				prometheus-alertmanager
	} >"$STATE_DIR/apt.log" 2>&1 || rc=$?
	if ((created_policy)); then rm -f "$policy"; fi
	if ((rc != 0)); then
		tail -n 30 "$STATE_DIR/apt.log" >&2
		die "apt-get could not install prometheus-alertmanager (exit $rc, output above)"
	fi
	[[ -x $ALERTMANAGER_BIN ]] || die "prometheus-alertmanager installed, but $ALERTMANAGER_BIN is missing"
}

# A minimal configuration: every alert goes to a receiver without integrations, so Alertmanager
# stores, groups and serves alerts (API, UI) and notifies nobody. Short group_wait/interval so a
# developer sees groups form at once.
write_config() {
	cat >"$CONF_FILE" <<-'EOF'
		# Written by deploy/local/alertmanager.sh on every start.
		route:
		  receiver: "null"
		  group_by: ["alertname", "pattern_id"]
		  group_wait: 1s
		  group_interval: 5s
		  repeat_interval: 1h
		receivers:
		  - name: "null"
	EOF
}

show_log_tail() {
	log "last lines of $STATE_DIR/alertmanager.log:"
	tail -n 20 "$STATE_DIR/alertmanager.log" >&2 2>/dev/null || true
}

# Launches the server and waits until /-/ready answers 200. Returns 0 when ready, 2 when the port
# was taken (the caller may retry with a fresh one), dies otherwise.
launch() {
	local port=$1 pid deadline
	write_config
	# Monitor mode gives the server its own process group: Ctrl-C aimed at the caller (a shell, a
	# pytest run) does not kill it, and nohup keeps it alive when the terminal goes away.
	set -m
	nohup "$ALERTMANAGER_BIN" \
		--config.file="$CONF_FILE" \
		--storage.path="$STATE_DIR/data" \
		--web.listen-address="127.0.0.1:$port" \
		--cluster.listen-address= \
		--log.level=info \
		</dev/null >"$STATE_DIR/alertmanager.log" 2>&1 &
	pid=$!
	set +m
	echo "$pid" >"$PID_FILE"
	deadline=$((SECONDS + START_TIMEOUT))
	until ready "$port"; do
		if ! kill -0 "$pid" 2>/dev/null; then
			rm -f "$PID_FILE"
			if grep -qsi "address already in use" "$STATE_DIR/alertmanager.log"; then
				return 2
			fi
			show_log_tail
			die "Alertmanager exited during start-up"
		fi
		if ((SECONDS >= deadline)); then
			show_log_tail
			terminate "$pid" || true
			rm -f "$PID_FILE"
			die "Alertmanager was not ready within ${START_TIMEOUT}s (ALERTMANAGER_START_TIMEOUT)"
		fi
		sleep 0.1
	done
	if [[ -n $OWNER_PID ]]; then
		start_watchdog alertmanager "$OWNER_PID" "$pid" "$SCRIPT_DIR/alertmanager.sh" "$STATE_DIR"
	fi
	return 0
}

# --- commands ----------------------------------------------------------------------------------

cmd_start() {
	local pid port attempt rc
	if pid=$(running_pid); then
		log "already running (pid $pid, state dir $STATE_DIR)"
		cat "$URL_FILE"
		return 0
	fi
	rm -f "$PID_FILE" "$URL_FILE"
	command -v python3 >/dev/null || die "python3 not found (used to pick a free port)"
	ensure_binary
	mkdir -p "$STATE_DIR/data"
	local started=$SECONDS
	for attempt in 1 2 3; do
		if [[ -n $PORT ]]; then
			port=$PORT
			port_open "$port" && die "port $port is already in use"
		else
			port=$(free_port)
		fi
		rc=0
		launch "$port" || rc=$?
		((rc == 0)) && break
		if [[ -n $PORT || $attempt -ge 3 ]]; then
			die "port $port is already in use"
		fi
		log "port $port was taken meanwhile; retrying with a fresh port"
	done
	echo "http://127.0.0.1:$port" >"$URL_FILE"
	log "Alertmanager ready in $((SECONDS - started))s: pid $(<"$PID_FILE"), state dir $STATE_DIR, log $STATE_DIR/alertmanager.log"
	cat "$URL_FILE"
}

cmd_stop() {
	local pid
	if ! pid=$(running_pid); then
		rm -f "$PID_FILE" "$URL_FILE"
		log "not running (state dir $STATE_DIR)"
		return 0
	fi
	log "stopping pid $pid"
	terminate "$pid" || true
	rm -f "$PID_FILE" "$URL_FILE"
	log "stopped"
}

cmd_status() {
	local pid
	if pid=$(running_pid); then
		echo "running: pid $pid, url $(<"$URL_FILE"), state dir $STATE_DIR"
		return 0
	fi
	echo "not running (state dir $STATE_DIR)"
	return 3
}

# --- main --------------------------------------------------------------------------------------

[[ $# -ge 1 ]] || {
	usage
	exit 2
}
COMMAND=$1
shift
while [[ $# -gt 0 ]]; do
	case $1 in
	--port)
		PORT=${2:?--port needs a number}
		shift 2
		;;
	--dir)
		STATE_DIR=${2:?--dir needs a directory}
		shift 2
		;;
	--owner-pid)
		OWNER_PID=${2:?--owner-pid needs a pid}
		shift 2
		;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage
		die "unknown argument: $1"
		;;
	esac
done
[[ -z $PORT || $PORT =~ ^[0-9]+$ ]] || die "port must be a number, got '$PORT'"
[[ -z $OWNER_PID || $OWNER_PID =~ ^[0-9]+$ ]] || die "--owner-pid must be a number, got '$OWNER_PID'"

# Only start creates the state dir; stop/status on a missing one simply report "not running".
[[ $COMMAND == start ]] && mkdir -p "$STATE_DIR"
[[ $STATE_DIR == /* ]] || STATE_DIR=$PWD/$STATE_DIR
[[ -d $STATE_DIR ]] && STATE_DIR=$(cd "$STATE_DIR" && pwd -P)
CONF_FILE=$STATE_DIR/alertmanager.yml
PID_FILE=$STATE_DIR/alertmanager.pid
URL_FILE=$STATE_DIR/url

case $COMMAND in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
	usage
	die "unknown command: $COMMAND (start|stop|status)"
	;;
esac
