//! The transport's statements next to the ceiling's, as `pg_stat_statements` recorded them.
//!
//! The ceiling and the transport run in databases of their own, so the extension keeps
//! their entries apart even where the text is the same; each of the hop's statements is
//! looked up in both by its text, whitespace aside.

use serde::Serialize;
use transport_pg::sql::QueueStatements;
use transport_pg::tokio_postgres::Client;

use crate::error::{Error, Result};

/// One statement as one database's entry shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The text the extension kept.
    pub query: String,
    /// Executions.
    pub calls: i64,
    /// Mean execution time, milliseconds.
    pub mean_ms: f64,
    /// Rows returned or affected per call.
    pub rows_per_call: f64,
}

/// One of the hop's statements in the ceiling's database and the transport's.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    /// What the statement does in the hop.
    pub role: &'static str,
    /// The text the transport's code holds, as the extension records it
    /// ([`as_recorded`]).
    pub statement: String,
    /// The ceiling's entry, when pgbench ran it.
    pub ceiling: Option<Entry>,
    /// The transport's entry.
    pub transport: Option<Entry>,
    /// Whether both entries exist and their texts match, whitespace aside.
    pub same_text: bool,
    /// Whether the ceiling's count is only of first runs: before PostgreSQL 16 the
    /// extension counts a utility statement (BEGIN, COMMIT) run from a
    /// named prepared statement, as `pgbench -M prepared` runs it, only the first time on
    /// each connection. The transport sends those as simple queries, counted every time.
    pub ceiling_counted_once: bool,
}

/// Whitespace collapsed and a trailing semicolon dropped.
fn normalize(sql: &str) -> String {
    let joined = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    joined.trim_end_matches(';').trim_end().to_owned()
}

/// `statement` as the extension records it: it replaces each constant with a placeholder,
/// numbered on from the statement's highest parameter. The only constants in the queue
/// statements the bench looks up are LIMITs (written `LIMIT <number>`, in capitals, as the
/// transport writes its SQL), so only those are replaced; the receives of every batch size
/// then share one recorded text.
pub fn as_recorded(statement: &str) -> String {
    let highest = statement
        .split('$')
        .skip(1)
        .filter_map(|after| leading_digits(after).parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    let mut next = highest + 1;
    let mut out = String::with_capacity(statement.len());
    let mut rest = statement;
    while let Some(at) = rest.find("LIMIT ") {
        let keyword = !rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let (before, after) = rest.split_at(at + "LIMIT ".len());
        out.push_str(before);
        let digits = if keyword {
            leading_digits(after).len()
        } else {
            0
        };
        if digits > 0 {
            out.push_str(&format!("${next}"));
            next += 1;
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// The ASCII digits `text` starts with.
fn leading_digits(text: &str) -> &str {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    &text[..end]
}

/// The hop's statements: what each does, its text as the extension records it, and
/// whether it is a utility statement.
fn hop_statements(statements: &QueueStatements) -> Vec<(&'static str, String, bool)> {
    vec![
        ("begin", "BEGIN".to_owned(), true),
        ("receive n", as_recorded(&statements.receive.sql), false),
        ("send n", statements.insert.clone(), false),
        ("commit", "COMMIT".to_owned(), true),
    ]
}

/// Reads the extension's entries of `database` (through `admin`, in any database of the
/// cluster where the extension is created).
async fn entries(admin: &Client, database: &str) -> Result<Vec<Entry>> {
    let rows = admin
        .query(
            "SELECT s.query, s.calls, s.mean_exec_time, s.rows \
             FROM pg_stat_statements AS s \
             JOIN pg_database AS d ON d.oid = s.dbid \
             WHERE d.datname = $1 AND s.toplevel",
            &[&database],
        )
        .await
        .map_err(Error::db("read pg_stat_statements"))?;
    Ok(rows
        .iter()
        .map(|row| {
            let calls: i64 = row.get(1);
            let rows: i64 = row.get(3);
            Entry {
                query: row.get(0),
                calls,
                mean_ms: row.get(2),
                rows_per_call: if calls > 0 {
                    rows as f64 / calls as f64
                } else {
                    0.0
                },
            }
        })
        .collect())
}

/// The statements whose text matches `statement`, merged into one entry.
fn find(entries: &[Entry], statement: &str) -> Option<Entry> {
    let wanted = normalize(statement);
    let matching: Vec<&Entry> = entries
        .iter()
        .filter(|e| normalize(&e.query) == wanted)
        .collect();
    let first = matching.first()?;
    let calls: i64 = matching.iter().map(|e| e.calls).sum();
    let total_ms: f64 = matching.iter().map(|e| e.mean_ms * e.calls as f64).sum();
    let rows: f64 = matching
        .iter()
        .map(|e| e.rows_per_call * e.calls as f64)
        .sum();
    Some(Entry {
        query: first.query.clone(),
        calls,
        mean_ms: if calls > 0 {
            total_ms / calls as f64
        } else {
            0.0
        },
        rows_per_call: if calls > 0 { rows / calls as f64 } else { 0.0 },
    })
}

/// The hop's statements in the ceiling's database and the transport's; `server_version`
/// is `server_version_num`, which decides how the ceiling's utility statements count.
pub async fn side_by_side(
    admin: &Client,
    statements: &QueueStatements,
    ceiling_db: &str,
    transport_db: &str,
    server_version: i32,
) -> Result<Vec<Pair>> {
    let ceiling = entries(admin, ceiling_db).await?;
    let transport = entries(admin, transport_db).await?;
    Ok(hop_statements(statements)
        .into_iter()
        .map(|(role, statement, utility)| {
            let c = find(&ceiling, &statement);
            let t = find(&transport, &statement);
            let same_text = match (&c, &t) {
                (Some(c), Some(t)) => normalize(&c.query) == normalize(&t.query),
                _ => false,
            };
            Pair {
                role,
                statement,
                ceiling: c,
                transport: t,
                same_text,
                ceiling_counted_once: utility && server_version < 160_000,
            }
        })
        .collect())
}

/// Every entry of `database` with at least `min_calls` calls, busiest first, for the JSON.
pub async fn busiest(admin: &Client, database: &str, min_calls: i64) -> Result<Vec<Entry>> {
    let mut all = entries(admin, database).await?;
    all.retain(|e| e.calls >= min_calls);
    all.sort_by_key(|e| std::cmp::Reverse(e.calls));
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizing_ignores_layout_and_the_final_semicolon() {
        assert_eq!(normalize("SELECT 1\n   FROM  x ;"), "SELECT 1 FROM x");
        assert_eq!(normalize("BEGIN"), normalize("BEGIN;"));
    }

    #[test]
    fn a_limit_is_recorded_as_the_next_placeholder() {
        assert_eq!(
            as_recorded("SELECT seq FROM q WHERE seq > $1 LIMIT 10 FOR UPDATE"),
            "SELECT seq FROM q WHERE seq > $1 LIMIT $2 FOR UPDATE"
        );
        assert_eq!(
            as_recorded("SELECT x FROM t LIMIT 50"),
            "SELECT x FROM t LIMIT $1"
        );
        assert_eq!(
            as_recorded("SELECT x FROM t LIMIT $1"),
            "SELECT x FROM t LIMIT $1"
        );
        assert_eq!(
            as_recorded("SELECT $10, $2 FROM t WHERE a IN (SELECT a LIMIT 3) LIMIT 7"),
            "SELECT $10, $2 FROM t WHERE a IN (SELECT a LIMIT $11) LIMIT $12"
        );
        assert_eq!(as_recorded("SELECT NOLIMIT 5"), "SELECT NOLIMIT 5");
        assert_eq!(
            as_recorded("INSERT INTO t SELECT $1"),
            "INSERT INTO t SELECT $1"
        );
    }

    #[test]
    fn entries_of_one_text_are_merged() {
        let e = |q: &str, calls, mean| Entry {
            query: q.to_owned(),
            calls,
            mean_ms: mean,
            rows_per_call: 1.0,
        };
        let merged = find(
            &[
                e("COMMIT", 2, 1.0),
                e("COMMIT;", 2, 3.0),
                e("BEGIN", 9, 0.1),
            ],
            "COMMIT",
        )
        .unwrap();
        assert_eq!(merged.calls, 4);
        assert!((merged.mean_ms - 2.0).abs() < 1e-9);
    }
}
