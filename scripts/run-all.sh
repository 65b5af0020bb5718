#!/usr/bin/env bash
# Runs the whole retail reference system (DESIGN.md section 10): Sales, Billing, Shipping,
# the payment and courier gateways, and the retail client placing orders through them.
#
#   scripts/run-all.sh
#
# None of those is built yet, so for now it only says so, points at what does exist, and
# exits 0.
set -euo pipefail

cat <<'TEXT'
run-all.sh: the retail reference system (sales, billing, shipping, the gateways and the
retail client) is not built yet, so there is nothing to run.

What exists today:
  scripts/test.sh      builds every binary and runs the whole test suite against a real
                       PostgreSQL (DATABASE_URL if set, else a throwaway cluster)
  example-endpoint     a small endpoint to run by hand:
                         cargo build -p example-endpoint
                         target/debug/example-endpoint --database-url postgres://USER@HOST/DB

See README.md for the tables, the headers and how to write a message with plain SQL.
TEXT
exit 0
