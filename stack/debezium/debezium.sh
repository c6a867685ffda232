#!/usr/bin/env bash
# debezium.sh runs Debezium's PostgreSQL connector in a Kafka Connect standalone worker,
# from jars fetched from Maven Central (stack/debezium/pom.xml), next to the local stack
# (stack/stack.sh), so that benchmarks can run Debezium side by side with changes.
# Each connector NAME gets its own worker JVM, REST port and state folder.
#
#   stack/debezium/debezium.sh fetch        download Connect + the Debezium plugin once (idempotent, quiet if cached)
#   stack/debezium/debezium.sh start NAME   write the worker and connector config, start the worker in the background
#   stack/debezium/debezium.sh wait NAME    wait until the connector's task is RUNNING and streaming (DBZ_WAIT_TIMEOUT s, default 180)
#   stack/debezium/debezium.sh status NAME  process, RSS, Connect's status of the connector, its slot's lag, its topics
#   stack/debezium/debezium.sh stop NAME    stop the worker cleanly (offsets are flushed; slot, publication, topics stay)
#   stack/debezium/debezium.sh topics NAME  print "topic<TAB>messages" for the connector's topics
#   stack/debezium/debezium.sh drop NAME    stop, then drop the slot and publication, delete the topics and the state folder
#
# Environment (all optional except DBZ_TABLES for start):
#   CHANGES_POSTGRES_URL   database to capture (postgres://user[:password]@host[:port]/db?...; default the local stack's)
#   DBZ_PG_HOST DBZ_PG_PORT DBZ_PG_DB DBZ_PG_USER DBZ_PG_PASSWORD   override the parts of that URL
#   CHANGES_KAFKA_BROKERS  Kafka bootstrap servers (default 127.0.0.1:59092); DBZ_KAFKA_BROKERS overrides
#   DBZ_TABLES             table.include.list, e.g. public.orders,public.items (required: start refuses to capture all tables)
#   DBZ_SLOT               replication slot (default NAME with non [a-z0-9_] characters made _)
#   DBZ_PUBLICATION        publication (default <slot>_pub)
#   DBZ_TOPIC_PREFIX       topic.prefix; events go to <prefix>.<schema>.<table> (default NAME)
#   DBZ_SNAPSHOT_MODE      snapshot.mode (default no_data, see below)
#   DBZ_REST_PORT          Connect REST port on 127.0.0.1 (default 58083; one per running NAME)
#   DBZ_HEAP               max heap, -Xmx (default 2g, as Kafka's connect-standalone.sh; -Xms256m as it too)
#   DBZ_CONNECTOR_EXTRA    extra connector properties, one key=value per line (tuning; recorded in the config file)
#   DBZ_WORKER_EXTRA       extra worker properties, one key=value per line
#   CHANGES_STACK_DIR      state root (default <repo>/.stack); NAME's state is in $CHANGES_STACK_DIR/debezium/NAME
#   CHANGES_CACHE_DIR      jar cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/changes); jars in debezium-<version>/
#
# ---------------------------------------------------------------- how Debezium is configured
# Debezium 3.6.1.Final and Kafka Connect 4.1.1 run with their defaults except for what is
# listed here. Every setting that this script writes, and why:
#
# Worker (worker.properties):
#   bootstrap.servers=<brokers>                          where Kafka is
#   key.converter / value.converter=org.apache.kafka.connect.json.JsonConverter
#   key.converter.schemas.enable=false                   plain JSON keys and values, without the
#   value.converter.schemas.enable=false                 schema envelope (Connect's default is true)
#   offset.storage.file.filename=<state>/offsets.dat     standalone keeps source offsets (the LSN) in a file
#   offset.flush.interval.ms=1000                        default 60000. Debezium confirms an LSN to the slot
#                                                        only when Connect commits offsets, so with the
#                                                        default the slot would lag up to a minute
#   plugin.path=<cache>/plugins                          the unpacked Debezium plugin archive
#   listeners=http://127.0.0.1:<DBZ_REST_PORT>           default :8083 on all interfaces; one port per worker
#   plugin.discovery=service_load                        default hybrid_warn also scans every class of the
#                                                        plugin and of the classpath by reflection (11-15 s
#                                                        of a 15-26 s start here) and then logs "All plugins
#                                                        have ServiceLoader manifests, consider reconfiguring
#                                                        plugin.discovery=service_load". Start-up time only.
#   (not set, so default: topic.creation.enable=true,
#    offset.flush.timeout.ms=5000, task.shutdown.graceful.timeout.ms=5000)
#
# Connector (connector.properties):
#   connector.class=io.debezium.connector.postgresql.PostgresConnector, tasks.max=1 (it has only one task)
#   database.hostname/port/user/password/dbname          from CHANGES_POSTGRES_URL or DBZ_PG_*
#   plugin.name=pgoutput                                 PostgreSQL's built-in output plugin (Debezium's
#                                                        default is decoderbufs, an extension not installed)
#   slot.name, publication.name                          unique per NAME, so runs do not share a slot
#   publication.autocreate.mode=filtered                 the publication covers only table.include.list
#                                                        (default all_tables would publish every table)
#   table.include.list=<DBZ_TABLES>
#   topic.prefix=<DBZ_TOPIC_PREFIX>
#   snapshot.mode=no_data (default initial)              no read of existing rows (op "r" events) at the
#       first start: the first start only creates the publication and the slot and streams what follows.
#       For a catch-up benchmark: start once (slot made), `stop`, run the workload, then `start` again:
#       the connector resumes from its offsets / the slot's confirmed_flush_lsn and drains the backlog
#       from the slot, and the topic then holds exactly the workload's changes. With `initial` the first
#       start would also copy the table's current rows. (A later start with offsets never snapshots.)
#   topic.creation.default.replication.factor=1          the local broker has auto.create.topics.enable=false:
#   topic.creation.default.partitions=1                  Connect creates Debezium's topics itself (KIP-158),
#                                                        1 partition like the broker's num.partitions
# Left at their defaults: max.batch.size=2048, max.queue.size=8192, poll.interval.ms=500,
#   heartbeat.interval.ms=0 (no heartbeats), slot.drop.on.stop=false, decimal.handling.mode=precise,
#   time.precision.mode=adaptive, tombstones.on.delete=true (a delete is followed by a null-value record),
#   provide.transaction.metadata=false, snapshot.fetch.size etc. Debezium logs its whole
#   configuration at start (connect.log, "PostgresConnectorConfig values").
#
# Connect's source-task producer (Worker.baseProducerConfigs; connect.log "ProducerConfig values"):
#   acks=all, max.in.flight.requests.per.connection=1, delivery.timeout.ms=2147483647 (retry forever),
#   enable.idempotence=false (off because in-flight is 1 and it is not asked for), linger.ms=5
#   (the kafka-clients 4.x default), batch.size=16384, compression.type=none,
#   key/value ByteArraySerializer. Change per connector with producer.override.* in DBZ_CONNECTOR_EXTRA
#   (the worker's default connector.client.config.override.policy=All allows it).
# JVM: -Xms256m -Xmx$DBZ_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20
#   -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent (Kafka's kafka-run-class.sh flags).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
stack_dir=${CHANGES_STACK_DIR:-$repo/.stack}
cache_dir=${CHANGES_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/changes}
dbz_version=$(sed -n 's:.*<debezium.version>\(.*\)</debezium.version>.*:\1:p' "$here/pom.xml")
home=$cache_dir/debezium-${dbz_version%.Final}
libs=$home/libs
plugins=$home/plugins

log() { printf '[debezium] %s\n' "$*" >&2; }
die() { printf '[debezium] error: %s\n' "$*" >&2; exit 1; }

usage() {
	sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
}

now_ms() { date +%s%3N; }

# ---------------------------------------------------------------- fetch

fetch() {
	[ -f "$home/.complete" ] && return
	command -v mvn >/dev/null || die "mvn not found: install Maven (apt-get install maven)"
	log "fetching Kafka Connect and Debezium $dbz_version from Maven Central into $home"
	rm -rf "$libs" "$plugins" "$home/.markers"
	mkdir -p "$home"
	mvn -B -q -f "$here/pom.xml" \
		dependency:copy-dependencies@connect-libs dependency:unpack@debezium-plugin \
		-Ddbz.libs="$libs" -Ddbz.plugins="$plugins" -Ddbz.markers="$home/.markers" >"$home/maven.log" 2>&1 ||
		die "maven could not fetch Connect/Debezium, see $home/maven.log"
	[ -f "$plugins/debezium-connector-postgres/debezium-connector-postgres-$dbz_version.jar" ] ||
		die "the Debezium plugin archive did not unpack into $plugins, see $home/maven.log"
	touch "$home/.complete"
}

# ---------------------------------------------------------------- configuration

# pg_parts sets pg_host pg_port pg_db pg_user pg_password from CHANGES_POSTGRES_URL and DBZ_PG_*.
# (No %-decoding: a password with URL-special characters goes in DBZ_PG_PASSWORD.)
pg_parts() {
	local url rest creds hostport
	url=${CHANGES_POSTGRES_URL:-postgres://postgres@127.0.0.1:${CHANGES_PG_PORT:-55432}/changes}
	rest=${url#*://}
	rest=${rest%%\?*}
	creds=
	if [[ $rest == *@* ]]; then
		creds=${rest%@*}
		rest=${rest##*@}
	fi
	hostport=${rest%%/*}
	pg_db=postgres
	[[ $rest == */* ]] && pg_db=${rest#*/}
	pg_user=${creds%%:*}
	pg_password=
	[[ $creds == *:* ]] && pg_password=${creds#*:}
	pg_host=${hostport%%:*}
	pg_port=5432
	[[ $hostport == *:* ]] && pg_port=${hostport##*:}
	pg_host=${DBZ_PG_HOST:-${pg_host:-127.0.0.1}}
	pg_port=${DBZ_PG_PORT:-$pg_port}
	pg_db=${DBZ_PG_DB:-${pg_db:-postgres}}
	pg_user=${DBZ_PG_USER:-${pg_user:-postgres}}
	pg_password=${DBZ_PG_PASSWORD:-$pg_password}
}

# psql_c runs one SQL statement against the captured database, printing unaligned tuples.
psql_c() {
	PGPASSWORD=$pg_password psql -X -q -v ON_ERROR_STOP=1 -h "$pg_host" -p "$pg_port" -U "$pg_user" -d "$pg_db" -tAc "$1"
}

brokers() { echo "${DBZ_KAFKA_BROKERS:-${CHANGES_KAFKA_BROKERS:-127.0.0.1:${CHANGES_KAFKA_PORT:-59092}}}"; }

check_name() {
	[ -n "${1:-}" ] || usage
	[[ $1 =~ ^[A-Za-z0-9_.-]+$ ]] || die "NAME may hold only letters, digits, '_', '.', '-': $1"
	name=$1
	state=$stack_dir/debezium/$name
}

# prop KEY FILE prints the value of a key=value line.
prop() { sed -n "s/^$1=//p" "$2" 2>/dev/null | tail -n 1; }

rest_port() {
	local p
	p=$(cat "$state/rest.port" 2>/dev/null) || true
	echo "${p:-${DBZ_REST_PORT:-58083}}"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

worker_pid() {
	local pid
	[ -f "$state/pid" ] || return 1
	pid=$(cat "$state/pid")
	kill -0 "$pid" 2>/dev/null || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q ConnectStandalone || return 1
	echo "$pid"
}

rest_status() { curl -fsS --max-time 5 "http://127.0.0.1:$(rest_port)/connectors/$name/status" 2>/dev/null; }

# task_state prints the state of task 0 from Connect's status JSON (no jq needed).
task_state() { sed -n 's/.*"tasks":\[{[^]]*"state":"\([A-Z]*\)".*/\1/p'; }

# ---------------------------------------------------------------- commands

start() {
	command -v java >/dev/null || die "java not found: install Java 17 (apt-get install openjdk-17-jre-headless)"
	if pid=$(worker_pid); then
		log "$name: already running (pid $pid, REST port $(rest_port))"
		return
	fi
	[ -n "${DBZ_TABLES:-}" ] || die "set DBZ_TABLES (table.include.list), e.g. DBZ_TABLES=public.items"
	local port=${DBZ_REST_PORT:-58083}
	port_open "$port" && die "REST port $port is taken: set DBZ_REST_PORT"
	fetch
	pg_parts
	local slot=${DBZ_SLOT:-$(echo "$name" | tr 'A-Z' 'a-z' | tr -c 'a-z0-9_\n' '_')}
	local publication=${DBZ_PUBLICATION:-${slot}_pub}
	local prefix=${DBZ_TOPIC_PREFIX:-$name}
	mkdir -p "$state"
	echo "$port" >"$state/rest.port"
	cat >"$state/worker.properties" <<EOF
# Written by stack/debezium/debezium.sh (see its comment block for why each setting is here).
bootstrap.servers=$(brokers)
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=false
value.converter.schemas.enable=false
offset.storage.file.filename=$state/offsets.dat
offset.flush.interval.ms=1000
plugin.path=$plugins
listeners=http://127.0.0.1:$port
plugin.discovery=service_load
${DBZ_WORKER_EXTRA:-}
EOF
	cat >"$state/connector.properties" <<EOF
# Written by stack/debezium/debezium.sh (see its comment block for why each setting is here).
name=$name
connector.class=io.debezium.connector.postgresql.PostgresConnector
tasks.max=1
database.hostname=$pg_host
database.port=$pg_port
database.user=$pg_user
database.password=$pg_password
database.dbname=$pg_db
plugin.name=pgoutput
slot.name=$slot
publication.name=$publication
publication.autocreate.mode=filtered
table.include.list=$DBZ_TABLES
topic.prefix=$prefix
snapshot.mode=${DBZ_SNAPSHOT_MODE:-no_data}
topic.creation.default.replication.factor=1
topic.creation.default.partitions=1
${DBZ_CONNECTOR_EXTRA:-}
EOF
	chmod 600 "$state/connector.properties"
	# Readiness is read from the log: start it afresh.
	[ -f "$state/connect.log" ] && mv "$state/connect.log" "$state/connect.log.previous"
	now_ms >"$state/started.ms"
	# setsid: the worker outlives this script and does not get the terminal's signals.
	setsid java -Xms256m -Xmx"${DBZ_HEAP:-2g}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
		-XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
		-Djava.awt.headless=true \
		-Dlog4j2.configurationFile="$here/log4j2.properties" \
		-Ddbz.logs.dir="$state" \
		-cp "$libs/*" org.apache.kafka.connect.cli.ConnectStandalone \
		"$state/worker.properties" "$state/connector.properties" \
		>"$state/connect.out" 2>&1 </dev/null &
	echo $! >"$state/pid"
	log "$name: started (pid $!, REST http://127.0.0.1:$port, slot $slot, publication $publication, topics $prefix.*, log $state/connect.log)"
}

wait_ready() {
	local timeout=${DBZ_WAIT_TIMEOUT:-180} deadline st
	deadline=$(($(date +%s) + timeout))
	while [ "$(date +%s)" -lt "$deadline" ]; do
		worker_pid >/dev/null || {
			tail -n 20 "$state/connect.out" "$state/connect.log" >&2 2>/dev/null || true
			die "$name: the worker is not running, see $state/connect.log"
		}
		st=$(rest_status | task_state) || true
		if [ "$st" = FAILED ]; then
			rest_status >&2 || true
			die "$name: task FAILED, see $state/connect.log"
		fi
		# RUNNING is set when the task's start() returned; Debezium then begins streaming
		# in its own thread, and logs this once the replication stream is open.
		if [ "$st" = RUNNING ] && grep -q "Processing messages" "$state/connect.log" 2>/dev/null; then
			local t0
			t0=$(cat "$state/started.ms" 2>/dev/null || now_ms)
			log "$name: streaming, $(($(now_ms) - t0)) ms after start"
			return
		fi
		sleep 0.2
	done
	die "$name: not streaming within $timeout s, see $state/connect.log"
}

stop() {
	local pid i
	pid=$(worker_pid) || { log "$name: not running"; return 0; }
	log "$name: stopping (pid $pid)"
	kill -TERM "$pid"
	for i in $(seq 1 200); do
		kill -0 "$pid" 2>/dev/null || { rm -f "$state/pid"; return 0; }
		sleep 0.15
	done
	log "$name: did not stop within 30 s, killing"
	kill -KILL "$pid" 2>/dev/null || true
	rm -f "$state/pid"
}

topics() {
	[ -f "$state/connector.properties" ] || die "$name: no state in $state"
	[ -f "$home/.complete" ] || die "not fetched: run $0 fetch"
	java -cp "$libs/*" "$here/Topics.java" "${1:-list}" "$(brokers)" "$(prop topic.prefix "$state/connector.properties")." 2>>"$state/topics.err"
}

status() {
	local pid
	if pid=$(worker_pid); then
		echo "worker: running, pid $pid, RSS $(awk '/VmRSS/ {print $2, $3}' "/proc/$pid/status"), REST port $(rest_port)"
		echo "connector: $(rest_status || echo '(REST not answering)')"
	else
		echo "worker: stopped"
	fi
	[ -f "$state/connector.properties" ] || return 0
	pg_parts
	echo "slot: $(psql_c "select slot_name || ' active=' || active || ' confirmed_flush_lsn=' || confirmed_flush_lsn || ' lag_bytes=' || pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) from pg_replication_slots where slot_name = '$(prop slot.name "$state/connector.properties")'" || true)"
	echo "offsets: $state/offsets.dat"
	topics list | sed 's/^/topic: /' || true
}

drop() {
	stop
	if [ -f "$state/connector.properties" ]; then
		local slot publication
		slot=$(prop slot.name "$state/connector.properties")
		publication=$(prop publication.name "$state/connector.properties")
		pg_parts
		psql_c "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = '$slot'" >/dev/null &&
			log "$name: dropped slot $slot (if it existed)"
		psql_c "drop publication if exists \"$publication\"" && log "$name: dropped publication $publication (if it existed)"
		topics delete | sed 's/^/[debezium] /' >&2
	fi
	rm -rf "$state"
	log "$name: state removed"
}

cmd=${1:-}
case "$cmd" in
fetch) fetch ;;
start) check_name "${2:-}"; start ;;
wait) check_name "${2:-}"; wait_ready ;;
stop) check_name "${2:-}"; stop ;;
status) check_name "${2:-}"; status ;;
topics) check_name "${2:-}"; topics list ;;
drop) check_name "${2:-}"; drop ;;
*) usage ;;
esac
