#!/usr/bin/env bash
# The project's one test command (DESIGN.md section 11).
#
#   scripts/test.sh [args passed to cargo nextest run / cargo test]
#
# With DATABASE_URL set, the tests use that server: the URL names a database on a server where
# its user may CREATE DATABASE; that database is only used to create and drop others. Without
# it, a throwaway cluster is started in a temp dir and removed on exit.
#
# Then: build every binary, build the migrated template database once, run the whole suite.
# The tests see:
#   PGBUS_TEST_ADMIN_URL   URL of the admin database (create/drop test databases through it)
#   PGBUS_TEST_TEMPLATE    name of the migrated template to clone (CREATE DATABASE ... TEMPLATE)
#   PGBUS_TEST_PG_BINDIR   directory with initdb/pg_ctl/postgres, empty if none was found
# shellcheck disable=SC2329 # cleanup and signal handlers are only called from traps
set -euo pipefail

readonly TEMPLATE_DB=pgbus_template
readonly TEST_DB_PREFIX=pgbus_t_
readonly FIRST_PORT=54400

# State the EXIT trap needs to clean up after us.
CHILD_PID=      # long-running step in its own process group (cargo), killed on a signal
CLUSTER_DIR=    # temp dir of the throwaway cluster: data dir, server log, unix socket
PG_DATA=
PG_LOG=
ADMIN_URL=
USING_DATABASE_URL=false
TEMPLATE_TOUCHED=false

log() { printf 'test.sh: %s\n' "$*" >&2; }
die() {
    printf 'test.sh: error: %s\n' "$*" >&2
    exit 2
}

# --- finding PostgreSQL ------------------------------------------------------------------------

has_server_bins() { [[ -x $1/initdb && -x $1/pg_ctl && -x $1/postgres ]]; }

# The directory holding the server binaries. /usr/local/bin may hold wrappers or symlinks, so
# never take initdb from PATH: ask pg_config, else take the newest /usr/lib/postgresql/*/bin,
# and resolve to the directory the real `postgres` executable lives in.
find_pg_bindir() {
    local dir='' candidate
    if [[ -n ${PGBUS_TEST_PG_BINDIR:-} ]] && has_server_bins "$PGBUS_TEST_PG_BINDIR"; then
        dir=$PGBUS_TEST_PG_BINDIR
    elif command -v pg_config >/dev/null 2>&1; then
        candidate=$(pg_config --bindir 2>/dev/null) || candidate=
        if [[ -n $candidate ]] && has_server_bins "$candidate"; then dir=$candidate; fi
    fi
    if [[ -z $dir ]]; then
        while IFS= read -r candidate; do
            if has_server_bins "$candidate"; then dir=$candidate; break; fi
        done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV)
    fi
    [[ -n $dir ]] || return 0
    candidate=$(dirname "$(readlink -f "$dir/postgres")")
    if has_server_bins "$candidate"; then dir=$candidate; fi
    printf '%s\n' "$dir"
}

# psql of the same version as the server binaries if there is one, else whatever PATH has.
find_psql() {
    if [[ -n $PG_BINDIR && -x $PG_BINDIR/psql ]]; then
        printf '%s\n' "$PG_BINDIR/psql"
    else
        command -v psql || true
    fi
}

# Run SQL against a database; stop at the first error, read no ~/.psqlrc, and skip NOTICEs
# such as "database ... does not exist, skipping".
sql() {
    local url=$1
    shift
    PGCONNECT_TIMEOUT=10 PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning" \
        "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$url" "$@"
}

# The same URL with its database replaced: postgres://authority/db?query -> .../NEW?query.
with_database() {
    local url=$1 db=$2
    local re='^(postgres(ql)?://[^/?]*)(/[^?]*)?(\?.*)?$'
    [[ $url =~ $re ]] || die "DATABASE_URL must look like postgres://user@host:port/database"
    printf '%s/%s%s\n' "${BASH_REMATCH[1]}" "$db" "${BASH_REMATCH[4]}"
}

# --- the throwaway cluster ---------------------------------------------------------------------

# initdb and postgres refuse to run as root, and CI runs as root: then run them as the
# `postgres` OS user. cd into the cluster dir first, since root's cwd may be unreadable to it.
as_pg() {
    if [[ $(id -u) -ne 0 ]]; then
        (cd "$CLUSTER_DIR" && "$@")
    elif command -v runuser >/dev/null 2>&1; then
        (cd "$CLUSTER_DIR" && runuser -u postgres -- "$@")
    else
        (cd "$CLUSTER_DIR" && su postgres -s /bin/sh -c "$(printf '%q ' "$@")")
    fi
}

# True when something already accepts connections on 127.0.0.1:$1.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

server_options() {
    local port=$1
    printf '%s ' -c listen_addresses=127.0.0.1 -p "$port" \
        -c "unix_socket_directories=$CLUSTER_DIR" -c max_connections=500 \
        -c fsync=off -c full_page_writes=off -c synchronous_commit=off -c shared_buffers=256MB
}

# initdb into a fresh temp dir that the postgres user owns.
init_cluster() {
    if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
        die "running as root needs a 'postgres' OS user to run the cluster as"
    fi
    CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pgbus-test.XXXXXX")
    [[ $CLUSTER_DIR != *[[:space:]]* ]] || die "TMPDIR must not contain whitespace"
    PG_DATA=$CLUSTER_DIR/data
    PG_LOG=$CLUSTER_DIR/postgres.log
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres: "$CLUSTER_DIR"
        as_pg test -w "$CLUSTER_DIR" 2>/dev/null ||
            die "user postgres cannot write $CLUSTER_DIR; point TMPDIR somewhere it can reach"
    fi
    as_pg "$PG_BINDIR/initdb" -D "$PG_DATA" -A trust -U postgres --no-sync -E UTF8 \
        --locale=C >"$CLUSTER_DIR/initdb.log" 2>&1 || {
        cat "$CLUSTER_DIR/initdb.log" >&2
        die "initdb failed"
    }
}

# Start on the first free port from FIRST_PORT up. Probing and binding race with anyone else
# doing the same (a second test.sh), so if the bind fails, move on and try again.
start_cluster() {
    local port=$FIRST_PORT attempt
    for attempt in 1 2 3 4 5; do
        while port_in_use "$port"; do
            port=$((port + 1))
            ((port < 65000)) || die "no free TCP port on 127.0.0.1 from $FIRST_PORT up"
        done
        log "starting throwaway cluster on port $port"
        if as_pg "$PG_BINDIR/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 \
            -o "$(server_options "$port")" start >/dev/null; then
            ADMIN_URL=postgres://postgres@127.0.0.1:$port/postgres
            return 0
        fi
        grep -q 'could not bind\|already in use' "$PG_LOG" 2>/dev/null || break
        log "port $port was taken meanwhile (attempt $attempt), trying the next one"
        port=$((port + 1))
    done
    tail -n 30 "$PG_LOG" >&2 || true
    die "the throwaway cluster did not start (server log above)"
}

# Stop the cluster however we can, then remove its dir. Keep the server log in the target dir
# when the run failed, since that is where the evidence usually is.
remove_cluster() {
    local rc=$1 pid
    if [[ -f $PG_DATA/postmaster.pid ]]; then
        if ! as_pg "$PG_BINDIR/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1; then
            pid=$(head -n 1 "$PG_DATA/postmaster.pid" 2>/dev/null) || pid=
            [[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null
        fi
    fi
    if ((rc != 0)) && [[ -s $PG_LOG ]] && mkdir -p "$TARGET_DIR" 2>/dev/null; then
        cp "$PG_LOG" "$TARGET_DIR/pgbus-test-postgres.log" &&
            log "server log kept in $TARGET_DIR/pgbus-test-postgres.log"
    fi
    rm -rf "$CLUSTER_DIR"
    log "throwaway cluster removed"
}

# --- databases ---------------------------------------------------------------------------------

# Tests clone the template with CREATE DATABASE ... TEMPLATE, which fails while anyone is
# connected to it; so once migrated, forbid connections and wait for the migrator's session
# to be gone.
build_template() {
    local template_url busy _
    template_url=$(with_database "$ADMIN_URL" "$TEMPLATE_DB")
    TEMPLATE_TOUCHED=true
    sql "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $TEMPLATE_DB WITH (FORCE)" ||
        die "cannot drop the old template database $TEMPLATE_DB"
    sql "$ADMIN_URL" -c "CREATE DATABASE $TEMPLATE_DB" ||
        die "cannot create $TEMPLATE_DB (does the user have CREATEDB?)"
    "$TARGET_DIR/debug/pgbus" --database-url "$template_url" migrate ||
        die "pgbus migrate failed on the template"
    sql "$ADMIN_URL" -c "ALTER DATABASE $TEMPLATE_DB ALLOW_CONNECTIONS false"
    for _ in {1..50}; do
        busy=$(sql "$ADMIN_URL" -At -c \
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '$TEMPLATE_DB'")
        [[ $busy == 0 ]] && return 0
        sleep 0.2
    done
    die "sessions still connected to $TEMPLATE_DB after migrating it"
}

# On a shared server (DATABASE_URL) nothing else cleans up after crashed or sloppy tests.
drop_test_databases() {
    local n
    n=$(sql "$ADMIN_URL" -At -c \
        "SELECT count(*) FROM pg_database WHERE datname LIKE '${TEST_DB_PREFIX//_/\\_}%'") ||
        return 1
    [[ $n == 0 ]] && return 0
    sql "$ADMIN_URL" <<SQL || return 1
SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', datname)
FROM pg_database WHERE datname LIKE '${TEST_DB_PREFIX//_/\\_}%' \gexec
SQL
    log "dropped $n leftover test database(s) ${TEST_DB_PREFIX}*"
}

# --- running steps and cleaning up -------------------------------------------------------------

# Run a long step in the background, in its own process group, and wait for it. Bash defers
# traps while a foreground command runs, but `wait` returns at once on a signal; the group lets
# the trap stop cargo together with the test processes it started. No stdin: a background
# group reading the terminal would stop, and nothing here needs input.
run_step() {
    local rc=0
    set -m
    "$@" </dev/null &
    CHILD_PID=$!
    set +m
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=
    return "$rc"
}

stop_step() {
    [[ -n $CHILD_PID ]] || return 0
    kill -TERM -- "-$CHILD_PID" 2>/dev/null || return 0
    local _
    for _ in {1..50}; do
        kill -0 -- "-$CHILD_PID" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -KILL -- "-$CHILD_PID" 2>/dev/null || true
}

on_signal() {
    log "interrupted, cleaning up"
    exit "$1"
}

# EXIT trap: runs on success, failure and signals alike; keeps the exit code.
cleanup() {
    local rc=$?
    trap '' INT TERM HUP
    set +e
    stop_step
    if [[ $USING_DATABASE_URL == true && -n $ADMIN_URL && $TEMPLATE_TOUCHED == true ]]; then
        drop_test_databases || log "could not drop leftover ${TEST_DB_PREFIX}* databases"
    fi
    [[ -n $CLUSTER_DIR ]] && remove_cluster "$rc"
    exit "$rc"
}

# --- main --------------------------------------------------------------------------------------

main() {
    trap cleanup EXIT
    trap 'on_signal 130' INT
    trap 'on_signal 143' TERM
    trap 'on_signal 129' HUP

    # Cargo reads a relative CARGO_TARGET_DIR against the cwd; pin it before moving to the root.
    if [[ -n ${CARGO_TARGET_DIR:-} && $CARGO_TARGET_DIR != /* ]]; then
        export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR
    fi
    cd "$(dirname "${BASH_SOURCE[0]}")/.."
    TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

    PG_BINDIR=$(find_pg_bindir)
    PSQL=$(find_psql)
    [[ -n $PSQL ]] || die "psql not found; install the postgresql-client package"

    if [[ -n ${DATABASE_URL:-} ]]; then
        USING_DATABASE_URL=true
        with_database "$DATABASE_URL" x >/dev/null # validates the URL's shape
        ADMIN_URL=$DATABASE_URL
        log "using the server of DATABASE_URL"
        sql "$ADMIN_URL" -c 'SELECT 1' >/dev/null || die "cannot connect to DATABASE_URL"
    else
        [[ -n $PG_BINDIR ]] || die "PostgreSQL server binaries (initdb, pg_ctl) not found;" \
            "install the postgresql package or set DATABASE_URL"
        init_cluster
        start_cluster
    fi

    export PGBUS_TEST_ADMIN_URL=$ADMIN_URL
    export PGBUS_TEST_TEMPLATE=$TEMPLATE_DB
    export PGBUS_TEST_PG_BINDIR=$PG_BINDIR

    log "building"
    run_step cargo build --workspace --bins || die "cargo build failed"

    build_template
    log "template ready ($TEMPLATE_DB)"

    local rc=0
    if cargo nextest --version >/dev/null 2>&1; then
        log "running the suite with cargo nextest"
        run_step cargo nextest run --workspace --no-fail-fast "$@" || rc=$?
    else
        log "running the suite with cargo test (cargo-nextest not installed)"
        run_step cargo test --workspace --no-fail-fast "$@" || rc=$?
    fi
    if ((rc == 0)); then log "tests passed"; else log "tests failed (exit code $rc)"; fi
    exit "$rc"
}

main "$@"
