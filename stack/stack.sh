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
# Environment (all optional):
#   CHANGES_POSTGRES_URL   use this existing database; no local PostgreSQL is started
#   CHANGES_KAFKA_BROKERS  use this existing Kafka cluster (comma-separated host:port); no local broker
#   CHANGES_STACK_DIR      data and logs (default: <repo>/.stack, git-ignored)
#   CHANGES_CACHE_DIR      cached Kafka jars (default: ${XDG_CACHE_HOME:-$HOME/.cache}/changes)
#   CHANGES_PG_PORT        local PostgreSQL port (default 55432)
#   CHANGES_KAFKA_PORT     local Kafka client port (default 59092; the controller uses the next one)
#   CHANGES_KAFKA_HEAP     broker heap (default 512m)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
stack_dir=${CHANGES_STACK_DIR:-$repo/.stack}
cache_dir=${CHANGES_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/changes}
pg_port=${CHANGES_PG_PORT:-55432}
kafka_port=${CHANGES_KAFKA_PORT:-59092}
ctrl_port=$((kafka_port + 1))
kafka_heap=${CHANGES_KAFKA_HEAP:-512m}
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$repo/stack/kafka/pom.xml")

pg_dir=$stack_dir/postgres
pg_socket_dir=/tmp/changes-pg-$pg_port
kafka_dir=$stack_dir/kafka
logs_dir=$stack_dir/logs
kafka_libs=$cache_dir/kafka-$kafka_version/libs

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# as_postgres runs a command as the postgres user when we are root: the server refuses root.
as_postgres() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u postgres -- "$@"
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

local_pg_url() { echo "postgres://postgres@127.0.0.1:$pg_port/changes?sslmode=disable"; }
local_brokers() { echo "127.0.0.1:$kafka_port"; }

# ---------------------------------------------------------------- PostgreSQL

pg_up() {
	if [ -n "${CHANGES_POSTGRES_URL:-}" ]; then
		log "postgres: using CHANGES_POSTGRES_URL, not starting a local server"
		return
	fi
	local bin; bin=$(pg_bin)
	mkdir -p "$pg_dir" "$logs_dir"
	if [ "$(id -u)" -eq 0 ]; then
		chown postgres: "$pg_dir" "$logs_dir"
		runuser -u postgres -- test -w "$pg_dir" ||
			die "the postgres user cannot write $pg_dir (a parent folder is closed to it): set CHANGES_STACK_DIR to a folder it can reach, e.g. /tmp/changes-stack"
	fi
	mkdir -p "$pg_socket_dir"
	[ "$(id -u)" -eq 0 ] && chown postgres: "$pg_socket_dir"
	if [ ! -f "$pg_dir/data/PG_VERSION" ]; then
		log "postgres: initdb into $pg_dir/data"
		as_postgres "$bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$logs_dir/initdb.log" 2>&1 ||
			die "initdb failed, see $logs_dir/initdb.log"
		cat >>"$pg_dir/data/postgresql.conf" <<EOF

# --- changes local stack ---
listen_addresses = '127.0.0.1'
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
EOF
	fi
	if as_postgres "$bin/pg_ctl" -D "$pg_dir/data" status >/dev/null 2>&1; then
		log "postgres: already running on 127.0.0.1:$pg_port"
	else
		port_open "$pg_port" && die "port $pg_port is taken by another program: set CHANGES_PG_PORT"
		log "postgres: starting on 127.0.0.1:$pg_port (log: $logs_dir/postgres.log)"
		as_postgres "$bin/pg_ctl" -D "$pg_dir/data" -l "$logs_dir/postgres.log" -w -t 60 start >/dev/null ||
			die "postgres did not start, see $logs_dir/postgres.log"
	fi
	local i
	for i in $(seq 1 60); do
		"$bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" && break
		sleep 0.5
	done
	"$bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" || die "postgres is not ready, see $logs_dir/postgres.log"
	if ! "$bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -tAc "select 1 from pg_database where datname='changes'" | grep -q 1; then
		"$bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -c "create database changes" >/dev/null
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
		-Dkafka.logs.dir="$logs_dir/kafka"
		-cp "$kafka_libs/*" "$@")
}

kafka_java() {
	local kafka_cmd_args
	kafka_java_args "$@"
	"${kafka_cmd_args[@]}"
}

kafka_pid() {
	local pid
	[ -f "$kafka_dir/kafka.pid" ] || return 1
	pid=$(cat "$kafka_dir/kafka.pid")
	kill -0 "$pid" 2>/dev/null || return 1
	echo "$pid"
}

kafka_up() {
	if [ -n "${CHANGES_KAFKA_BROKERS:-}" ]; then
		log "kafka: using CHANGES_KAFKA_BROKERS, not starting a local broker"
		return
	fi
	command -v java >/dev/null || die "java not found: install Java 17 (apt-get install openjdk-17-jre-headless)"
	if kafka_pid >/dev/null; then
		log "kafka: already running on $(local_brokers)"
		return
	fi
	port_open "$kafka_port" && die "port $kafka_port is taken by another program: set CHANGES_KAFKA_PORT"
	port_open "$ctrl_port" && die "port $ctrl_port (controller) is taken by another program: set CHANGES_KAFKA_PORT"
	kafka_fetch
	mkdir -p "$kafka_dir/data" "$logs_dir/kafka"
	cat >"$kafka_dir/server.properties" <<EOF
# Written by stack/stack.sh: a one-node KRaft broker for local use.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$ctrl_port
listeners=PLAINTEXT://127.0.0.1:$kafka_port,CONTROLLER://127.0.0.1:$ctrl_port
advertised.listeners=PLAINTEXT://127.0.0.1:$kafka_port
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$kafka_dir/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.backoff.ms=1000
delete.topic.enable=true
EOF
	if [ ! -f "$kafka_dir/data/meta.properties" ]; then
		local cluster_id
		cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid 2>"$logs_dir/kafka-format.log" | tail -n 1)
		[ -n "$cluster_id" ] || die "could not make a cluster id, see $logs_dir/kafka-format.log"
		log "kafka: formatting storage (cluster $cluster_id)"
		kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$kafka_dir/server.properties" --ignore-formatted \
			>>"$logs_dir/kafka-format.log" 2>&1 || die "kafka storage format failed, see $logs_dir/kafka-format.log"
	fi
	log "kafka: starting $kafka_version on $(local_brokers) (log: $logs_dir/kafka/server.log)"
	# Readiness is read from the log: start it afresh, or an earlier run's
	# "started" line would pass for this one's.
	[ -f "$logs_dir/kafka/server.log" ] && mv "$logs_dir/kafka/server.log" "$logs_dir/kafka/server.log.previous"
	# setsid: the broker outlives this script and does not get the terminal's signals.
	local kafka_cmd_args
	kafka_java_args kafka.Kafka "$kafka_dir/server.properties"
	setsid "${kafka_cmd_args[@]}" >"$logs_dir/kafka.out" 2>&1 </dev/null &
	echo $! >"$kafka_dir/kafka.pid"
	local i
	for i in $(seq 1 240); do
		if ! kafka_pid >/dev/null; then
			tail -n 20 "$logs_dir/kafka.out" >&2 || true
			die "kafka exited during start, see $logs_dir/kafka.out and $logs_dir/kafka/server.log"
		fi
		if port_open "$kafka_port" && grep -q "Kafka Server started" "$logs_dir/kafka/server.log" 2>/dev/null; then
			log "kafka: ready after $((i / 4)) s ($(local_brokers))"
			return
		fi
		sleep 0.25
	done
	die "kafka was not ready within 60 s, see $logs_dir/kafka/server.log"
}

kafka_down() {
	local pid i
	pid=$(kafka_pid) || return 0
	log "kafka: stopping (pid $pid)"
	kill -TERM "$pid"
	for i in $(seq 1 120); do
		kill -0 "$pid" 2>/dev/null || { rm -f "$kafka_dir/kafka.pid"; return 0; }
		sleep 0.25
	done
	log "kafka: did not stop within 30 s, killing"
	kill -KILL "$pid" 2>/dev/null || true
	rm -f "$kafka_dir/kafka.pid"
}

# ---------------------------------------------------------------- commands

print_env() {
	echo "export CHANGES_POSTGRES_URL='${CHANGES_POSTGRES_URL:-$(local_pg_url)}'"
	echo "export CHANGES_KAFKA_BROKERS='${CHANGES_KAFKA_BROKERS:-$(local_brokers)}'"
}

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
	elif pid=$(kafka_pid); then echo "kafka: running, pid $pid ($(local_brokers))"
	else echo "kafka: stopped"; fi
	;;
env)
	print_env
	;;
reset)
	kafka_down
	pg_down
	log "deleting $stack_dir"
	rm -rf "$stack_dir"
	;;
*)
	sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
	;;
esac
