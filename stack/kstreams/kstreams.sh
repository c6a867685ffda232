#!/usr/bin/env bash
# kstreams.sh runs a Kafka Streams application (stack/kstreams/Tables.java) that materializes
# Debezium's topics into KTables (RocksDB stores) and serves them by interactive queries over
# HTTP: what a user of Debezium would build for queryable tables, next to the local stack
# (stack/stack.sh), so that benchmarks can run it side by side with changes' views.
# Each application NAME gets its own JVM, HTTP port and state folder.
#
#   stack/kstreams/kstreams.sh fetch        build the app with Maven (Kafka Streams from Maven Central; idempotent, quiet if cached)
#   stack/kstreams/kstreams.sh start NAME   write the Streams config, start the app in the background
#   stack/kstreams/kstreams.sh run NAME     the same in the foreground
#   stack/kstreams/kstreams.sh wait NAME    wait until Kafka Streams is RUNNING (KS_WAIT_TIMEOUT s, default 120)
#   stack/kstreams/kstreams.sh status NAME  process, RSS, the app's /status (per table: records applied, next offset, entries)
#   stack/kstreams/kstreams.sh get NAME TYPE KEY   the row of KEY in TYPE's table (interactive query)
#   stack/kstreams/kstreams.sh stop NAME    stop the app cleanly (stores flushed, offsets committed)
#   stack/kstreams/kstreams.sh drop NAME    stop, then delete its internal topics (NAME-*), its consumer group and its state folder
#
# Environment (all optional except KS_TOPICS for start/run):
#   KS_TOPICS              the tables: TYPE=TOPIC pairs separated by commas, e.g.
#                          account=dbz.public.account,campaign=dbz.public.campaign (one KTable and store each,
#                          the store named TYPE; Debezium's topics, JSON without schemas)
#   CHANGES_KAFKA_BROKERS  Kafka bootstrap servers (default 127.0.0.1:59092); KS_BROKERS overrides
#   KS_PORT                HTTP port on 127.0.0.1 (default 58090; one per running NAME)
#   KS_STATE_DIR           Kafka Streams' state.dir, where the RocksDB stores live (default <state>/stores)
#   KS_STAMPS              the file the app appends "seq unix-nanos" lines to while stamping is on
#                          (POST /stamps?on=1; default <state>/stamps)
#   KS_THREADS             num.stream.threads (default 2, see below)
#   KS_HEAP                max heap, -Xmx (default 1g)
#   KS_EXTRA               extra Streams properties, one key=value per line (tuning; recorded in the config file)
#   CHANGES_STACK_DIR      state root (default <repo>/.stack); NAME's state is in $CHANGES_STACK_DIR/kstreams/NAME
#   CHANGES_CACHE_DIR      build cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/changes); jars in kstreams-<version>/
#
# ---------------------------------------------------------------- how Kafka Streams is configured
# Kafka Streams 4.1.1 (the broker's version) runs with its defaults except for what is listed
# here. Every setting that this script writes (streams.properties), and why:
#
#   application.id=<NAME>                 required: the consumer group and the prefix of the internal topics
#   bootstrap.servers=<brokers>           required: where Kafka is
#   state.dir=<KS_STATE_DIR>              default ${java.io.tmpdir}/kafka-streams: a state folder per NAME
#                                         instead, kept with the rest of its state (and removed by drop)
#   num.stream.threads=2 (default 1)      the machine has 2 cores; the app has 3 tasks (one per table:
#                                         Debezium's topics have 1 partition each), so 2 threads run 2 + 1
#                                         tasks; more threads than cores would only add switching
#   processing.guarantee=at_least_once    the default, written to say it was chosen: materializing CDC
#                                         is idempotent (each record sets or deletes the row of its key,
#                                         in offset order per key), so records replayed after a crash
#                                         put the same rows again and the table converges to the same
#                                         state. exactly_once_v2 would add a transaction per commit and
#                                         read_committed consumers for nothing in return here, and
#                                         interactive queries read uncommitted data under both
#   commit.interval.ms=1000               default 30000 under at_least_once (100 under exactly_once_v2).
#                                         A commit flushes the record cache into RocksDB and the changelog
#                                         and commits the input offsets: 1 s bounds what a crash replays
#                                         and how stale the changelog (what a restore reads) can be
#   replication.factor=1                  of the internal (changelog) topics; default -1, the broker's
#                                         default.replication.factor: the local stack has 1 broker
#   processor.wrapper.class               set by Tables.java itself (the measuring hook, see there)
#
# The topology: builder.stream(topic).toTable(...) per Debezium topic, materialized in the default
# persistent store (RocksDB, timestamped key-value) named TYPE, logged to a compacted changelog
# topic <NAME>-<TYPE>-changelog (the default); source deserializers turn Debezium's key into the
# entity key and its envelope into "after" (null for a delete, applied as a delete; the tombstone
# after it deletes again, a no-op). Not builder.table(topic): a source KTable's store takes the
# topic's serdes, and the topic holds envelopes where the store holds rows.
#
# Left at their defaults: statestore.cache.max.bytes=10485760 (10 MiB of record cache for all
#   threads; interactive queries read through it), topology.optimization=none (no effect on this
#   topology: reusing the source topic as the changelog applies to builder.table only, and these
#   topics hold Debezium's envelopes, not the stores' rows), num.standby.replicas=0, auto.offset.reset=earliest, max.task.idle.ms=0,
#   poll.ms=100, buffered.records.per.partition=1000, default.deserialization.exception.handler
#   (fail), rocksdb.config.setter (none: per store a 50 MiB block cache and 3 write buffers of
#   16 MiB, off the heap; a bounded-memory setter is the usual next step in production).
#   Consumer: Streams' overrides (max.poll.records=1000, auto commit off) over the client defaults
#   (fetch.min.bytes=1, fetch.max.wait.ms=500). Changelog producer: Streams' linger.ms=100, acks=all.
#   The app logs its whole configuration at start (streams.log, "StreamsConfig values").
# JVM: -Xms256m -Xmx$KS_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20
#   -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent (Kafka's kafka-run-class.sh
#   flags; its default heap, 256 MiB, is raised: the stores are off the heap, the heap holds the record
#   cache, fetched batches and the producer's buffer).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
stack_dir=${CHANGES_STACK_DIR:-$repo/.stack}
cache_dir=${CHANGES_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/changes}
ks_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")
home=$cache_dir/kstreams-$ks_version

log() { printf '[kstreams] %s\n' "$*" >&2; }
die() { printf '[kstreams] error: %s\n' "$*" >&2; exit 1; }

usage() {
	sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
}

now_ms() { date +%s%3N; }

# ---------------------------------------------------------------- fetch

# fetch builds the app when it is missing or its sources changed since the last build.
fetch() {
	local sum
	sum=$(cat "$here/pom.xml" "$here/Tables.java" | sha256sum | cut -c1-16)
	[ -f "$home/.complete" ] && [ "$(cat "$home/.complete")" = "$sum" ] && return
	command -v mvn >/dev/null || die "mvn not found: install Maven (apt-get install maven)"
	log "building the Kafka Streams app ($ks_version, from Maven Central) into $home"
	rm -rf "$home"
	mkdir -p "$home"
	mvn -B -q -f "$here/pom.xml" package -Dks.out="$home" >"$home/maven.log" 2>&1 ||
		die "maven could not build the app, see $home/maven.log"
	rm -rf "$here/target" # the build's scratch: not left in the checkout
	[ -f "$home/kstreams-tables.jar" ] || die "no kstreams-tables.jar in $home, see $home/maven.log"
	echo "$sum" >"$home/.complete"
}

# ---------------------------------------------------------------- configuration

brokers() { echo "${KS_BROKERS:-${CHANGES_KAFKA_BROKERS:-127.0.0.1:${CHANGES_KAFKA_PORT:-59092}}}"; }

check_name() {
	[ -n "${1:-}" ] || usage
	[[ $1 =~ ^[A-Za-z0-9_.-]+$ ]] || die "NAME may hold only letters, digits, '_', '.', '-': $1"
	name=$1
	state=$stack_dir/kstreams/$name
}

http_port() {
	local p
	p=$(cat "$state/http.port" 2>/dev/null) || true
	echo "${p:-${KS_PORT:-58090}}"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

app_pid() {
	local pid
	[ -f "$state/pid" ] || return 1
	pid=$(cat "$state/pid")
	kill -0 "$pid" 2>/dev/null || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q ' Tables ' || return 1
	echo "$pid"
}

app_status() { curl -fsS --max-time 5 "http://127.0.0.1:$(http_port)/status" 2>/dev/null; }

# ---------------------------------------------------------------- commands

# prepare writes the config and prints the java command line, one argument a line.
prepare() {
	command -v java >/dev/null || die "java not found: install Java 17 (apt-get install openjdk-17-jre-headless)"
	[ -n "${KS_TOPICS:-}" ] || die "set KS_TOPICS (TYPE=TOPIC pairs), e.g. KS_TOPICS=account=dbz.public.account"
	local port=${KS_PORT:-58090}
	port_open "$port" && die "HTTP port $port is taken: set KS_PORT"
	fetch
	mkdir -p "$state"
	echo "$port" >"$state/http.port"
	cat >"$state/streams.properties" <<EOF
# Written by stack/kstreams/kstreams.sh (see its comment block for why each setting is here).
application.id=$name
bootstrap.servers=$(brokers)
state.dir=${KS_STATE_DIR:-$state/stores}
num.stream.threads=${KS_THREADS:-2}
processing.guarantee=at_least_once
commit.interval.ms=1000
replication.factor=1
${KS_EXTRA:-}
EOF
	[ -f "$state/streams.log" ] && mv "$state/streams.log" "$state/streams.log.previous"
	now_ms >"$state/started.ms"
	local args=(java -Xms256m -Xmx"${KS_HEAP:-1g}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
		-XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
		-Djava.awt.headless=true
		-Dlog4j2.configurationFile="$here/log4j2.properties"
		-Dks.logs.dir="$state"
		-cp "$home/kstreams-tables.jar:$home/libs/*" Tables
		"$state/streams.properties" "$port" "${KS_STAMPS:-$state/stamps}")
	local IFS=,
	# shellcheck disable=SC2206
	args+=($KS_TOPICS)
	printf '%s\n' "${args[@]}"
}

start() {
	if pid=$(app_pid); then
		log "$name: already running (pid $pid, HTTP port $(http_port))"
		return
	fi
	local args
	mapfile -t args < <(prepare)
	[ ${#args[@]} -gt 0 ] || exit 1
	# setsid: the app outlives this script and does not get the terminal's signals.
	setsid "${args[@]}" >"$state/streams.out" 2>&1 </dev/null &
	echo $! >"$state/pid"
	log "$name: started (pid $!, HTTP http://127.0.0.1:$(http_port), log $state/streams.log)"
}

run() {
	local args
	mapfile -t args < <(prepare)
	[ ${#args[@]} -gt 0 ] || exit 1
	echo $$ >"$state/pid"
	exec "${args[@]}"
}

wait_ready() {
	local timeout=${KS_WAIT_TIMEOUT:-120} deadline st
	deadline=$(($(date +%s) + timeout))
	while [ "$(date +%s)" -lt "$deadline" ]; do
		app_pid >/dev/null || {
			tail -n 20 "$state/streams.out" "$state/streams.log" >&2 2>/dev/null || true
			die "$name: the app is not running, see $state/streams.log"
		}
		st=$(app_status | sed -n 's/^{"state":"\([A-Z_]*\)".*/\1/p') || true
		if [ "$st" = RUNNING ]; then
			local t0
			t0=$(cat "$state/started.ms" 2>/dev/null || now_ms)
			log "$name: RUNNING, $(($(now_ms) - t0)) ms after start"
			return
		fi
		sleep 0.2
	done
	die "$name: not RUNNING within $timeout s, see $state/streams.log"
}

stop() {
	local pid i
	pid=$(app_pid) || { log "$name: not running"; return 0; }
	log "$name: stopping (pid $pid)"
	kill -TERM "$pid"
	for i in $(seq 1 300); do
		kill -0 "$pid" 2>/dev/null || { rm -f "$state/pid"; return 0; }
		sleep 0.15
	done
	log "$name: did not stop within 45 s, killing"
	kill -KILL "$pid" 2>/dev/null || true
	rm -f "$state/pid"
}

status() {
	local pid
	if pid=$(app_pid); then
		echo "app: running, pid $pid, RSS $(awk '/VmRSS/ {print $2, $3}' "/proc/$pid/status"), HTTP port $(http_port)"
		echo "status: $(app_status || echo '(HTTP not answering)')"
	else
		echo "app: stopped"
	fi
}

get() {
	local type=${1:-} key=${2:-}
	[ -n "$type" ] && [ -n "$key" ] || usage
	curl -sS --max-time 5 -w '\n' "http://127.0.0.1:$(http_port)/$type/$(printf %s "$key" | jq -sRr @uri)"
}

drop() {
	stop
	if [ -f "$home/.complete" ]; then
		mkdir -p "$state"
		java -Dlog4j2.configurationFile="$here/log4j2.properties" -Dks.logs.dir="$state" \
			-cp "$home/kstreams-tables.jar:$home/libs/*" Tables drop "$(brokers)" "$name" | sed 's/^/[kstreams] /' >&2 ||
			log "$name: could not delete its topics and group, see $state/streams.log"
	fi
	rm -rf "$state"
	log "$name: state removed"
}

cmd=${1:-}
case "$cmd" in
fetch) fetch ;;
start) check_name "${2:-}"; start ;;
run) check_name "${2:-}"; run ;;
wait) check_name "${2:-}"; wait_ready ;;
stop) check_name "${2:-}"; stop ;;
status) check_name "${2:-}"; status ;;
get) check_name "${2:-}"; get "${3:-}" "${4:-}" ;;
drop) check_name "${2:-}"; drop ;;
*) usage ;;
esac
