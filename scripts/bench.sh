#!/usr/bin/env bash
# The benchmark (DESIGN.md section 12): the transport against its own SQL run by pgbench (the
# ceiling) and against pgmq, on a private throwaway cluster, every figure from this one run.
#
#   scripts/bench.sh            the default run, under ten minutes once built
#   scripts/bench.sh --quick    fewer seconds per run, under two minutes
#   scripts/bench.sh --soak     the default run plus the soak (a million messages, 2 min+)
#   scripts/bench.sh -- --batches 1,10,50 --clients 4    anything after -- goes to the binary
#
# It builds the workspace in release mode, fetches pgmq's install script from the pgmq crate
# through cargo (a throwaway cargo project under target/bench; nothing of pgmq is committed),
# starts a cluster with durable commits (fsync and synchronous_commit on) and
# pg_stat_statements preloaded, runs target/release/bench, and stops the cluster on exit.
# The table goes to the screen and to target/bench/bench-<time>.txt, the same as JSON to
# target/bench/bench-<time>.json; latest.txt and latest.json are copies of the last run's.
# shellcheck disable=SC2329 # cleanup and signal handlers are only called from traps
set -euo pipefail

readonly FIRST_PORT=54500
# The pgmq crate whose embedded install script is used: its latest stable release.
readonly PGMQ_CRATE_VERSION=${PGMQ_CRATE_VERSION:-0.33.7}

CHILD_PID=   # long-running step in its own process group, stopped on a signal
CLUSTER_DIR= # the throwaway cluster's temp dir: data dir, server log, unix socket
PG_DATA=
PG_LOG=
PORT=
TARGET_DIR=

log() { printf 'bench.sh: %s\n' "$*" >&2; }
die() {
    printf 'bench.sh: error: %s\n' "$*" >&2
    exit 2
}

usage() {
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# --- PostgreSQL --------------------------------------------------------------------------------

has_server_bins() { [[ -x $1/initdb && -x $1/pg_ctl && -x $1/postgres ]]; }

# The server binaries' directory: pg_config's, else the newest /usr/lib/postgresql/*/bin, resolved
# to where the real `postgres` lives (PATH may hold wrappers).
find_pg_bindir() {
    local dir='' candidate
    if command -v pg_config >/dev/null 2>&1; then
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

# initdb and postgres refuse to run as root: then run them as the `postgres` OS user, from the
# cluster dir (root's cwd may be unreadable to it).
as_pg() {
    if [[ $(id -u) -ne 0 ]]; then
        (cd "$CLUSTER_DIR" && "$@")
    elif command -v runuser >/dev/null 2>&1; then
        (cd "$CLUSTER_DIR" && runuser -u postgres -- "$@")
    else
        (cd "$CLUSTER_DIR" && su postgres -s /bin/sh -c "$(printf '%q ' "$@")")
    fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Durable commits as DESIGN.md section 12 measured them; checkpoints far apart so that none
# lands inside a short measurement; room for 16 pgbench clients, the endpoints' pools and
# the order flow's processes.
server_options() {
    printf '%s ' -c listen_addresses=127.0.0.1 -p "$1" \
        -c "unix_socket_directories=$CLUSTER_DIR" \
        -c fsync=on -c synchronous_commit=on -c full_page_writes=on \
        -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.max=10000 \
        -c max_connections=300 -c shared_buffers=512MB \
        -c max_wal_size=8GB -c checkpoint_timeout=30min \
        -c log_min_messages=warning -c log_checkpoints=on
}

init_cluster() {
    if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
        die "running as root needs a 'postgres' OS user to run the cluster as"
    fi
    CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pgbus-bench.XXXXXX")
    [[ $CLUSTER_DIR != *[[:space:]]* ]] || die "TMPDIR must not contain whitespace"
    PG_DATA=$CLUSTER_DIR/data
    PG_LOG=$CLUSTER_DIR/postgres.log
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres: "$CLUSTER_DIR"
        as_pg test -w "$CLUSTER_DIR" 2>/dev/null ||
            die "user postgres cannot write $CLUSTER_DIR; point TMPDIR somewhere it can reach"
    fi
    as_pg "$PG_BINDIR/initdb" -D "$PG_DATA" -A trust -U postgres -E UTF8 --locale=C \
        >"$CLUSTER_DIR/initdb.log" 2>&1 || {
        cat "$CLUSTER_DIR/initdb.log" >&2
        die "initdb failed"
    }
}

# The first free port from FIRST_PORT up; if the bind races with someone else, the next one.
start_cluster() {
    local port=$FIRST_PORT attempt
    for attempt in 1 2 3 4 5; do
        while port_in_use "$port"; do
            port=$((port + 1))
            ((port < 65000)) || die "no free TCP port on 127.0.0.1 from $FIRST_PORT up"
        done
        if as_pg "$PG_BINDIR/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 \
            -o "$(server_options "$port")" start >/dev/null; then
            PORT=$port
            return 0
        fi
        grep -q 'could not bind\|already in use' "$PG_LOG" 2>/dev/null || break
        log "port $port was taken meanwhile (attempt $attempt), trying the next one"
        port=$((port + 1))
    done
    tail -n 30 "$PG_LOG" >&2 || true
    die "the throwaway cluster did not start (server log above)"
}

remove_cluster() {
    local rc=$1 pid
    if [[ -f $PG_DATA/postmaster.pid ]]; then
        if ! as_pg "$PG_BINDIR/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1; then
            pid=$(head -n 1 "$PG_DATA/postmaster.pid" 2>/dev/null) || pid=
            [[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null
        fi
    fi
    if [[ -s $PG_LOG ]] && mkdir -p "$TARGET_DIR/bench" 2>/dev/null; then
        cp "$PG_LOG" "$TARGET_DIR/bench/postgres.log" 2>/dev/null || true
        ((rc == 0)) || log "server log kept in $TARGET_DIR/bench/postgres.log"
    fi
    rm -rf "$CLUSTER_DIR"
    log "throwaway cluster removed"
}

# --- pgmq --------------------------------------------------------------------------------------

# Prints the path of pgmq.sql from the pgmq crate, fetched through cargo from the registry into
# a throwaway project of its own (its own [workspace], so it is not part of ours).
fetch_pgmq() {
    local dir=$TARGET_DIR/bench/pgmq-fetch manifest
    mkdir -p "$dir/src"
    cat >"$dir/Cargo.toml" <<EOF
[package]
name = "pgmq-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
pgmq = { version = "=$PGMQ_CRATE_VERSION", default-features = false }

[workspace]
EOF
    printf 'fn main() {}\n' >"$dir/src/main.rs"
    (cd "$dir" && cargo fetch --quiet) >&2 || return 1
    manifest=$(cd "$dir" && cargo metadata --format-version 1 --offline 2>/dev/null |
        grep -o "\"manifest_path\":\"[^\"]*/pgmq-$PGMQ_CRATE_VERSION/Cargo.toml\"" |
        head -n 1 | sed 's/^"manifest_path":"//; s/"$//') || return 1
    [[ -n $manifest ]] || return 1
    local sql
    sql=$(dirname "$manifest")/src/install/embedded/sql/pgmq.sql
    [[ -f $sql ]] || return 1
    printf '%s\n' "$sql"
}

# --- steps and cleaning up ---------------------------------------------------------------------

# Runs a long step in its own process group and waits, so that a signal's trap can stop it and
# everything it started.
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

cleanup() {
    local rc=$?
    trap '' INT TERM HUP
    set +e
    stop_step
    [[ -n $CLUSTER_DIR ]] && remove_cluster "$rc"
    exit "$rc"
}

# --- main --------------------------------------------------------------------------------------

main() {
    local mode_args=() pass=()
    while (($#)); do
        case $1 in
        --quick | --soak) mode_args+=("$1") ;;
        -h | --help)
            usage
            exit 0
            ;;
        --)
            shift
            pass=("$@")
            break
            ;;
        *) die "unknown argument $1 (try --help; arguments for the binary go after --)" ;;
        esac
        shift
    done

    trap cleanup EXIT
    trap 'on_signal 130' INT
    trap 'on_signal 143' TERM
    trap 'on_signal 129' HUP

    if [[ -n ${CARGO_TARGET_DIR:-} && $CARGO_TARGET_DIR != /* ]]; then
        export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR
    fi
    cd "$(dirname "${BASH_SOURCE[0]}")/.."
    TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
    local started=$SECONDS stamp
    stamp=$(date -u +%Y%m%dT%H%M%SZ)

    PG_BINDIR=$(find_pg_bindir)
    [[ -n $PG_BINDIR ]] || die "PostgreSQL server binaries (initdb, pg_ctl) not found;" \
        "install the postgresql package"
    local pgbench=$PG_BINDIR/pgbench
    [[ -x $pgbench ]] || pgbench=$(command -v pgbench) || die "pgbench not found"

    log "building the workspace in release mode"
    if ! run_step cargo build --release --workspace --bins; then
        # Another change may leave the workspace briefly unbuildable; the bench itself and the
        # endpoint it measures may still build, and the order flow reports what is missing.
        log "the workspace build failed; building only the bench and the example endpoint"
        run_step cargo build --release -p bench -p example-endpoint || die "cargo build failed"
    fi
    log "built in $((SECONDS - started)) s"

    local pgmq_args=()
    log "fetching pgmq $PGMQ_CRATE_VERSION's install script from its crate"
    local pgmq_sql
    if pgmq_sql=$(fetch_pgmq); then
        pgmq_args=(--pgmq-sql "$pgmq_sql"
            --pgmq-source "crate pgmq $PGMQ_CRATE_VERSION, src/install/embedded/sql/pgmq.sql")
    else
        log "could not fetch the pgmq crate; pgmq is skipped"
        pgmq_args=(--pgmq-skip-reason "the pgmq $PGMQ_CRATE_VERSION crate could not be fetched")
    fi

    init_cluster
    start_cluster
    log "throwaway cluster on 127.0.0.1:$PORT (fsync on, synchronous_commit on)"

    local out=$TARGET_DIR/bench
    mkdir -p "$out"
    local json=$out/bench-$stamp.json text=$out/bench-$stamp.txt rc=0 measuring=$SECONDS
    log "measuring"
    run_step "$TARGET_DIR/release/bench" --host 127.0.0.1 --port "$PORT" --user postgres \
        --pgbench "$pgbench" "${pgmq_args[@]}" --bin-dir "$TARGET_DIR/release" \
        --work-dir "$out/work-$stamp" --json "$json" "${mode_args[@]}" "${pass[@]}" \
        >"$text" || rc=$?
    if ((rc != 0)); then
        [[ -s $text ]] && cat "$text"
        die "the bench failed (exit code $rc)"
    fi
    cat "$text"
    cp "$json" "$out/latest.json"
    cp "$text" "$out/latest.txt"
    log "measured in $((SECONDS - measuring)) s, $((SECONDS - started)) s in all"
    log "report: $json and $text (copied to latest.json and latest.txt)"
}

main "$@"
