#!/usr/bin/env bash
# stack.sh runs the local stack that the demo and the end-to-end tests use:
# PostgreSQL 15 (wal_level=logical) from the installed binaries and a one-node
# Apache Kafka 4.x broker (KRaft) from jars fetched from Maven Central.
# No Docker is needed.
#
#   stack/stack.sh up      start what is not running yet, wait until ready (idempotent)
#   stack/stack.sh down    stop both services cleanly
#   stack/stack.sh status  say what runs where
#   stack/stack.sh env     print the export lines that point the tests and the demo at the stack
#   stack/stack.sh reset   stop, then delete all data (the cached Kafka jars stay)
#
# Faults, for the fault suite (e2e/faults_test.go, make faults):
#   stack/stack.sh kafka-kill [N]    SIGKILL broker node N (default 1) and wait until it is gone
#   stack/stack.sh kafka-pause [N]   SIGSTOP broker node N; kafka-resume [N] sends SIGCONT
#   stack/stack.sh kafka-start       start the broker nodes that do not run (after kafka-kill)
#   stack/stack.sh pg-crash          stop PostgreSQL with -m immediate (a crash), then start it
#
# Environment (all optional):
#   CHANGES_POSTGRES_URL   use this existing database; no local PostgreSQL is started
#   CHANGES_KAFKA_BROKERS  use this existing Kafka cluster (comma-separated host:port); no local broker
#   CHANGES_STACK_ENV      set by `env`: the addresses it exported are this stack's own
#   CHANGES_STACK_DIR      data and logs (default: <repo>/.stack, git-ignored; PostgreSQL's data and
#                          log go to /var/tmp/changes-stack-<hash>/ when the postgres user cannot enter it)
#   CHANGES_CACHE_DIR      cached Kafka jars (default: ${XDG_CACHE_HOME:-$HOME/.cache}/changes)
#   CHANGES_PG_PORT        local PostgreSQL port (default 55432)
#   CHANGES_KAFKA_PORT     local Kafka client port (default 59092; the controller uses the next one)
#   CHANGES_STACK_HOST     the address PostgreSQL and Kafka listen on (default 127.0.0.1; the
#                          fault suite uses a veth address that a network namespace reaches)
#   CHANGES_KAFKA_NODES    KRaft nodes (default 1); 3 makes a cluster with replication factor 3
#                          and min.insync.replicas=2, node n on port CHANGES_KAFKA_PORT+2(n-1)
#   CHANGES_KAFKA_HEAP     heap per broker (default 512m, 384m with several nodes)
#   CHANGES_KAFKA_SECURITY plaintext (default) or sasl_ssl: the broker's only client listener is
#                          SASL_SSL (SCRAM-SHA-512, certificates from the stack's CA) with the
#                          standard authorizer; users admin (super user), capture, processors,
#                          serve, monitor and view get random passwords in <stack>/kafka/secrets/.
#                          Chosen when the broker's storage is formatted; kept afterwards.
#                          `env` then exports the admin's settings; `changes acls --apply` gives
#                          the other users what their role needs.
#
# TLS: at first start the stack makes a CA and a server certificate (openssl) in <stack>/tls/.
# PostgreSQL runs with ssl=on and `env` gives a URL with sslmode=verify-full against that CA.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
stack_dir=${CHANGES_STACK_DIR:-$repo/.stack}
cache_dir=${CHANGES_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/changes}
host=${CHANGES_STACK_HOST:-127.0.0.1}
pg_port=${CHANGES_PG_PORT:-55432}
kafka_port=${CHANGES_KAFKA_PORT:-59092}
ctrl_port=$((kafka_port + 1))
kafka_nodes=${CHANGES_KAFKA_NODES:-1}
kafka_heap=${CHANGES_KAFKA_HEAP:-$([ "$kafka_nodes" -gt 1 ] && echo 384m || echo 512m)}
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$repo/stack/kafka/pom.xml")

pg_dir=$stack_dir/postgres # or under /var/tmp: see own_env below
pg_socket_dir=/tmp/changes-pg-$pg_port
kafka_dir=$stack_dir/kafka
logs_dir=$stack_dir/logs
kafka_libs=$cache_dir/kafka-$kafka_version/libs
tls_dir=$stack_dir/tls

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

# PostgreSQL runs as the postgres user, which must reach its data folder. A
# clone in a home folder closed to others (root's is 0700 on Debian) keeps
# PostgreSQL's data and log in /var/tmp/changes-stack-<hash of the stack
# folder>/ instead; everything else stays in the stack folder.
if [ "$(id -u)" -eq 0 ] && id postgres >/dev/null 2>&1; then
	mkdir -p "$stack_dir"
	if ! runuser -u postgres -- test -x "$stack_dir" 2>/dev/null; then
		pg_dir=/var/tmp/changes-stack-$(printf '%s' "$stack_dir" | sha256sum | cut -c1-12)/postgres
	fi
fi
case "$pg_dir" in
"$stack_dir"/*) pg_log=$logs_dir/postgres.log ;;
*) pg_log=$pg_dir/postgres.log ;; # beside its data: the postgres user cannot reach the logs folder
esac

# The addresses `env` exports for this stack are its own, not a user's:
# after `eval "$(stack.sh env)"`, `up` must still start the stack. `env`
# marks them with CHANGES_STACK_ENV (the stack folder); another stack (a
# test's, with a folder of its own) takes them as a user's.
own_env() { [ "${CHANGES_STACK_ENV:-}" = "$stack_dir" ]; }
if own_env; then
	case "${CHANGES_POSTGRES_URL:-}" in "postgres://postgres@$host:$pg_port/changes?"*) unset CHANGES_POSTGRES_URL ;; esac
fi

port_open() { (exec 3<>"/dev/tcp/$host/$1") 2>/dev/null; }

# as_postgres runs a command as the postgres user when we are root: the server refuses root.
as_postgres() {
	if [ "$(id -u)" -eq 0 ]; then
		# From /: the current folder may be closed to the postgres user.
		(cd / && runuser -u postgres -- "$@")
	else
		"$@"
	fi
}

pg_bin() {
	local b
	for b in /usr/lib/postgresql/15/bin /usr/local/bin /usr/bin; do
		[ -x "$b/pg_ctl" ] && { echo "$b"; return; }
	done
	command -v pg_ctl >/dev/null || die "pg_ctl not found: install PostgreSQL 15 (apt-get install postgresql-15) or set CHANGES_POSTGRES_URL"
	dirname "$(command -v pg_ctl)"
}

# A stack made before PostgreSQL had TLS keeps its plaintext URL.
local_pg_url() {
	if [ -f "$pg_dir/data/server.crt" ]; then
		echo "postgres://postgres@$host:$pg_port/changes?sslmode=verify-full&sslrootcert=$tls_dir/ca.pem"
	else
		echo "postgres://postgres@$host:$pg_port/changes?sslmode=disable"
	fi
}

# ---------------------------------------------------------------- TLS

# tls_material makes, once per stack folder, a CA and a server certificate
# for localhost, 127.0.0.1 and the stack's host, in PEM: ca.pem, server.crt,
# server.key (PKCS#8) and server.pem (key then certificate, Kafka's PEM keystore).
tls_material() {
	[ -f "$tls_dir/server.pem" ] && return
	command -v openssl >/dev/null || die "openssl not found: install it (apt-get install openssl)"
	mkdir -p "$tls_dir"
	log "tls: making a CA and a server certificate in $tls_dir"
	(
		cd "$tls_dir"
		openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 -subj "/CN=changes local stack CA" 2>/dev/null
		openssl req -newkey rsa:2048 -nodes -keyout server.rsa -out server.csr -subj "/CN=localhost" 2>/dev/null
		printf 'subjectAltName=DNS:localhost,IP:127.0.0.1%s\n' "$([ "$host" != 127.0.0.1 ] && echo ",IP:$host")" >san.ext
		openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.crt -days 3650 -extfile san.ext 2>/dev/null
		openssl pkcs8 -topk8 -nocrypt -in server.rsa -out server.key
		cat server.key server.crt >server.pem
		rm -f server.csr server.rsa san.ext
		chmod 600 ca.key server.key server.pem
	) || die "openssl could not make the certificates in $tls_dir"
}

# ---------------------------------------------------------------- PostgreSQL

pg_up() {
	if [ -n "${CHANGES_POSTGRES_URL:-}" ]; then
		log "postgres: using CHANGES_POSTGRES_URL, not starting a local server"
		return
	fi
	local bin; bin=$(pg_bin)
	mkdir -p "$pg_dir" "$logs_dir"
	if [ "$(id -u)" -eq 0 ]; then
		chown postgres: "$pg_dir"
		case "$pg_log" in "$logs_dir"/*) chown postgres: "$logs_dir" ;; esac
		runuser -u postgres -- test -w "$pg_dir" ||
			die "the postgres user cannot write $pg_dir (a parent folder is closed to it): set CHANGES_STACK_DIR to a folder it can reach, e.g. /tmp/changes-stack"
		case "$pg_dir" in "$stack_dir"/*) ;; *) log "postgres: $stack_dir is closed to the postgres user; its data and log are in $pg_dir" ;; esac
	fi
	mkdir -p "$pg_socket_dir"
	[ "$(id -u)" -eq 0 ] && chown postgres: "$pg_socket_dir"
	if [ ! -f "$pg_dir/data/PG_VERSION" ]; then
		log "postgres: initdb into $pg_dir/data"
		as_postgres "$bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$logs_dir/initdb.log" 2>&1 ||
			die "initdb failed, see $logs_dir/initdb.log"
		cat >>"$pg_dir/data/postgresql.conf" <<EOF

# --- changes local stack ---
listen_addresses = '$host'
port = $pg_port
# A short path: a socket path must stay under 108 bytes, however deep the checkout.
unix_socket_directories = '$pg_socket_dir'
wal_level = logical
max_replication_slots = 32
max_wal_senders = 32
# A lost slot must be visible, not a full disk: cap what an idle slot may hold back.
max_slot_wal_keep_size = 4GB
wal_sender_timeout = 30s
log_min_messages = warning
# TLS with the stack's CA (stack/stack.sh env: sslmode=verify-full).
ssl = on
EOF
		tls_material
		cp "$tls_dir/server.crt" "$tls_dir/server.key" "$pg_dir/data/"
		chmod 600 "$pg_dir/data/server.key"
		[ "$(id -u)" -eq 0 ] && chown postgres: "$pg_dir/data/server.crt" "$pg_dir/data/server.key"
		if [ "$host" != 127.0.0.1 ]; then
			# Clients on the same subnet (the fault suite's network namespace).
			printf 'host all all samenet trust\nhost replication all samenet trust\n' >>"$pg_dir/data/pg_hba.conf"
		fi
	fi
	if as_postgres "$bin/pg_ctl" -D "$pg_dir/data" status >/dev/null 2>&1; then
		log "postgres: already running on $host:$pg_port"
	else
		port_open "$pg_port" && die "port $pg_port is taken by another program: set CHANGES_PG_PORT"
		log "postgres: starting on $host:$pg_port (log: $pg_log)"
		as_postgres "$bin/pg_ctl" -D "$pg_dir/data" -l "$pg_log" -w -t 60 start >/dev/null ||
			die "postgres did not start, see $pg_log"
	fi
	local i
	for i in $(seq 1 60); do
		"$bin/pg_isready" -q -h "$host" -p "$pg_port" && break
		sleep 0.5
	done
	"$bin/pg_isready" -q -h "$host" -p "$pg_port" || die "postgres is not ready, see $pg_log"
	if ! "$bin/psql" -h "$host" -p "$pg_port" -U postgres -d postgres -tAc "select 1 from pg_database where datname='changes'" | grep -q 1; then
		"$bin/psql" -q -h "$host" -p "$pg_port" -U postgres -d postgres -c "create database changes" >/dev/null
	fi
	log "postgres: ready ($(local_pg_url))"
}

pg_down() {
	[ -f "$pg_dir/data/PG_VERSION" ] || return 0
	local bin; bin=$(pg_bin)
	if as_postgres "$bin/pg_ctl" -D "$pg_dir/data" status >/dev/null 2>&1; then
		log "postgres: stopping"
		as_postgres "$bin/pg_ctl" -D "$pg_dir/data" -m fast -w -t 60 stop >/dev/null
	fi
}

# ---------------------------------------------------------------- Kafka

kafka_fetch() {
	if [ -f "$kafka_libs/.complete" ]; then
		return
	fi
	command -v mvn >/dev/null || die "mvn not found: install Maven (apt-get install maven) or set CHANGES_KAFKA_BROKERS"
	log "kafka: fetching Apache Kafka $kafka_version jars from Maven Central into $kafka_libs"
	rm -rf "$kafka_libs"
	mkdir -p "$kafka_libs" "$logs_dir"
	mvn -B -q -f "$repo/stack/kafka/pom.xml" dependency:copy-dependencies \
		-DincludeScope=runtime -DoutputDirectory="$kafka_libs" >"$logs_dir/maven.log" 2>&1 ||
		die "maven could not fetch the broker, see $logs_dir/maven.log"
	touch "$kafka_libs/.complete"
}

# kafka_java_args fills the array kafka_cmd_args with the broker's JVM command line for main class $1.
kafka_java_args() {
	kafka_cmd_args=(java -Xmx"$kafka_heap" -Xms"$kafka_heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
		-Djava.awt.headless=true
		-Dlog4j2.configurationFile="$repo/stack/kafka/log4j2.properties"
		-Dkafka.logs.dir="${node_logs:-$logs_dir/kafka}"
		-cp "$kafka_libs/*" "$@")
}

kafka_java() {
	local kafka_cmd_args
	kafka_java_args "$@"
	"${kafka_cmd_args[@]}"
}

# node_vars sets the variables of broker node $1: its folder, ports, logs and
# pid file. One node keeps the historical layout (kafka/data, kafka/kafka.pid,
# logs/kafka/); with CHANGES_KAFKA_NODES=N each node n has kafka/node<n>/ and
# logs/kafka<n>/, client port kafka_port+2(n-1) and the controller the next one.
node_vars() {
	node=$1
	if [ "$kafka_nodes" -eq 1 ]; then
		node_dir=$kafka_dir
		node_logs=$logs_dir/kafka
		node_out=$logs_dir/kafka.out
		node_port=$kafka_port
	else
		node_dir=$kafka_dir/node$node
		node_logs=$logs_dir/kafka$node
		node_out=$logs_dir/kafka$node.out
		node_port=$((kafka_port + 2 * (node - 1)))
	fi
	node_ctrl=$((node_port + 1))
}

kafka_voters() {
	local n v=""
	for n in $(seq 1 "$kafka_nodes"); do
		node_vars "$n"
		v="$v${v:+,}$n@$host:$node_ctrl"
	done
	echo "$v"
}

# node_pid prints the pid of broker node $1 (default 1) if it runs.
node_pid() {
	local pid
	node_vars "${1:-1}"
	[ -f "$node_dir/kafka.pid" ] || return 1
	pid=$(cat "$node_dir/kafka.pid")
	kill -0 "$pid" 2>/dev/null || return 1
	echo "$pid"
}

kafka_pid() { node_pid 1; }

# node_properties writes the server.properties of the current node. A
# cluster of three or more replicates everything three times and needs two
# in-sync replicas for a write.
node_properties() {
	local rf=1 isr=1
	if [ "$kafka_nodes" -gt 1 ]; then
		rf=$((kafka_nodes < 3 ? kafka_nodes : 3))
		isr=2
	fi
	mkdir -p "$node_dir/data" "$node_logs"
	local listeners
	if [ "$(kafka_security)" = sasl_ssl ]; then
		tls_material
		listeners="listeners=SASL_SSL://$host:$node_port,CONTROLLER://$host:$node_ctrl
advertised.listeners=SASL_SSL://$host:$node_port
inter.broker.listener.name=SASL_SSL
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"$(cat "$kafka_dir/secrets/admin.password")\";
ssl.keystore.type=PEM
ssl.keystore.location=$tls_dir/server.pem
ssl.truststore.type=PEM
ssl.truststore.location=$tls_dir/ca.pem
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
# ANONYMOUS: the controller listener inside the node; no client listener is plaintext.
super.users=User:admin;User:ANONYMOUS
allow.everyone.if.no.acl.found=false"
	else
		listeners="listeners=PLAINTEXT://$host:$node_port,CONTROLLER://$host:$node_ctrl
advertised.listeners=PLAINTEXT://$host:$node_port
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
	fi
	cat >"$node_dir/server.properties" <<EOF
# Written by stack/stack.sh: KRaft node $node of $kafka_nodes (broker and controller).
process.roles=broker,controller
node.id=$node
controller.quorum.voters=$(kafka_voters)
$listeners
log.dirs=$node_dir/data
num.partitions=1
auto.create.topics.enable=false
default.replication.factor=$rf
min.insync.replicas=$isr
unclean.leader.election.enable=false
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
log.cleaner.backoff.ms=1000
delete.topic.enable=true
EOF
}

# kafka_users are the SCRAM users of a sasl_ssl stack: the super user and
# one per role of `changes acls`.
kafka_users="admin capture processors serve monitor view"

# kafka_security prints the broker's security: what its storage was
# formatted with, else CHANGES_KAFKA_SECURITY (default plaintext).
kafka_security() {
	if [ -f "$kafka_dir/security" ]; then
		cat "$kafka_dir/security"
		return
	fi
	case "${CHANGES_KAFKA_SECURITY:-plaintext}" in
	plaintext | sasl_ssl) echo "${CHANGES_KAFKA_SECURITY:-plaintext}" ;;
	*) die "CHANGES_KAFKA_SECURITY must be plaintext or sasl_ssl, got ${CHANGES_KAFKA_SECURITY}" ;;
	esac
}

# kafka_secrets makes, once, a random password per SCRAM user.
kafka_secrets() {
	local u
	mkdir -p "$kafka_dir/secrets"
	chmod 700 "$kafka_dir/secrets"
	for u in $kafka_users; do
		[ -f "$kafka_dir/secrets/$u.password" ] && continue
		(umask 077 && openssl rand -hex 16 >"$kafka_dir/secrets/$u.password")
	done
}

# node_start formats (once) and starts the current node without waiting.
node_start() {
	port_open "$node_port" && die "port $node_port is taken by another program: set CHANGES_KAFKA_PORT"
	port_open "$node_ctrl" && die "port $node_ctrl (controller) is taken by another program: set CHANGES_KAFKA_PORT"
	local security scram=() u
	security=$(kafka_security)
	if [ "$security" = sasl_ssl ]; then
		kafka_secrets
		for u in $kafka_users; do
			scram+=(--add-scram "SCRAM-SHA-512=[name=$u,password=$(cat "$kafka_dir/secrets/$u.password")]")
		done
	fi
	node_properties
	if [ ! -f "$node_dir/data/meta.properties" ]; then
		# Every node of a cluster is formatted with the same cluster id.
		if [ ! -f "$kafka_dir/cluster.id" ]; then
			local cluster_id
			cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid 2>"$logs_dir/kafka-format.log" | tail -n 1)
			[ -n "$cluster_id" ] || die "could not make a cluster id, see $logs_dir/kafka-format.log"
			echo "$cluster_id" >"$kafka_dir/cluster.id"
		fi
		log "kafka: formatting storage of node $node (cluster $(cat "$kafka_dir/cluster.id"))"
		kafka_java kafka.tools.StorageTool format -t "$(cat "$kafka_dir/cluster.id")" -c "$node_dir/server.properties" --ignore-formatted \
			"${scram[@]}" >>"$logs_dir/kafka-format.log" 2>&1 || die "kafka storage format failed, see $logs_dir/kafka-format.log"
		echo "$security" >"$kafka_dir/security"
	fi
	log "kafka: starting $kafka_version node $node on $host:$node_port, $security (log: $node_logs/server.log)"
	# Readiness is read from the log: start it afresh, or an earlier run's
	# "started" line would pass for this one's.
	[ -f "$node_logs/server.log" ] && mv "$node_logs/server.log" "$node_logs/server.log.previous"
	# setsid: the broker outlives this script and does not get the terminal's signals.
	local kafka_cmd_args
	kafka_java_args kafka.Kafka "$node_dir/server.properties"
	setsid "${kafka_cmd_args[@]}" >"$node_out" 2>&1 </dev/null &
	echo $! >"$node_dir/kafka.pid"
}

# node_wait waits until the current node logged that it started.
node_wait() {
	local i
	# Up to 2 minutes: a node restarted on a busy 2-core machine, beside two
	# others, took longer than 60 s.
	for i in $(seq 1 480); do
		if ! node_pid "$node" >/dev/null; then
			tail -n 20 "$node_out" >&2 || true
			die "kafka node $node exited during start, see $node_out and $node_logs/server.log"
		fi
		if port_open "$node_port" && grep -q "Kafka Server started" "$node_logs/server.log" 2>/dev/null; then
			log "kafka: node $node ready after $((i / 4)) s ($host:$node_port)"
			return
		fi
		sleep 0.25
	done
	die "kafka node $node was not ready within 120 s, see $node_logs/server.log"
}

kafka_up() {
	if [ -n "${CHANGES_KAFKA_BROKERS:-}" ]; then
		log "kafka: using CHANGES_KAFKA_BROKERS, not starting a local broker"
		return
	fi
	command -v java >/dev/null || die "java not found: install Java 17 (apt-get install openjdk-17-jre-headless)"
	kafka_fetch
	mkdir -p "$kafka_dir" "$logs_dir"
	# Every node starts before any is waited for: a KRaft quorum needs a majority.
	local n started=()
	for n in $(seq 1 "$kafka_nodes"); do
		if node_pid "$n" >/dev/null; then
			log "kafka: node $n already running on $host:$node_port"
			continue
		fi
		node_start
		started+=("$n")
	done
	for n in "${started[@]}"; do
		node_vars "$n"
		node_wait
	done
}

# node_signal sends signal $2 (KILL, STOP, CONT) to broker node $1; KILL
# waits until the process is gone.
node_signal() {
	local pid i
	pid=$(node_pid "$1") || die "kafka node $1 is not running"
	node_vars "$1"
	log "kafka: SIG$2 to node $1 (pid $pid)"
	kill -"$2" "$pid"
	if [ "$2" = KILL ]; then
		for i in $(seq 1 100); do
			kill -0 "$pid" 2>/dev/null || { rm -f "$node_dir/kafka.pid"; return 0; }
			sleep 0.1
		done
		die "kafka node $1 (pid $pid) survived SIGKILL"
	fi
}

kafka_down() {
	local n pid i
	for n in $(seq 1 "$kafka_nodes"); do
		pid=$(node_pid "$n") || continue
		log "kafka: stopping node $n (pid $pid)"
		# A paused broker handles TERM only once continued.
		kill -CONT "$pid" 2>/dev/null || true
		kill -TERM "$pid"
	done
	for n in $(seq 1 "$kafka_nodes"); do
		pid=$(node_pid "$n") || continue
		node_vars "$n"
		for i in $(seq 1 120); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.25
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "kafka: node $n did not stop within 30 s, killing"
			kill -KILL "$pid" 2>/dev/null || true
		fi
		rm -f "$node_dir/kafka.pid"
	done
}

# pg_crash stops PostgreSQL as a crash would (-m immediate: no shutdown
# checkpoint, crash recovery at the next start) and starts it again.
pg_crash() {
	[ -n "${CHANGES_POSTGRES_URL:-}" ] && die "pg-crash needs the local PostgreSQL, not CHANGES_POSTGRES_URL"
	local bin; bin=$(pg_bin)
	log "postgres: immediate stop (as a crash), then start"
	as_postgres "$bin/pg_ctl" -D "$pg_dir/data" -m immediate -w -t 60 stop >/dev/null
	pg_up
}

local_brokers() {
	local n b=""
	for n in $(seq 1 "$kafka_nodes"); do
		node_vars "$n"
		b="$b${b:+,}$host:$node_port"
	done
	echo "$b"
}

# ---------------------------------------------------------------- commands

print_env() {
	echo "export CHANGES_STACK_ENV='$stack_dir'"
	echo "export CHANGES_POSTGRES_URL='${CHANGES_POSTGRES_URL:-$(local_pg_url)}'"
	echo "export CHANGES_KAFKA_BROKERS='${CHANGES_KAFKA_BROKERS:-$(local_brokers)}'"
	if [ -z "${CHANGES_KAFKA_BROKERS:-}" ] && [ "$(kafka_security)" = sasl_ssl ]; then
		echo "export CHANGES_KAFKA_TLS_CA_FILE='$tls_dir/ca.pem'"
		echo "export CHANGES_KAFKA_SASL_MECHANISM='SCRAM-SHA-512'"
		echo "export CHANGES_KAFKA_SASL_USERNAME='admin'"
		echo "export CHANGES_KAFKA_SASL_PASSWORD_FILE='$kafka_dir/secrets/admin.password'"
	fi
}

# Brokers that are this stack's own (see own_env) are not a user's.
if own_env && [ "${CHANGES_KAFKA_BROKERS:-}" = "$(local_brokers)" ]; then
	unset CHANGES_KAFKA_BROKERS
fi

case "${1:-}" in
up)
	start=$(date +%s)
	pg_up
	kafka_up
	log "stack ready in $(($(date +%s) - start)) s; logs in $logs_dir"
	;;
down)
	kafka_down
	pg_down
	;;
status)
	if [ -n "${CHANGES_POSTGRES_URL:-}" ]; then echo "postgres: external ($CHANGES_POSTGRES_URL)"
	elif port_open "$pg_port"; then echo "postgres: running ($(local_pg_url))"
	else echo "postgres: stopped"; fi
	if [ -n "${CHANGES_KAFKA_BROKERS:-}" ]; then echo "kafka: external ($CHANGES_KAFKA_BROKERS)"
	else
		for n in $(seq 1 "$kafka_nodes"); do
			node_vars "$n"
			if pid=$(node_pid "$n"); then echo "kafka: node $n running, pid $pid ($host:$node_port)"
			else echo "kafka: node $n stopped"; fi
		done
	fi
	;;
env)
	print_env
	;;
kafka-start)
	kafka_up
	;;
kafka-kill)
	node_signal "${2:-1}" KILL
	;;
kafka-pause)
	node_signal "${2:-1}" STOP
	;;
kafka-resume)
	node_signal "${2:-1}" CONT
	;;
pg-crash)
	pg_crash
	;;
reset)
	kafka_down
	pg_down
	log "deleting $stack_dir"
	rm -rf "$stack_dir"
	case "$pg_dir" in "$stack_dir"/*) ;; *) log "deleting $(dirname "$pg_dir")"; rm -rf "$(dirname "$pg_dir")" ;; esac
	# The demo's local copies of the tables (configs/local.yaml: storage)
	# belong to this stack's topics, wherever CHANGES_STACK_DIR puts it.
	if [ -d "$repo/.stack/changes-data" ]; then
		log "deleting $repo/.stack/changes-data (configs/local.yaml's storage)"
		rm -rf "$repo/.stack/changes-data"
	fi
	;;
*)
	sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
	;;
esac
