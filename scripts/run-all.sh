#!/usr/bin/env bash
# Runs the whole retail reference system (DESIGN.md section 10) on one machine and checks it:
# the gateways (payment provider and courier stand-ins), Sales, two instances of Billing,
# Shipping, and the retail client placing a few hundred orders of every kind through them.
#
#   scripts/run-all.sh
#
# 1. builds the binaries in release mode;
# 2. uses a fresh database: a throwaway cluster in a temp dir when DATABASE_URL is unset (as
#    scripts/test.sh does), else a new database named for the run on DATABASE_URL's server;
# 3. migrates it (`retail migrate`), starts every process and waits for its ready line;
# 4. places the orders (normal, declined, slow; some resubmitted), waits until every order is
#    terminal and no message of the run is left in a queue, with a deadline;
# 5. runs `retail verify --run`, prints a summary and where each process's log is;
# 6. stops every process it started, and exits with verify's exit code (2 for its own errors).
#
# The payment timeout is shorter than the slow card's settle time, so slow orders are cancelled
# and then refunded when their charge lands; Billing's retry window (its delayed retries'
# back-off) is longer than the settle time, so no slow charge ends in the error queue.
# Every setting below can be changed through the environment, e.g. ORDERS=1000.
# shellcheck disable=SC2329 # cleanup and signal handlers are only called from traps
set -euo pipefail

ORDERS=${ORDERS:-300}
DECLINED_SHARE=${DECLINED_SHARE:-0.1}
SLOW_SHARE=${SLOW_SHARE:-0.05}
RESUBMIT_SHARE=${RESUBMIT_SHARE:-0.1}
SETTLE_MS=${SETTLE_MS:-5000}           # how long a slow charge takes to settle
PAYMENT_TIMEOUT_MS=${PAYMENT_TIMEOUT_MS:-3000}
FAIL_RATE=${FAIL_RATE:-0.01}           # share of gateway requests answered 503
HTTP_TIMEOUT_MS=${HTTP_TIMEOUT_MS:-300}
# Billing: 1 immediate retry, then 8 delayed ones from 500 ms growing by 1.5: about 25 s in all.
RETRY_IMMEDIATE=${RETRY_IMMEDIATE:-1}
RETRY_DELAYED=${RETRY_DELAYED:-8}
RETRY_DELAY_MS=${RETRY_DELAY_MS:-500}
RETRY_BACKOFF=${RETRY_BACKOFF:-1.5}
DEADLINE_S=${DEADLINE_S:-240}          # for every order to become terminal
READY_TIMEOUT_S=60
readonly FIRST_PORT=54500

# State the EXIT trap needs.
PIDS=()          # every process started, stopped in reverse order
NAMES=()
CLUSTER_DIR=
PG_DATA=
PG_LOG=
ADMIN_URL=
RUN_DB=
DROP_RUN_DB=false

log() { printf 'run-all: %s\n' "$*" >&2; }
die() {
    printf 'run-all: error: %s\n' "$*" >&2
    exit 2
}

# --- PostgreSQL ---------------------------------------------------------------------------------

has_server_bins() { [[ -x $1/initdb && -x $1/pg_ctl && -x $1/postgres ]]; }

# The server binaries' directory: pg_config's, else the newest /usr/lib/postgresql/*/bin.
find_pg_bindir() {
    local candidate
    if command -v pg_config >/dev/null 2>&1; then
        candidate=$(pg_config --bindir 2>/dev/null) || candidate=
        if [[ -n $candidate ]] && has_server_bins "$candidate"; then
            printf '%s\n' "$candidate"
            return 0
        fi
    fi
    while IFS= read -r candidate; do
        if has_server_bins "$candidate"; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV)
}

sql() {
    local url=$1
    shift
    PGCONNECT_TIMEOUT=10 PGOPTIONS="-c client_min_messages=warning" \
        "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$url" "$@"
}

# The same URL with its database replaced: postgres://authority/db?query -> .../NEW?query.
with_database() {
    local url=$1 db=$2
    local re='^(postgres(ql)?://[^/?]*)(/[^?]*)?(\?.*)?$'
    [[ $url =~ $re ]] || die "DATABASE_URL must look like postgres://user@host:port/database"
    printf '%s/%s%s\n' "${BASH_REMATCH[1]}" "$db" "${BASH_REMATCH[4]}"
}

# initdb and postgres refuse to run as root: then run them as the `postgres` OS user.
as_pg() {
    if [[ $(id -u) -ne 0 ]]; then
        (cd "$CLUSTER_DIR" && "$@")
    else
        (cd "$CLUSTER_DIR" && runuser -u postgres -- "$@")
    fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_cluster() {
    local bindir=$1 port=$FIRST_PORT
    if [[ $(id -u) -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' OS user"
        command -v runuser >/dev/null 2>&1 || die "running as root needs runuser"
    fi
    CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pgbus-run.XXXXXX")
    PG_DATA=$CLUSTER_DIR/data
    PG_LOG=$CLUSTER_DIR/postgres.log
    [[ $(id -u) -ne 0 ]] || chown postgres: "$CLUSTER_DIR"
    as_pg "$bindir/initdb" -D "$PG_DATA" -A trust -U postgres --no-sync -E UTF8 --locale=C \
        >"$CLUSTER_DIR/initdb.log" 2>&1 || {
        cat "$CLUSTER_DIR/initdb.log" >&2
        die "initdb failed"
    }
    while port_in_use "$port"; do
        port=$((port + 1))
        ((port < 65000)) || die "no free TCP port on 127.0.0.1 from $FIRST_PORT up"
    done
    # Durable commits, as in production: the summary's figures should mean something.
    as_pg "$bindir/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 -o "-c listen_addresses=127.0.0.1 \
        -p $port -c unix_socket_directories=$CLUSTER_DIR -c max_connections=200" start \
        >/dev/null || {
        tail -n 30 "$PG_LOG" >&2 || true
        die "the throwaway cluster did not start"
    }
    ADMIN_URL=postgres://postgres@127.0.0.1:$port/postgres
    PG_BINDIR=$bindir
    log "throwaway cluster on port $port"
}

stop_cluster() {
    [[ -n $CLUSTER_DIR ]] || return 0
    if [[ -f $PG_DATA/postmaster.pid ]]; then
        as_pg "$PG_BINDIR/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    fi
    [[ -s $PG_LOG ]] && cp "$PG_LOG" "$LOG_DIR/postgres.log" 2>/dev/null
    rm -rf "$CLUSTER_DIR"
}

# --- processes ----------------------------------------------------------------------------------

# start NAME BINARY ARGS...: runs a binary in the background, its log in $LOG_DIR/NAME.log.
start() {
    local name=$1 binary=$2
    shift 2
    "$BIN/$binary" "$@" >"$LOG_DIR/$name.log" 2>&1 </dev/null &
    PIDS+=("$!")
    NAMES+=("$name")
}

# wait_ready NAME NEEDLE: waits for the process's ready line; dies if it exits first.
wait_ready() {
    local name=$1 needle=$2 i pid=
    for i in "${!NAMES[@]}"; do [[ ${NAMES[$i]} == "$name" ]] && pid=${PIDS[$i]}; done
    for ((i = 0; i < READY_TIMEOUT_S * 10; i++)); do
        grep -q -- "$needle" "$LOG_DIR/$name.log" 2>/dev/null && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$LOG_DIR/$name.log" >&2 || true
            die "$name exited before it was ready (log above, in $LOG_DIR/$name.log)"
        fi
        sleep 0.1
    done
    die "$name did not log \"$needle\" within ${READY_TIMEOUT_S}s; see $LOG_DIR/$name.log"
}

stop_processes() {
    local i pid _
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[$i]}" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in {1..100}; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
}

cleanup() {
    local rc=$?
    trap '' INT TERM HUP
    set +e
    ((${#PIDS[@]} == 0)) || stop_processes
    if [[ $DROP_RUN_DB == true && $rc -eq 0 ]]; then
        sql "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $RUN_DB WITH (FORCE)" ||
            log "could not drop database $RUN_DB"
    elif [[ $DROP_RUN_DB == true ]]; then
        log "database $RUN_DB kept for a look; drop it with: DROP DATABASE $RUN_DB"
    fi
    stop_cluster
    exit "$rc"
}

# --- the run ------------------------------------------------------------------------------------

# Orders of the run that are not terminal (shipped, or cancelled without keeping a charge), plus
# messages of the run still waiting in a queue or delayed table.
unfinished() {
    sql "$DB_URL" -At -v run="$RUN" <<'SQL'
WITH run AS (
    SELECT order_id FROM retail.orders WHERE run_id = :'run'
),
money AS (
    SELECT order_id,
           bool_or(operation = 'charge') AS charged,
           bool_or(operation = 'refund') AS refunded
    FROM gateway.ledger
    JOIN run USING (order_id)
    WHERE state = 'succeeded'
    GROUP BY order_id
),
open_orders AS (
    SELECT count(*) AS n
    FROM run
    LEFT JOIN sales.orders s USING (order_id)
    LEFT JOIN money m USING (order_id)
    WHERE s.status IS DISTINCT FROM 'shipped'
      AND NOT (s.status = 'cancelled'
               AND NOT (coalesce(m.charged, false) AND NOT coalesce(m.refunded, false)))
),
waiting AS (
    SELECT (SELECT count(*) FROM bus.sales_queue WHERE headers->>'baggage.run_id' = :'run')
         + (SELECT count(*) FROM bus.billing_queue WHERE headers->>'baggage.run_id' = :'run')
         + (SELECT count(*) FROM bus.shipping_queue WHERE headers->>'baggage.run_id' = :'run')
         + (SELECT count(*) FROM bus.sales_delayed WHERE headers->>'baggage.run_id' = :'run')
         + (SELECT count(*) FROM bus.billing_delayed WHERE headers->>'baggage.run_id' = :'run')
         + (SELECT count(*) FROM bus.shipping_delayed WHERE headers->>'baggage.run_id' = :'run')
           AS n
)
SELECT open_orders.n || ' ' || waiting.n FROM open_orders, waiting
SQL
}

wait_until_finished() {
    local started=$SECONDS counts open waiting
    while true; do
        counts=$(unfinished)
        read -r open waiting <<<"$counts"
        if [[ $open == 0 && $waiting == 0 ]]; then
            log "every order is terminal after $((SECONDS - started))s"
            return 0
        fi
        if ((SECONDS - started >= DEADLINE_S)); then
            log "deadline of ${DEADLINE_S}s passed: $open orders open, $waiting messages waiting"
            return 1
        fi
        sleep 1
    done
}

summary() {
    printf '\n== summary of run %s ==\n\n' "$RUN"
    sql "$DB_URL" -P footer=off -v run="$RUN" <<'SQL'
SELECT o.kind,
       coalesce(s.status, 'unknown to sales') AS final_status,
       count(*) AS orders,
       count(*) FILTER (WHERE p.state = 'refunded') AS refunded,
       count(*) FILTER (WHERE o.resubmitted) AS resubmitted
FROM retail.orders o
LEFT JOIN sales.orders s USING (order_id)
LEFT JOIN billing.payments p USING (order_id)
WHERE o.run_id = :'run'
GROUP BY o.kind, s.status
ORDER BY o.kind, s.status;
SQL
    local figures
    figures=$(sql "$DB_URL" -At -F ' ' -v run="$RUN" <<'SQL'
WITH o AS (
    SELECT o.order_id, o.placed_at, sh.shipped_at,
           greatest(sh.shipped_at, s.updated_at, p.refunded_at) AS finished_at
    FROM retail.orders o
    LEFT JOIN sales.orders s USING (order_id)
    LEFT JOIN shipping.shipments sh USING (order_id)
    LEFT JOIN billing.payments p USING (order_id)
    WHERE o.run_id = :'run'
)
SELECT count(*),
       round(extract(epoch FROM max(finished_at) - min(placed_at))::numeric, 1),
       round(count(*) / greatest(extract(epoch FROM max(finished_at) - min(placed_at)), 0.001)
             ::numeric, 1),
       count(shipped_at),
       coalesce(round(1000 * percentile_cont(0.5) WITHIN GROUP
           (ORDER BY extract(epoch FROM shipped_at - placed_at))::numeric), 0),
       coalesce(round(1000 * percentile_cont(0.99) WITHIN GROUP
           (ORDER BY extract(epoch FROM shipped_at - placed_at))::numeric), 0)
FROM o
SQL
    )
    local orders seconds per_second shipped p50 p99
    read -r orders seconds per_second shipped p50 p99 <<<"$figures"
    printf '%s orders per second (%s orders, first placed to last finished in %s s)\n' \
        "$per_second" "$orders" "$seconds"
    printf 'order to shipped: p50 %s ms, p99 %s ms (%s shipped)\n' "$p50" "$p99" "$shipped"
    printf '\nlogs:\n'
    local name
    for name in "${NAMES[@]}" retail-place retail-verify; do
        printf '  %-14s %s\n' "$name" "$LOG_DIR/$name.log"
    done
    if [[ -n $CLUSTER_DIR ]]; then
        printf '  %-14s %s\n' postgres "$LOG_DIR/postgres.log"
    fi
}

main() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP

    cd "$(dirname "${BASH_SOURCE[0]}")/.."
    local target=${CARGO_TARGET_DIR:-$PWD/target}
    [[ $target == /* ]] || target=$PWD/$target
    BIN=$target/release
    local stamp
    stamp=$(date -u +%Y%m%d-%H%M%S)
    LOG_DIR=$target/run-all/$stamp
    mkdir -p "$LOG_DIR"
    export NO_COLOR=1 RUST_LOG=${RUST_LOG:-info}

    log "building in release mode"
    cargo build --release -p sales -p billing -p shipping -p gateways -p retail ||
        die "cargo build failed"

    local bindir
    bindir=$(find_pg_bindir)
    PSQL=$(command -v psql || true)
    [[ -z $bindir || -n $PSQL ]] || PSQL=$bindir/psql
    [[ -n $PSQL && -x $PSQL ]] || die "psql not found; install the postgresql-client package"

    RUN_DB=pgbus_run_${stamp//-/_}
    if [[ -n ${DATABASE_URL:-} ]]; then
        ADMIN_URL=$DATABASE_URL
        sql "$ADMIN_URL" -c 'SELECT 1' >/dev/null || die "cannot connect to DATABASE_URL"
        sql "$ADMIN_URL" -c "CREATE DATABASE $RUN_DB" || die "cannot create database $RUN_DB"
        DROP_RUN_DB=true
        DB_URL=$(with_database "$ADMIN_URL" "$RUN_DB")
        log "using a new database $RUN_DB on DATABASE_URL's server"
    else
        [[ -n $bindir ]] || die "PostgreSQL server binaries (initdb, pg_ctl) not found;" \
            "install the postgresql package or set DATABASE_URL"
        start_cluster "$bindir"
        sql "$ADMIN_URL" -c "CREATE DATABASE $RUN_DB"
        DB_URL=$(with_database "$ADMIN_URL" "$RUN_DB")
    fi
    export DATABASE_URL=$DB_URL

    "$BIN/retail" migrate >"$LOG_DIR/retail-migrate.log" 2>&1 || {
        cat "$LOG_DIR/retail-migrate.log" >&2
        die "retail migrate failed"
    }

    start gateways gateways --listen 127.0.0.1:0 --settle-ms "$SETTLE_MS" --fail-rate "$FAIL_RATE"
    wait_ready gateways "gateways ready"
    local addr
    addr=$(grep -o 'gateways ready addr=[0-9.:]*' "$LOG_DIR/gateways.log" | head -n 1)
    addr=${addr##*addr=}
    [[ -n $addr ]] || die "no address in the gateways' ready line; see $LOG_DIR/gateways.log"
    export BILLING_GATEWAY_URL=http://$addr SHIPPING_GATEWAY_URL=http://$addr
    export BILLING_HTTP_TIMEOUT_MS=$HTTP_TIMEOUT_MS SHIPPING_HTTP_TIMEOUT_MS=$HTTP_TIMEOUT_MS

    local retry=(--immediate-retries "$RETRY_IMMEDIATE" --delayed-retries "$RETRY_DELAYED"
        --retry-delay-ms "$RETRY_DELAY_MS" --retry-backoff "$RETRY_BACKOFF")
    start sales sales --instance sales-1 "${retry[@]}"
    start billing-1 billing --instance billing-1 "${retry[@]}"
    start billing-2 billing --instance billing-2 "${retry[@]}"
    start shipping shipping --instance shipping-1 --payment-timeout-ms "$PAYMENT_TIMEOUT_MS" \
        "${retry[@]}"
    local name
    for name in sales billing-1 billing-2 shipping; do wait_ready "$name" "endpoint ready"; done
    log "gateways on $addr; sales, billing (2 instances) and shipping ready"

    RUN=$("$BIN/retail" place --count "$ORDERS" --declined-share "$DECLINED_SHARE" \
        --slow-share "$SLOW_SHARE" --resubmit-share "$RESUBMIT_SHARE" \
        2>"$LOG_DIR/retail-place.log") || {
        cat "$LOG_DIR/retail-place.log" >&2
        die "retail place failed"
    }
    log "$(tail -n 1 "$LOG_DIR/retail-place.log" | sed 's/^retail: //')"

    wait_until_finished || true

    local rc=0
    "$BIN/retail" verify --run "$RUN" >"$LOG_DIR/retail-verify.log" 2>&1 || rc=$?
    printf '\n'
    cat "$LOG_DIR/retail-verify.log"
    summary
    exit "$rc"
}

main "$@"
