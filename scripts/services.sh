#!/usr/bin/env bash
# The real services behind Metrify's production profile, private to this checkout:
# PostgreSQL, Redis and a single-node Apache Kafka broker (KRaft, broker+controller), all on
# 127.0.0.1 only. Integration tests run against them; so can `metrify` on a developer machine.
#
#   bash scripts/services.sh up       install what is missing, start what is not running, wait
#                                     until each answers, print `export ...` lines for eval
#   bash scripts/services.sh down     stop what `up` started (data is kept)
#   bash scripts/services.sh status   what runs, where (exit 0 when all three run, 3 otherwise)
#   bash scripts/services.sh env      print the export lines only (starts nothing)
#   bash scripts/services.sh clean    down, then delete the data (the download cache stays)
#   bash scripts/services.sh stop|start postgres|redis|kafka   one service (for failure tests)
#
#   eval "$(bash scripts/services.sh up)"
#
# stdout carries ONLY the export lines; every message goes to stderr. Never prompts.
# Installs: PostgreSQL and Redis from Debian's packages (apt-get, as root or with `sudo -n`),
# a JDK and Maven if absent, and Kafka's jars from Maven Central via scripts/kafka/pom.xml.
#
# Knobs (all optional; the METRIFY_SERVICES_ prefix is this script's, Metrify itself never reads it):
#   METRIFY_SERVICES_DIR         run folder: data, logs, pids        (default <repo>/.services)
#   METRIFY_SERVICES_CACHE       download cache: Kafka jars, classes (default <repo>/.cache)
#   METRIFY_SERVICES_PG_PORT     15432     METRIFY_SERVICES_REDIS_PORT             16379
#   METRIFY_SERVICES_KAFKA_PORT  19092     METRIFY_SERVICES_KAFKA_CONTROLLER_PORT  19093
#     The defaults lie below Linux's ephemeral range (32768-60999): a port in it may be the local
#     end of some client's connection at that moment (seen: Kafka's bind refused by a connection
#     to Redis that had picked 59092), which no check for a listener can see.
#     A port set here is used as is (taken by another program: an error). Unset, a service starts
#     on the port it had last time in this run folder, else on the default; when another program
#     (or another checkout's services) holds that port, on the next free one. The ports in use are
#     kept in <run folder>/ports, and `env` prints them.
#   METRIFY_SERVICES_KAFKA_HEAP  "-Xms256m -Xmx512m"
#   METRIFY_SERVICES_PG_DURABLE  1: PostgreSQL with fsync, synchronous commits and full-page writes
#     on, as a production server runs (for benchmarks: `stop postgres`, then `up` with it set).
#     Unset: a throw-away test cluster that trades durability for speed (fsync off).
#   METRIFY_SERVICES_TIMEOUT     seconds to wait for each service to answer (default 120)
#   METRIFY_SERVICES_MAVEN_REPO  a Maven local repository to use instead of ~/.m2/repository
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_DIR=${METRIFY_SERVICES_DIR:-$ROOT/.services}
CACHE_DIR=${METRIFY_SERVICES_CACHE:-$ROOT/.cache}
PORTS_FILE=$RUN_DIR/ports
# The port of one service: set by the user, else the one this run folder used last, else the default.
port_setting() { # NAME default
	local pinned=METRIFY_SERVICES_${1}_PORT saved
	if [ -n "${!pinned:-}" ]; then
		printf '%s\n' "${!pinned}"
		return 0
	fi
	saved=$(sed -n "s/^$1=\([0-9][0-9]*\)\$/\1/p" "$PORTS_FILE" 2>/dev/null | tail -n1)
	printf '%s\n' "${saved:-$2}"
}
PG_PORT=$(port_setting PG 15432)
REDIS_PORT=$(port_setting REDIS 16379)
KAFKA_PORT=$(port_setting KAFKA 19092)
KAFKA_CONTROLLER_PORT=$(port_setting KAFKA_CONTROLLER 19093)
KAFKA_HEAP=${METRIFY_SERVICES_KAFKA_HEAP:-"-Xms256m -Xmx512m"}
TIMEOUT=${METRIFY_SERVICES_TIMEOUT:-120}
PG_DURABLE=${METRIFY_SERVICES_PG_DURABLE:-0}

HOST=127.0.0.1
PG_USER=metrify
PG_PASSWORD=metrify
PG_DB=metrify
PG_OS_USER=postgres # PostgreSQL refuses to run as root; as non-root we run it as ourselves

KAFKA_POM=$ROOT/scripts/kafka/pom.xml
KAFKA_READY_SRC=$ROOT/scripts/kafka/KafkaReady.java
KAFKA_CACHE=$CACHE_DIR/kafka
KAFKA_LIB=$KAFKA_CACHE/lib
KAFKA_CLASSES=$KAFKA_CACHE/classes

# As root, PostgreSQL runs as the `postgres` OS user, which must reach its folder through every
# parent. A run folder under a closed one (a home of mode 700, a mktemp folder) keeps the cluster
# in /var/tmp instead, under a name derived from the run folder's path, so every command finds it.
others_reach() { # every existing folder on the way to $1 lets others through
	local dir=$1
	while [ ! -e "$dir" ]; do dir=$(dirname "$dir"); done
	while :; do
		[ $((0$(stat -c %a "$dir") & 1)) -eq 1 ] || return 1
		[ "$dir" = / ] && return 0
		dir=$(dirname "$dir")
	done
}
PG_DIR=$RUN_DIR/postgres
if [ "$(id -u)" -eq 0 ] && ! others_reach "$RUN_DIR"; then
	PG_DIR=/var/tmp/metrify-services-$(printf '%s' "$RUN_DIR" | sha256sum | cut -c1-12)/postgres
fi
REDIS_DIR=$RUN_DIR/redis
KAFKA_DIR=$RUN_DIR/kafka

export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------------------------------- utils
log() { printf '[services +%ss] %s\n' "$SECONDS" "$*" >&2; }
die() {
	printf '[services] ERROR: %s\n' "$*" >&2
	exit 1
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# Run a command as root: directly when we are root, else through sudo without a prompt.
as_root() {
	if is_root; then
		"$@"
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		sudo -n -E "$@"
	else
		die "need root to run: $* (run as root, allow passwordless sudo, or install it yourself)"
	fi
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Several checkouts on one machine (a CI run beside a developer's run) each start their own
# services. Choosing a free port and binding it are one step for all of them: a checkout holds this
# machine-wide lock from the choice until its server listens, so two never pick the same port.
# (fd 8; every server is started with it closed, so that it never outlives `up`.)
PORTS_LOCK=${TMPDIR:-/tmp}/metrify-services-ports.lock
ports_lock() {
	exec 8>>"$PORTS_LOCK"
	flock -w 600 8 || die "another checkout's services.sh holds $PORTS_LOCK for over 600s"
}
ports_unlock() { exec 8>&-; }

# Settle the port of NAME (PG, REDIS, KAFKA, KAFKA_CONTROLLER) before its server starts: keep it when
# it is free; when it is taken, fail if the user set it, else move to the next free one (steps of
# 10, so that Kafka's two ports stay apart). The choice is recorded in $PORTS_FILE.
settle_port() { # NAME [ports already chosen in this step...]
	local name=$1 var=${1}_PORT pinned=METRIFY_SERVICES_${1}_PORT port tries=0
	shift
	port=${!var}
	while port_open "$port" || [[ " $* " == *" $port "* ]]; do
		[ -n "${!pinned:-}" ] && die "port $port is taken by another program; set $pinned to a free one"
		tries=$((tries + 1))
		[ $tries -le 200 ] || die "no free port found for $name above ${!var}; set $pinned"
		port=$((port + 10))
		[ $port -le 65535 ] || port=$((port - 64000))
	done
	if [ "$port" != "${!var}" ]; then
		log "${name,,} port ${!var} is taken by another program: using $port"
	fi
	printf -v "$var" '%s' "$port"
	mkdir -p "$RUN_DIR"
	{
		grep -v "^$name=" "$PORTS_FILE" 2>/dev/null || true
		echo "$name=$port"
	} >"$PORTS_FILE.tmp"
	mv -f "$PORTS_FILE.tmp" "$PORTS_FILE"
}

# Check a pid file: prints the pid and succeeds when that process lives and its command line
# contains the marker (so that a recycled pid is never mistaken for ours, nor killed).
live_pid() {
	local file=$1 marker=$2 pid
	[ -s "$file" ] || return 1
	pid=$(head -n1 "$file" 2>/dev/null | tr -dc '0-9')
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker" || return 1
	printf '%s\n' "$pid"
}

# Wait until "$@" succeeds, or fail after $TIMEOUT seconds with the service's log tail. A check
# that returns $GIVE_UP (the process it waits for has died) fails at once.
GIVE_UP=42
wait_for() {
	local what=$1 logfile=$2
	shift 2
	local deadline=$((SECONDS + TIMEOUT)) rc
	while :; do
		rc=0
		"$@" >/dev/null 2>&1 || rc=$?
		[ $rc -eq 0 ] && return 0
		if [ $rc -eq $GIVE_UP ] || [ $SECONDS -ge $deadline ]; then
			if [ $rc -eq $GIVE_UP ]; then
				log "$what: the process exited; last lines of $logfile:"
			else
				log "$what did not answer within ${TIMEOUT}s; last lines of $logfile:"
			fi
			tail -n 30 "$logfile" 2>/dev/null | sed 's/^/    /' >&2 || true
			if [ -s "${logfile%.log}.out" ] && [ "${logfile%.log}.out" != "$logfile" ]; then
				log "and of ${logfile%.log}.out:"
				tail -n 30 "${logfile%.log}.out" | sed 's/^/    /' >&2 || true
			fi
			die "$what is not ready"
		fi
		sleep 0.3
	done
}

# Start a server in its own session, detached from this script, with its output in OUTFILE and
# its pid in PIDFILE. The pid is written by the process that becomes the server (it `exec`s), not
# taken from `$!`: setsid forks when it is started as a process-group leader (a runner with job
# control), and `$!` is then a parent that exits at once while the server goes on.
spawn() { # pidfile outfile command [args...]
	local pidfile=$1 outfile=$2 i
	shift 2
	rm -f "$pidfile"
	# shellcheck disable=SC2016 # $$ and $0 belong to the inner shell
	setsid sh -c 'echo $$ >"$0.tmp" && mv -f "$0.tmp" "$0" && exec "$@"' "$pidfile" "$@" \
		</dev/null >>"$outfile" 2>&1 8>&- 9>&- &
	for ((i = 0; i < 100; i++)); do
		[ -s "$pidfile" ] && return 0
		sleep 0.05
	done
	die "$1 did not start (nothing wrote $pidfile within 5s; see $outfile)"
}

stop_pid() { # name pid [seconds]
	local name=$1 pid=$2 wait=${3:-30} i
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < wait * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	log "$name (pid $pid) did not stop within ${wait}s; killing it"
	kill -KILL "$pid" 2>/dev/null || true
}

# ------------------------------------------------------------------------------------- install
APT_UPDATED=0
apt_install() {
	command -v apt-get >/dev/null 2>&1 || die "missing $*, and no apt-get here to install it: install it yourself"
	log "installing from Debian's packages: $*"
	# No daemon of the distribution's own should start during the install (ours are private);
	# Docker-style images already carry this policy file, a plain Debian may not.
	local policy=/usr/sbin/policy-rc.d added_policy=0
	if [ ! -e "$policy" ] && is_root; then
		printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added_policy=1
	fi
	local rc=0
	{
		if [ $APT_UPDATED -eq 0 ]; then
			as_root apt-get -q -o DPkg::Lock::Timeout=300 update && APT_UPDATED=1
		fi &&
			as_root apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 \
				-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
	} </dev/null >&2 9>&- || rc=$?
	[ $added_policy -eq 1 ] && rm -f "$policy"
	[ $rc -eq 0 ] || die "apt-get install $* failed (exit $rc)"
}

# The newest PostgreSQL server binaries' folder (Debian: /usr/lib/postgresql/<major>/bin), or
# the one matching an existing data directory's version.
pg_bin_dir() {
	local want="" dir
	[ -s "$PG_DIR/data/PG_VERSION" ] && want=$(cat "$PG_DIR/data/PG_VERSION")
	if [ -n "$want" ] && [ -x "/usr/lib/postgresql/$want/bin/postgres" ]; then
		echo "/usr/lib/postgresql/$want/bin"
		return 0
	fi
	for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5 -n -r); do
		if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]; then
			echo "$dir"
			return 0
		fi
	done
	if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
		dirname "$(readlink -f "$(command -v pg_ctl)")"
		return 0
	fi
	return 1
}

ensure_installed() {
	local missing=()
	pg_bin_dir >/dev/null || missing+=(postgresql)
	{ command -v redis-server && command -v redis-cli; } >/dev/null 2>&1 || missing+=(redis-server)
	command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
	command -v mvn >/dev/null 2>&1 || missing+=(maven)
	if [ ${#missing[@]} -gt 0 ]; then
		apt_install "${missing[@]}"
	fi
	PG_BIN=$(pg_bin_dir) || die "PostgreSQL server binaries not found after install"
	if is_root && ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
		die "no '$PG_OS_USER' OS user to run PostgreSQL as (PostgreSQL refuses to run as root)"
	fi
	ensure_kafka_jars
}

# Kafka's jars, once per version of scripts/kafka/pom.xml (the cache is keyed on its checksum),
# and the readiness check compiled against them, once per version of its source.
ensure_kafka_jars() {
	local sum stamp=$KAFKA_CACHE/pom.sha256
	sum=$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)
	if ! { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ] && [ -d "$KAFKA_LIB" ]; }; then
		log "fetching Kafka's jars with Maven into $KAFKA_LIB (once per pom version)"
		mkdir -p "$KAFKA_CACHE"
		local tmp=$KAFKA_CACHE/lib.tmp.$$
		rm -rf "$tmp"
		local mvn_args=(-B -q -Dstyle.color=never -f "$KAFKA_POM" dependency:copy-dependencies "-DoutputDirectory=$tmp")
		[ -n "${METRIFY_SERVICES_MAVEN_REPO:-}" ] && mvn_args+=("-Dmaven.repo.local=$METRIFY_SERVICES_MAVEN_REPO")
		# Maven 3.8 prints colour resets even in batch mode: strip them
		(cd "$KAFKA_CACHE" && mvn "${mvn_args[@]}" 2>&1 | sed 's/\x1b\[[0-9;]*m//g') </dev/null >&2 9>&- ||
			{
				rm -rf "$tmp"
				die "Maven could not fetch Kafka's jars (see above)"
			}
		ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "Maven ran but no kafka_2.13 jar arrived in $tmp"
		rm -rf "$KAFKA_LIB"
		mv "$tmp" "$KAFKA_LIB"
		echo "$sum" >"$stamp"
		rm -f "$KAFKA_CACHE/classes.sha256"
	fi
	stamp=$KAFKA_CACHE/classes.sha256
	sum=$(sha256sum "$KAFKA_READY_SRC" | cut -d' ' -f1)
	if ! { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ] && [ -f "$KAFKA_CLASSES/KafkaReady.class" ]; }; then
		rm -rf "$KAFKA_CLASSES"
		mkdir -p "$KAFKA_CLASSES"
		javac -nowarn -cp "$KAFKA_LIB/*" -d "$KAFKA_CLASSES" "$KAFKA_READY_SRC" >&2 9>&- ||
			die "could not compile $KAFKA_READY_SRC"
		echo "$sum" >"$stamp"
	fi
}

# ----------------------------------------------------------------------------------- PostgreSQL
as_pg() { # run a PostgreSQL tool as the OS user that owns the cluster, from a folder it can read
	if is_root; then
		(cd / && runuser -u "$PG_OS_USER" -- "$@")
	else
		(cd / && "$@")
	fi
}

pg_running() { as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; }
pg_ready() { "$PG_BIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" -t 2; }
pg_psql() { PGPASSWORD=$PG_PASSWORD "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PG_PORT" -U "$PG_USER" "$@"; }

pg_prepare_dir() {
	mkdir -p "$PG_DIR"
	if is_root; then
		chown "$PG_OS_USER:" "$PG_DIR"
		chmod 700 "$PG_DIR"
		# the postgres user must be able to reach the folder through every parent folder
		runuser -u "$PG_OS_USER" -- test -w "$PG_DIR" ||
			die "the '$PG_OS_USER' OS user cannot reach $PG_DIR (a parent folder is closed to it);" \
				"set METRIFY_SERVICES_DIR to a folder it can reach, e.g. /var/tmp/metrify-services"
	fi
}

pg_init() {
	[ -s "$PG_DIR/data/PG_VERSION" ] && return 0
	log "postgres: creating a private cluster in $PG_DIR/data ($("$PG_BIN/postgres" --version))"
	rm -rf "$PG_DIR/data"
	local pwfile=$PG_DIR/pwfile
	printf '%s\n' "$PG_PASSWORD" >"$pwfile"
	if is_root; then chown "$PG_OS_USER:" "$pwfile"; fi
	chmod 600 "$pwfile"
	# The bootstrap superuser is `metrify` itself: tests create a database per session.
	as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U "$PG_USER" --pwfile="$pwfile" \
		--auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C >"$PG_DIR/initdb.log" 2>&1 9>&- ||
		{
			tail -n 20 "$PG_DIR/initdb.log" >&2
			die "initdb failed"
		}
	rm -f "$pwfile"
	echo "include_if_exists = 'metrify.conf'" >>"$PG_DIR/data/postgresql.conf"
}

pg_write_conf() {
	# Rewritten at every start, so a changed port applies. A throw-away test cluster: durability
	# is traded for speed (fsync off) unless METRIFY_SERVICES_PG_DURABLE=1; never point anything
	# precious at it.
	local conf=$PG_DIR/data/metrify.conf durability=off tuning=""
	if [ "$PG_DURABLE" = 1 ]; then
		durability=on
		# what a production server for a write-heavy time-series load sets: a page cache of its
		# own, checkpoints far enough apart that a page's full image is logged rarely, compressed
		tuning=$'shared_buffers = 512MB\nmax_wal_size = 4GB\nwal_compression = on'
	fi
	cat >"$conf" <<EOF
# written by scripts/services.sh at every start; edits are lost
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = ''
max_connections = 200
fsync = $durability
synchronous_commit = $durability
full_page_writes = $durability
$tuning
logging_collector = off
log_min_messages = warning
timezone = 'UTC'
EOF
	if is_root; then chown "$PG_OS_USER:" "$conf"; fi
}

pg_up() {
	pg_prepare_dir
	pg_init
	if pg_running; then
		log "postgres: already running"
	else
		ports_lock
		settle_port PG
		pg_write_conf
		log "postgres: starting on $HOST:$PG_PORT"
		local logfile=$PG_DIR/postgres.log
		touch "$logfile"
		if is_root; then chown "$PG_OS_USER:" "$logfile"; fi
		as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$logfile" -w -t "$TIMEOUT" start </dev/null >&2 8>&- 9>&- ||
			{
				tail -n 30 "$logfile" >&2 || true
				die "postgres did not start (log: $logfile)"
			}
	fi
	wait_for "postgres on $HOST:$PG_PORT" "$PG_DIR/postgres.log" pg_ready
	ports_unlock
	wait_for "postgres login as $PG_USER" "$PG_DIR/postgres.log" pg_psql -d postgres -c 'select 1'
	if [ -z "$(pg_psql -d postgres -tAc "select 1 from pg_database where datname = '$PG_DB'")" ]; then
		log "postgres: creating database $PG_DB"
		pg_psql -d postgres -c "create database $PG_DB owner $PG_USER" >&2
	fi
}

pg_down() {
	PG_BIN=$(pg_bin_dir) || return 0
	[ -d "$PG_DIR/data" ] || return 0
	if pg_running; then
		log "postgres: stopping"
		as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 60 stop </dev/null >&2 9>&- || true
	fi
}

# ---------------------------------------------------------------------------------------- Redis
redis_pid() { live_pid "$REDIS_DIR/redis.pid" "redis-server"; }
redis_ready() { [ "$(redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }
redis_started() { redis_pid >/dev/null || return $GIVE_UP; redis_ready; }

redis_up() {
	mkdir -p "$REDIS_DIR"
	if redis_pid >/dev/null; then
		log "redis: already running"
	else
		ports_lock
		settle_port REDIS
		log "redis: starting on $HOST:$REDIS_PORT"
		rm -f "$REDIS_DIR/redis.pid"
		# no persistence: a cache and a task broker for tests
		: >"$REDIS_DIR/redis.out"
		spawn "$REDIS_DIR/redis.pid" "$REDIS_DIR/redis.out" \
			redis-server --bind "$HOST" --port "$REDIS_PORT" --protected-mode yes \
			--save '' --appendonly no --dir "$REDIS_DIR" \
			--logfile "$REDIS_DIR/redis.log" --daemonize no
	fi
	wait_for "redis on $HOST:$REDIS_PORT" "$REDIS_DIR/redis.log" redis_started
	ports_unlock
}

redis_down() {
	local pid
	pid=$(redis_pid) || return 0
	log "redis: stopping (pid $pid)"
	stop_pid redis "$pid" 20
	rm -f "$REDIS_DIR/redis.pid"
}

# ---------------------------------------------------------------------------------------- Kafka
kafka_pid() { live_pid "$KAFKA_DIR/kafka.pid" "kafka.Kafka $KAFKA_DIR/server.properties"; }
kafka_listening() { kafka_pid >/dev/null || return $GIVE_UP; port_open "$KAFKA_PORT"; }

kafka_java() { # java with Kafka's jars and a quiet log4j2 configuration (tools)
	java -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2-tools.xml" -cp "$KAFKA_CLASSES:$KAFKA_LIB/*" "$@"
}

kafka_write_conf() {
	mkdir -p "$KAFKA_DIR/data"
	cat >"$KAFKA_DIR/server.properties" <<EOF
# written by scripts/services.sh at every start; edits are lost
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$KAFKA_DIR/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
group.initial.rebalance.delay.ms=0
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
log.retention.hours=24
log.segment.bytes=67108864
EOF
	cat >"$KAFKA_DIR/log4j2.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!-- written by scripts/services.sh: the broker's log, to stdout (kafka.log) -->
<Configuration status="WARN">
  <Appenders>
    <Console name="OUT" target="SYSTEM_OUT"><PatternLayout pattern="[%d] %p %m (%c)%n"/></Console>
  </Appenders>
  <Loggers>
    <Logger name="kafka" level="INFO"/>
    <Logger name="org.apache.kafka" level="INFO"/>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.log.LogCleaner" level="WARN"/>
    <Logger name="org.apache.kafka.common.config.AbstractConfig" level="WARN"/>
    <Logger name="org.apache.kafka.common.utils.AppInfoParser" level="WARN"/>
    <Root level="WARN"><AppenderRef ref="OUT"/></Root>
  </Loggers>
</Configuration>
EOF
	cat >"$KAFKA_DIR/log4j2-tools.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="ERR" target="SYSTEM_ERR"><PatternLayout pattern="[%d] %p %m (%c)%n"/></Console>
  </Appenders>
  <Loggers><Root level="ERROR"><AppenderRef ref="ERR"/></Root></Loggers>
</Configuration>
EOF
}

kafka_format() {
	[ -f "$KAFKA_DIR/data/meta.properties" ] && return 0
	local cluster_id
	cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null 9>&- | tail -n1)
	[ -n "$cluster_id" ] || die "kafka: could not make a cluster id"
	log "kafka: formatting $KAFKA_DIR/data (cluster id $cluster_id)"
	kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DIR/server.properties" \
		</dev/null >"$KAFKA_DIR/format.log" 2>&1 9>&- ||
		{
			tail -n 20 "$KAFKA_DIR/format.log" >&2
			die "kafka storage format failed"
		}
	echo "$cluster_id" >"$KAFKA_DIR/cluster.id"
}

kafka_up() {
	if kafka_pid >/dev/null; then
		log "kafka: already running"
	else
		ports_lock
		settle_port KAFKA
		settle_port KAFKA_CONTROLLER "$KAFKA_PORT"
		kafka_write_conf
		kafka_format
		log "kafka: starting on $HOST:$KAFKA_PORT (controller $HOST:$KAFKA_CONTROLLER_PORT)"
		[ -f "$KAFKA_DIR/kafka.log" ] && mv -f "$KAFKA_DIR/kafka.log" "$KAFKA_DIR/kafka.log.1"
		: >"$KAFKA_DIR/kafka.log"
		# shellcheck disable=SC2086 # KAFKA_HEAP is a list of JVM options
		spawn "$KAFKA_DIR/kafka.pid" "$KAFKA_DIR/kafka.log" \
			java $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
			-Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.xml" -cp "$KAFKA_LIB/*" \
			kafka.Kafka "$KAFKA_DIR/server.properties"
	fi
	wait_for "kafka on $HOST:$KAFKA_PORT" "$KAFKA_DIR/kafka.log" kafka_listening
	ports_unlock
	# Once per broker process: metadata, group coordinators and transactions, with the real Java
	# client (it also creates and loads the internal topics, so tests never wait on them).
	local pid
	pid=$(kafka_pid) || die "kafka exited (log: $KAFKA_DIR/kafka.log)"
	[ "$(cat "$KAFKA_DIR/ready.pid" 2>/dev/null)" = "$pid" ] && return 0
	kafka_java KafkaReady "$HOST:$KAFKA_PORT" "$TIMEOUT" </dev/null 9>&- || {
		log "last lines of $KAFKA_DIR/kafka.log:"
		tail -n 30 "$KAFKA_DIR/kafka.log" | sed 's/^/    /' >&2
		die "kafka is not ready"
	}
	echo "$pid" >"$KAFKA_DIR/ready.pid"
}

kafka_down() {
	local pid
	pid=$(kafka_pid) || return 0
	log "kafka: stopping (pid $pid; a controlled shutdown takes a few seconds)"
	stop_pid kafka "$pid" 60
	rm -f "$KAFKA_DIR/kafka.pid" "$KAFKA_DIR/ready.pid"
}

# -------------------------------------------------------------------------------------- commands
print_env() {
	printf 'export METRIFY_DATABASE_URL=postgresql+psycopg://%s:%s@%s:%s/%s\n' \
		"$PG_USER" "$PG_PASSWORD" "$HOST" "$PG_PORT" "$PG_DB"
	printf 'export METRIFY_REDIS_URL=redis://%s:%s/0\n' "$HOST" "$REDIS_PORT"
	printf 'export METRIFY_KAFKA__BOOTSTRAP=%s:%s\n' "$HOST" "$KAFKA_PORT"
}

lock() {
	mkdir -p "$RUN_DIR"
	exec 9>"$RUN_DIR/.lock"
	flock -w 900 9 || die "another services.sh holds $RUN_DIR/.lock"
}

cmd_up() {
	local started=$SECONDS
	lock
	ensure_installed
	pg_up
	redis_up
	kafka_up
	log "all services ready in $((SECONDS - started))s (run folder $RUN_DIR)"
	print_env
}

cmd_down() {
	[ -d "$RUN_DIR" ] || {
		log "nothing to stop"
		return 0
	}
	lock
	kafka_down
	redis_down
	pg_down
	log "stopped"
}

cmd_status() {
	local rc=0 pid
	PG_BIN=$(pg_bin_dir 2>/dev/null) || PG_BIN=""
	if [ -n "$PG_BIN" ] && [ -d "$PG_DIR/data" ] && pg_running; then
		pid=$(head -n1 "$PG_DIR/data/postmaster.pid" 2>/dev/null || true)
		echo "postgres  running  pid ${pid:-?}  $HOST:$PG_PORT  $(pg_ready && echo ready || echo 'not answering')"
	else
		echo "postgres  stopped"
		rc=3
	fi
	if pid=$(redis_pid); then
		echo "redis     running  pid $pid  $HOST:$REDIS_PORT  $(redis_ready && echo ready || echo 'not answering')"
	else
		echo "redis     stopped"
		rc=3
	fi
	if pid=$(kafka_pid); then
		echo "kafka     running  pid $pid  $HOST:$KAFKA_PORT  $(port_open "$KAFKA_PORT" && echo listening || echo 'not listening')"
	else
		echo "kafka     stopped"
		rc=3
	fi
	echo "run folder: $RUN_DIR   cache: $CACHE_DIR$([ "${PG_DIR#"$RUN_DIR"/}" = "$PG_DIR" ] && echo "   postgres: $PG_DIR")"
	return $rc
}

cmd_clean() {
	cmd_down
	log "deleting $RUN_DIR"
	rm -rf "$RUN_DIR"
	case "$PG_DIR" in
	"$RUN_DIR"/*) ;;
	*) rm -rf "$(dirname "$PG_DIR")" ;;
	esac
}

# One service at a time, for failure tests: `stop postgres` ... `start postgres`.
cmd_one() { # up|down service
	local action=$1 service=${2:-}
	case "$service" in
	postgres | redis | kafka) ;;
	*) die "name a service: postgres, redis or kafka (got '${service}')" ;;
	esac
	lock
	[ "$action" = down ] || ensure_installed
	case "$service" in
	postgres) [ -n "${PG_BIN:-}" ] || PG_BIN=$(pg_bin_dir) ;;
	esac
	"${service/postgres/pg}_$action"
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
env) print_env ;;
clean) cmd_clean ;;
start) cmd_one up "${2:-}" ;;
stop) cmd_one down "${2:-}" ;;
*)
	echo "usage: $0 up|down|status|env|clean|start SERVICE|stop SERVICE" >&2
	exit 2
	;;
esac
