#!/usr/bin/env bash
# Run a real single-node Apache Kafka 4 broker (KRaft, combined broker+controller) on 127.0.0.1
# without Docker: the official jars come from Maven Central once into a version-keyed cache, the
# JVM runs in the background, and this script waits until clients can connect.
#
#   deploy/local/kafka.sh start  [--port N] [--dir DIR] [--set KEY=VALUE]... [--owner-pid PID] [--secure]
#   deploy/local/kafka.sh stop   [--dir DIR]
#   deploy/local/kafka.sh status [--dir DIR]
#
# start prints the bootstrap address (127.0.0.1:PORT) as the last line of stdout; everything meant
# for humans goes to stderr. start on a running broker just prints its address again. status exits
# 0 when the broker runs and 3 when it does not. See docs/local-broker.md for the knobs.
#
# --secure adds a SASL_SSL listener (SCRAM-SHA-512, TLS with a CA made here by keytool) with ACLs
# enforced (StandardAuthorizer, deny when no ACL matches); its address goes to
# $STATE_DIR/bootstrap-sasl-ssl, the CA to $STATE_DIR/tls/ca.pem, the SCRAM passwords of the users
# admin and agent to $STATE_DIR/sasl/<user>.password. The PLAINTEXT listener stays (its anonymous
# principal is a super user): a test broker, for admin work beside the secured clients.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/local/service-lib.sh
source "$SCRIPT_DIR/service-lib.sh"
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

KAFKA_VERSION=${KAFKA_VERSION:-4.4.0}
CACHE_ROOT=${ANOMALY_AGENT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kafka-anomaly-agent}
LIBS_DIR=$CACHE_ROOT/kafka/$KAFKA_VERSION/libs
STATE_DIR=${ANOMALY_AGENT_STATE_DIR:-$REPO_ROOT/var/kafka}
PORT=${KAFKA_PORT:-}
START_TIMEOUT=${KAFKA_START_TIMEOUT:-120}
STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}
HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}
# Serial GC and C1-only JIT: a test broker lives minutes on a shared 2-core box, where G1's
# concurrent threads and C2 compilation cost more start-up CPU than they ever pay back.
JVM_OPTS=${KAFKA_JVM_OPTS:--XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xss512k -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true}
JAVA=${JAVA_HOME:+$JAVA_HOME/bin/}java
KEYTOOL=""
# Class-data sharing: the first broker that stops cleanly dumps the classes it loaded into an
# archive beside the jars; later starts map it instead of parsing ~45 jars (about 40% faster).
KAFKA_CDS=${KAFKA_CDS:-1}
CDS_DIR=$CACHE_ROOT/kafka/$KAFKA_VERSION/cds
CDS_FILE=""
OWNER_PID=""
OVERRIDES=()
SECURE=0
# --secure: the SCRAM users created when the storage is formatted; the mechanism of the listener.
SASL_USERS=(admin agent)
SASL_MECHANISM=SCRAM-SHA-512

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

usage() {
	sed -n '6,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

# --- helpers -----------------------------------------------------------------------------------

# A free port other than the ones given (the ports of one start must differ from each other).
free_port_except() {
	local port
	port=$(free_port)
	while [[ " $* " == *" $port "* ]]; do port=$(free_port); done
	printf '%s\n' "$port"
}

# A random password: 32 characters of [A-Za-z0-9], so it needs no quoting in --add-scram syntax,
# in properties files or in a shell.
random_secret() {
	local secret=""
	while ((${#secret} < 32)); do
		secret+=$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
	done
	printf '%s\n' "${secret:0:32}"
}

running_pid() { pid_running "$PID_FILE" "kafka.Kafka $CONF_FILE"; }

require_tools() {
	command -v "$JAVA" >/dev/null || die "java not found; install a JDK 17+ (apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
	command -v python3 >/dev/null || die "python3 not found (used to pick free ports)"
	local settings spec
	settings=$("$JAVA" -XshowSettings:properties -version 2>&1)
	spec=$(sed -n 's/^ *java.specification.version = //p' <<<"$settings")
	[[ ${spec%%.*} -ge 17 ]] 2>/dev/null || die "Kafka $KAFKA_VERSION needs Java 17+, $JAVA is ${spec:-unknown}"
	# A CDS archive only fits the exact JVM build and flags that wrote it, hence the key.
	local key
	key=$(printf '%s\n' "$(grep -E '^ *java\.(home|runtime\.version) = ' <<<"$settings")" "$HEAP_OPTS" "$JVM_OPTS" |
		cksum | cut -d' ' -f1)
	CDS_FILE=$CDS_DIR/$key.jsa
	if [[ $SECURE == 1 ]]; then
		# The keytool of the JDK that runs the broker (java may be a symlink into it).
		local java_path
		java_path=$(command -v "$JAVA")
		KEYTOOL=$(dirname "$(readlink -f "$java_path")")/keytool
		[[ -x $KEYTOOL ]] || KEYTOOL=$(command -v keytool) ||
			die "keytool not found beside $java_path or on PATH; --secure makes its certificates with the JDK's keytool"
	fi
}

# Resolves kafka_2.13 and its runtime dependencies once per version. Maven writes into a temp dir
# beside the cache entry and the finished dir is renamed into place, so an interrupted download
# never leaves a half cache behind; a concurrent run that renamed first simply wins.
ensure_libs() {
	[[ -d $LIBS_DIR ]] && return 0
	command -v mvn >/dev/null || die "mvn not found; install Maven (apt-get install maven) to fetch the Kafka jars"
	local parent tmp
	parent=$(dirname "$LIBS_DIR")
	mkdir -p "$parent"
	tmp=$(mktemp -d "$parent/.libs.XXXXXX")
	# shellcheck disable=SC2064  # expand now: the trap must remove this very temp dir
	trap "rm -rf '$tmp'" EXIT
	log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS_DIR (once)"
	mvn -B -ntp -f "$SCRIPT_DIR/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
		dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp/libs" >"$tmp/mvn.log" 2>&1 ||
		{
			tail -n 40 "$tmp/mvn.log" >&2
			die "Maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION (output above)"
		}
	[[ -f $tmp/libs/kafka_2.13-$KAFKA_VERSION.jar ]] || die "Maven finished but kafka_2.13-$KAFKA_VERSION.jar is missing"
	mv -T "$tmp/libs" "$LIBS_DIR" 2>/dev/null || [[ -d $LIBS_DIR ]] || die "could not move the jars into $LIBS_DIR"
	rm -rf "$tmp"
	trap - EXIT
}

write_config() {
	local port=$1 cport=$2 sport=${3:-}
	local listeners="PLAINTEXT://127.0.0.1:$port" protocols="PLAINTEXT:PLAINTEXT"
	if [[ -n $sport ]]; then
		listeners+=",SASL_SSL://127.0.0.1:$sport"
		protocols+=",SASL_SSL:SASL_SSL"
	fi
	# The keystore password lands in this file: readable by the owner only (as the state dir's
	# tls/ and sasl/ are).
	[[ -n $sport ]] && (umask 077 && : >"$CONF_FILE" && chmod 0600 "$CONF_FILE")
	{
		echo "# Written by deploy/local/kafka.sh on every start; edit with --set KEY=VALUE instead."
		echo "process.roles=broker,controller"
		echo "node.id=1"
		echo "controller.quorum.voters=1@127.0.0.1:$cport"
		echo "listeners=$listeners,CONTROLLER://127.0.0.1:$cport"
		echo "advertised.listeners=$listeners"
		echo "listener.security.protocol.map=$protocols,CONTROLLER:PLAINTEXT"
		echo "inter.broker.listener.name=PLAINTEXT"
		echo "controller.listener.names=CONTROLLER"
		echo "log.dirs=$STATE_DIR/data"
		echo "num.partitions=1"
		echo "default.replication.factor=1"
		echo "min.insync.replicas=1"
		# Topics are created explicitly (AdminClient / the agent's set-up), as on most production
		# clusters; a typo in a topic name then fails loudly instead of creating a new topic.
		echo "auto.create.topics.enable=false"
		# Internal topics on one node: replication factor 1, few partitions so that the first
		# consumer group / transaction does not wait for 50 partitions to be created.
		echo "offsets.topic.replication.factor=1"
		echo "offsets.topic.num.partitions=5"
		echo "transaction.state.log.replication.factor=1"
		echo "transaction.state.log.min.isr=1"
		echo "transaction.state.log.num.partitions=5"
		echo "share.coordinator.state.topic.replication.factor=1"
		echo "share.coordinator.state.topic.min.isr=1"
		echo "group.initial.rebalance.delay.ms=0"
		echo "num.network.threads=2"
		echo "num.io.threads=4"
		echo "log.retention.hours=24"
		echo "log.segment.bytes=67108864"
		[[ -n $sport ]] && secure_config
		local kv
		for kv in ${OVERRIDES[@]+"${OVERRIDES[@]}"}; do echo "$kv"; done
	} >"$CONF_FILE"
}

# --secure: the SASL_SSL listener and the authorizer (appended to server.properties).
secure_config() {
	local mech=${SASL_MECHANISM,,}
	echo "# --secure: SASL_SSL with SCRAM for clients; every request is authorized by the ACLs."
	echo "sasl.enabled.mechanisms=$SASL_MECHANISM"
	echo "listener.name.sasl_ssl.sasl.enabled.mechanisms=$SASL_MECHANISM"
	echo "listener.name.sasl_ssl.$mech.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
	echo "listener.name.sasl_ssl.ssl.keystore.type=PKCS12"
	echo "listener.name.sasl_ssl.ssl.keystore.location=$TLS_DIR/broker.p12"
	echo "listener.name.sasl_ssl.ssl.keystore.password=$(<"$TLS_DIR/store.password")"
	echo "listener.name.sasl_ssl.ssl.key.password=$(<"$TLS_DIR/store.password")"
	echo "listener.name.sasl_ssl.ssl.client.auth=none"
	echo "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer"
	echo "allow.everyone.if.no.acl.found=false"
	# User:ANONYMOUS is every client of the PLAINTEXT and CONTROLLER listeners, this broker's own
	# inter-broker and controller traffic included: a super user, or the node could not talk to
	# itself. That is what makes this a test broker; see docs/local-broker.md.
	echo "super.users=User:admin;User:ANONYMOUS"
}

# keytool with the start-up flags of a short-lived JVM.
kt() {
	"$KEYTOOL" -J-XX:+UseSerialGC -J-XX:TieredStopAtLevel=1 "$@"
}

# --secure: a self-signed CA, the broker's PKCS12 keystore (key and certificate signed by the CA,
# SAN IP:127.0.0.1 and DNS:localhost, so clients verify the host name) and the CA as PEM for
# clients (librdkafka ssl.ca.location). Made once per state dir, in a temp dir renamed into place,
# so an interrupted run never leaves a half set; the certificates name no port and survive
# restarts on new ports.
ensure_tls() {
	if [[ -s $TLS_DIR/broker.p12 && -s $TLS_DIR/ca.pem && -s $TLS_DIR/store.password ]]; then
		return 0
	fi
	local tmp
	tmp=$(mktemp -d "$STATE_DIR/.tls.XXXXXX")
	# shellcheck disable=SC2064  # expand now: the trap must remove this very temp dir
	trap "rm -rf '$tmp'" EXIT
	(umask 077 && random_secret >"$tmp/store.password")
	local pass=(-storepass:file "$tmp/store.password" -keypass:file "$tmp/store.password")
	local days=3650 key=(-keyalg EC -groupname secp256r1 -sigalg SHA256withECDSA)
	log "making a test CA and the broker's TLS certificate in $TLS_DIR (keytool, once)"
	(
		umask 077
		kt -genkeypair -alias ca "${key[@]}" -dname "CN=kafka-anomaly-agent local test CA" \
			-validity "$days" -ext bc:c=ca:true -ext ku:c=keyCertSign,cRLSign \
			-storetype PKCS12 -keystore "$tmp/ca.p12" "${pass[@]}" &&
			kt -exportcert -rfc -alias ca -keystore "$tmp/ca.p12" "${pass[@]}" -file "$tmp/ca.pem" &&
			kt -genkeypair -alias broker "${key[@]}" -dname "CN=localhost" -validity "$days" \
				-storetype PKCS12 -keystore "$tmp/broker.p12" "${pass[@]}" &&
			kt -certreq -alias broker -keystore "$tmp/broker.p12" "${pass[@]}" -file "$tmp/broker.csr" &&
			kt -gencert -alias ca -keystore "$tmp/ca.p12" "${pass[@]}" -infile "$tmp/broker.csr" \
				-outfile "$tmp/broker.pem" -rfc -validity "$days" -sigalg SHA256withECDSA \
				-ext SAN=IP:127.0.0.1,DNS:localhost -ext ku:c=digitalSignature,keyAgreement \
				-ext eku=serverAuth &&
			kt -importcert -noprompt -alias ca -file "$tmp/ca.pem" -keystore "$tmp/broker.p12" "${pass[@]}" &&
			kt -importcert -alias broker -file "$tmp/broker.pem" -keystore "$tmp/broker.p12" "${pass[@]}"
	) >"$tmp/keytool.log" 2>&1 || {
		cat "$tmp/keytool.log" >&2
		die "keytool could not make the TLS certificates (output above)"
	}
	rm -f "$tmp/broker.csr"
	# Keys and passwords stay the owner's; the CA certificate is public, for any local client.
	chmod 0644 "$tmp/ca.pem"
	chmod 0755 "$tmp"
	rm -rf "$TLS_DIR"
	mv -T "$tmp" "$TLS_DIR"
	trap - EXIT
}

# --secure: a password file per SCRAM user, made once. SCRAM credentials can only be added when the
# storage is formatted (format_storage); later starts of the same state dir reuse both, so a state
# dir formatted without --secure, or one whose password files went missing, is refused here
# rather than started with credentials nobody knows.
ensure_sasl_users() {
	local user formatted=0
	[[ -f $STATE_DIR/data/meta.properties ]] && formatted=1
	if ((formatted)) && [[ ! -f $SASL_DIR/formatted ]]; then
		die "$STATE_DIR was formatted without --secure, so it has no SCRAM users; stop it and delete the state dir, or use another --dir"
	fi
	(umask 077 && mkdir -p "$SASL_DIR")
	for user in "${SASL_USERS[@]}"; do
		[[ -s $SASL_DIR/$user.password ]] && continue
		((formatted)) && die "$SASL_DIR/$user.password is missing, but the broker's SCRAM credentials were made with it; delete the state dir to start afresh"
		(umask 077 && random_secret >"$SASL_DIR/$user.password")
	done
}

format_storage() {
	[[ -f $STATE_DIR/data/meta.properties ]] && return 0
	local cid
	# A Kafka cluster id is 16 random bytes, base64url without padding; Kafka rejects ids
	# starting with '-', so draw again in that case.
	until [[ ${cid:-} =~ ^[A-Za-z0-9_] ]]; do
		cid=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
	done
	local cds_opts=() scram=() user
	[[ $KAFKA_CDS == 1 && -f $CDS_FILE ]] && cds_opts=(-XX:SharedArchiveFile="$CDS_FILE")
	if [[ $SECURE == 1 ]]; then
		# The SCRAM credentials go into the bootstrap metadata; the broker stores salted hashes only.
		for user in "${SASL_USERS[@]}"; do
			scram+=(--add-scram "$SASL_MECHANISM=[name=$user,password=$(<"$SASL_DIR/$user.password")]")
		done
		# Written first: a format that fails leaves no meta.properties and runs again next time.
		: >"$SASL_DIR/formatted"
	fi
	# shellcheck disable=SC2086  # HEAP_OPTS / JVM_OPTS are deliberately word-split
	"$JAVA" $HEAP_OPTS $JVM_OPTS ${cds_opts[@]+"${cds_opts[@]}"} -Dlog4j2.configurationFile="$SCRIPT_DIR/log4j2.properties" -Dkafka.logs.dir="$STATE_DIR" \
		-cp "$LIBS_DIR/*" kafka.tools.StorageTool format -t "$cid" -c "$CONF_FILE" ${scram[@]+"${scram[@]}"} >"$STATE_DIR/format.log" 2>&1 ||
		{
			cat "$STATE_DIR/format.log" >&2
			die "formatting KRaft storage in $STATE_DIR/data failed"
		}
}

show_log_tail() {
	log "last lines of $STATE_DIR/kafka.out and kafka.log:"
	tail -n 5 "$STATE_DIR/kafka.out" >&2 2>/dev/null || true
	tail -n 30 "$STATE_DIR/kafka.log" >&2 2>/dev/null || true
}

# After the broker exited: keep the CDS archive it dumped if it exited cleanly, else drop it.
settle_cds() {
	local clean=$1 tmp final
	[[ -f $CDS_PENDING ]] || return 0
	{
		read -r tmp
		read -r final
	} <"$CDS_PENDING"
	rm -f "$CDS_PENDING"
	if [[ $clean == 1 && -s $tmp ]]; then
		mv -f "$tmp" "$final"
	else
		rm -f "$tmp"
	fi
}

# Launches the JVM and waits for it. Returns 0 when ready, 2 when the listener port was taken
# (the caller may retry with fresh ports), dies otherwise.
launch() {
	local port=$1 cport=$2 sport=${3:-} pid log_offset=0 deadline
	write_config "$port" "$cport" "$sport"
	format_storage
	[[ -f $STATE_DIR/kafka.log ]] && log_offset=$(wc -c <"$STATE_DIR/kafka.log")
	local cds_opts=()
	rm -f "$CDS_PENDING"
	if [[ $KAFKA_CDS == 1 ]]; then
		if [[ -f $CDS_FILE ]]; then
			cds_opts=(-XX:SharedArchiveFile="$CDS_FILE")
		else
			# The JVM writes the archive when it exits; stop renames it into place only after a
			# clean exit, so a broker killed mid-dump never leaves a torn archive for the next one.
			mkdir -p "$CDS_DIR"
			find "$CDS_DIR" -maxdepth 1 -name '.*.tmp.jsa' -mmin +10 -delete
			printf '%s\n%s\n' "$CDS_DIR/.$(basename "$CDS_FILE" .jsa).$$.tmp.jsa" "$CDS_FILE" >"$CDS_PENDING"
			cds_opts=(-XX:ArchiveClassesAtExit="$(head -n 1 "$CDS_PENDING")")
		fi
	fi
	# Monitor mode gives the broker its own process group: Ctrl-C aimed at the caller (a shell, a
	# pytest run) does not kill it, and nohup keeps it alive when the terminal goes away.
	set -m
	# shellcheck disable=SC2086  # HEAP_OPTS / JVM_OPTS are deliberately word-split
	nohup "$JAVA" $HEAP_OPTS $JVM_OPTS ${cds_opts[@]+"${cds_opts[@]}"} \
		-Dlog4j2.configurationFile="$SCRIPT_DIR/log4j2.properties" -Dkafka.logs.dir="$STATE_DIR" \
		-cp "$LIBS_DIR/*" kafka.Kafka "$CONF_FILE" </dev/null >"$STATE_DIR/kafka.out" 2>&1 &
	pid=$!
	set +m
	echo "$pid" >"$PID_FILE"
	deadline=$((SECONDS + START_TIMEOUT))
	until port_open "$port" && { [[ -z $sport ]] || port_open "$sport"; } && tail -c "+$((log_offset + 1))" "$STATE_DIR/kafka.log" 2>/dev/null | grep -q "Kafka Server started"; do
		if ! kill -0 "$pid" 2>/dev/null; then
			rm -f "$PID_FILE"
			settle_cds 0
			if grep -qs "Address already in use" "$STATE_DIR/kafka.out" "$STATE_DIR/kafka.log"; then
				return 2
			fi
			show_log_tail
			die "the broker exited during start-up"
		fi
		if ((SECONDS >= deadline)); then
			show_log_tail
			terminate "$pid" || true
			rm -f "$PID_FILE"
			settle_cds 0
			die "the broker was not ready within ${START_TIMEOUT}s (KAFKA_START_TIMEOUT)"
		fi
		sleep 0.2
	done
	if [[ -n $OWNER_PID ]]; then
		start_watchdog kafka "$OWNER_PID" "$pid" "$SCRIPT_DIR/kafka.sh" "$STATE_DIR"
	fi
	return 0
}

# --- commands ----------------------------------------------------------------------------------

cmd_start() {
	local pid port cport sport="" ports attempt rc
	if pid=$(running_pid); then
		if [[ $SECURE == 1 && ! -s $SASL_ADDR_FILE ]]; then
			die "the broker in $STATE_DIR (pid $pid) runs without --secure; stop it first"
		fi
		log "already running (pid $pid, state dir $STATE_DIR)"
		[[ $SECURE == 1 ]] && log "SASL_SSL listener $(<"$SASL_ADDR_FILE") (in $SASL_ADDR_FILE)"
		cat "$ADDR_FILE"
		return 0
	fi
	rm -f "$PID_FILE" "$ADDR_FILE" "$SASL_ADDR_FILE"
	require_tools
	ensure_libs
	if [[ $SECURE == 1 ]]; then
		ensure_sasl_users
		ensure_tls
	fi
	local started=$SECONDS
	for attempt in 1 2 3; do
		if [[ -n $PORT ]]; then
			port=$PORT
			port_open "$port" && die "port $port is already in use"
		else
			port=$(free_port)
		fi
		cport=$(free_port_except "$port")
		ports="$port or $cport"
		if [[ $SECURE == 1 ]]; then
			sport=$(free_port_except "$port" "$cport")
			ports="$port, $sport or $cport"
		fi
		rc=0
		launch "$port" "$cport" "$sport" || rc=$?
		((rc == 0)) && break
		if [[ -n $PORT || $attempt -ge 3 ]]; then
			grep -h "failed to bind" "$STATE_DIR/kafka.out" "$STATE_DIR/kafka.log" | tail -n 1 >&2 || true
			die "port $ports is already in use"
		fi
		log "port $ports was taken meanwhile; retrying with fresh ports"
	done
	[[ $SECURE == 1 ]] && echo "127.0.0.1:$sport" >"$SASL_ADDR_FILE"
	echo "127.0.0.1:$port" >"$ADDR_FILE"
	log "Kafka $KAFKA_VERSION ready in $((SECONDS - started))s: pid $(<"$PID_FILE"), state dir $STATE_DIR, log $STATE_DIR/kafka.log"
	if [[ $SECURE == 1 ]]; then
		log "SASL_SSL ($SASL_MECHANISM) on 127.0.0.1:$sport (in $SASL_ADDR_FILE), CA $TLS_DIR/ca.pem, users ${SASL_USERS[*]} (passwords in $SASL_DIR/<user>.password)"
	fi
	cat "$ADDR_FILE"
}

cmd_stop() {
	local pid
	if ! pid=$(running_pid); then
		rm -f "$PID_FILE" "$ADDR_FILE" "$SASL_ADDR_FILE"
		log "not running (state dir $STATE_DIR)"
		return 0
	fi
	log "stopping pid $pid"
	local clean=1
	terminate "$pid" || clean=0
	settle_cds "$clean"
	rm -f "$PID_FILE" "$ADDR_FILE" "$SASL_ADDR_FILE"
	log "stopped"
}

cmd_status() {
	local pid
	if pid=$(running_pid); then
		local sasl=""
		[[ -s $SASL_ADDR_FILE ]] && sasl=", sasl_ssl bootstrap $(<"$SASL_ADDR_FILE")"
		echo "running: pid $pid, bootstrap $(<"$ADDR_FILE")$sasl, state dir $STATE_DIR, Kafka $KAFKA_VERSION"
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
	--set)
		[[ ${2:-} == *=* ]] || die "--set needs KEY=VALUE"
		OVERRIDES+=("$2")
		shift 2
		;;
	--owner-pid)
		OWNER_PID=${2:?--owner-pid needs a pid}
		shift 2
		;;
	--secure)
		SECURE=1
		shift
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
CONF_FILE=$STATE_DIR/server.properties
PID_FILE=$STATE_DIR/kafka.pid
CDS_PENDING=$STATE_DIR/cds-pending
ADDR_FILE=$STATE_DIR/bootstrap
SASL_ADDR_FILE=$STATE_DIR/bootstrap-sasl-ssl
TLS_DIR=$STATE_DIR/tls
SASL_DIR=$STATE_DIR/sasl

case $COMMAND in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
	usage
	die "unknown command: $COMMAND (start|stop|status)"
	;;
esac
