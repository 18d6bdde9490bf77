# shellcheck shell=bash
# Helpers shared by the local service scripts (kafka.sh, alertmanager.sh): ports, the pid of *our*
# server, stopping it, and the owner watchdog. Sourced, never run; the caller defines log() and
# STOP_TIMEOUT.

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# pid_running PID_FILE MARK: prints the pid in PID_FILE when it is a live process whose command
# line contains MARK (this state dir's server), so a recycled pid is never mistaken for (or
# killed as) ours.
pid_running() {
	local pid
	[[ -f $1 ]] || return 1
	pid=$(<"$1")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	ps -ww -p "$pid" -o args= 2>/dev/null | grep -qF -- "$2" || return 1
	printf '%s\n' "$pid"
}

# terminate PID: SIGTERM, then SIGKILL after STOP_TIMEOUT seconds (returns 1 then).
terminate() {
	local pid=$1 waited=0
	kill -TERM "$pid" 2>/dev/null || return 0
	while kill -0 "$pid" 2>/dev/null; do
		if ((waited >= STOP_TIMEOUT * 5)); then
			log "pid $pid still alive after ${STOP_TIMEOUT}s; sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			return 1
		fi
		sleep 0.2
		waited=$((waited + 1))
	done
}

# start_watchdog NAME OWNER_PID SERVER_PID SCRIPT STATE_DIR: stop the server (through SCRIPT's own
# stop) once the owning process, e.g. a pytest session, is gone, even if it was killed before it
# could run its teardown. When the server itself is gone first (stopped, or killed by a test), the
# watchdog just ends: running stop then would stop the *next* server started in the same state dir.
start_watchdog() {
	set -m
	# shellcheck disable=SC2016  # $1..$4 are expanded by the watchdog's own bash
	nohup bash -c '
		while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 2; done
		kill -0 "$2" 2>/dev/null || exit 0
		exec "$3" stop --dir "$4"
	' "$1-watchdog" "$2" "$3" "$4" "$5" </dev/null >>"$5/watchdog.log" 2>&1 &
	set +m
}
