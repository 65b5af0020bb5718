//! The flags every endpoint binary shares (instance name, workers, batch size, retry
//! policy, grace period, and for the ones that call an HTTP service its address and
//! timeout), and the conventions around them: every flag also read from an environment
//! variable named after the binary, a one-line error for a bad flag (exit 2), the
//! instance name in the database's `application_name`, and the exit codes.
//!
//! ```no_run
//! use clap::Parser;
//! use service::endpoint::{self, EndpointArgs};
//!
//! #[derive(Debug, Parser)]
//! #[command(version, about)]
//! struct Args {
//!     #[command(flatten)]
//!     endpoint: EndpointArgs,
//! }
//!
//! // --concurrency is also BILLING_CONCURRENCY, --batch-size BILLING_BATCH_SIZE, ...
//! let args: Args = endpoint::parse("billing", "BILLING", &[]);
//! ```

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, Parser};
use transport_pg::{Database, RetryPolicy, Shutdown};

use crate::DatabaseArgs;

/// The longest instance name, so that `<endpoint>/<instance>` fits `application_name`
/// (63 bytes) with room for the longest endpoint name.
pub const MAX_INSTANCE_LEN: usize = 20;

/// How one endpoint process runs: its name among the instances, its workers and batches,
/// its retry policy and its shutdown grace period.
#[derive(Debug, Clone, Args)]
pub struct EndpointArgs {
    /// This process's name among the endpoint's instances (letters, digits, '.', '_', '-';
    /// at most 20): on its log lines and in the database's application_name
    /// (endpoint/instance, e.g. billing/b2). Default: the host name and the process id.
    #[arg(long, value_parser = instance_name)]
    pub instance: Option<String>,

    /// Worker tasks; each handles one batch at a time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    /// Runtime threads, 1 to 64. One thread runs every worker and connection, which suits
    /// handlers that mostly wait for the database; raise it for handlers that spend much
    /// CPU of their own, or run more processes instead.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,

    /// Messages per transaction, 1 to 50.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=50))]
    pub batch_size: u16,

    /// Immediate retries of a failing message.
    #[arg(long, default_value_t = 3)]
    pub immediate_retries: u32,

    /// Delayed retries after the immediate ones, before the error queue.
    #[arg(long, default_value_t = 3)]
    pub delayed_retries: u32,

    /// Milliseconds before the first delayed retry; each later one is longer by the
    /// back-off factor.
    #[arg(long, default_value_t = 10_000)]
    pub retry_delay_ms: u64,

    /// Growth of the delay from one delayed retry to the next (at least 1).
    #[arg(long, default_value_t = 3.0, value_parser = backoff_factor)]
    pub retry_backoff: f64,

    /// Milliseconds in-flight batches get to commit after SIGINT or SIGTERM; past it they
    /// roll back and the process exits 3.
    #[arg(long, default_value_t = 10_000)]
    pub grace_ms: u64,
}

impl EndpointArgs {
    /// The instance name: the flag's, or `<host>-<pid>`.
    pub fn instance(&self) -> String {
        self.instance.clone().unwrap_or_else(default_instance)
    }

    /// The retry policy the flags describe.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            immediate: self.immediate_retries,
            delayed: self.delayed_retries,
            first_delay: Duration::from_millis(self.retry_delay_ms),
            backoff_factor: self.retry_backoff,
            ..RetryPolicy::default()
        }
    }

    /// The shutdown grace period.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }

    /// The database of `database`, its connections named `<endpoint>/<instance>` (unless
    /// the connection string names them already), so `pg_stat_activity` tells the
    /// instances apart.
    pub fn database(
        &self,
        database: &DatabaseArgs,
        endpoint: &str,
    ) -> Result<Database, transport_pg::Error> {
        let named = DatabaseArgs {
            database_url: with_application_name(
                &database.database_url,
                &format!("{endpoint}/{}", self.instance()),
            ),
            ..database.clone()
        };
        named.database()
    }
}

/// Where an HTTP service an endpoint calls lives, and how long one call may take.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Base URL of the gateways process (payment provider and courier).
    #[arg(long, default_value = "http://127.0.0.1:7480")]
    pub gateway_url: String,

    /// Milliseconds one gateway call may take, connecting included. A call that takes
    /// longer is a retryable failure; its idempotency key makes the retry safe. The call
    /// runs inside the receive transaction, so keep it short.
    #[arg(long, default_value_t = 2_000,
        value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub http_timeout_ms: u64,
}

impl GatewayArgs {
    /// The per-call timeout.
    pub fn http_timeout(&self) -> Duration {
        Duration::from_millis(self.http_timeout_ms)
    }
}

/// Parses the command line into `T`, giving every flag that has no environment variable
/// of its own one named `<env_prefix>_<FLAG>` (`--batch-size` of `billing` is
/// `BILLING_BATCH_SIZE`), and replacing the default of each flag in `defaults` (by field
/// name, e.g. `("batch_size", "10")`).
///
/// `--help` and `--version` print and exit 0. A bad flag prints one line,
/// `<bin>: <reason>`, and exits 2.
///
/// # Panics
///
/// When `defaults` names a field `T` does not have: a mistake in the binary.
pub fn parse<T: Parser>(bin: &str, env_prefix: &str, defaults: &[(&str, &str)]) -> T {
    parse_from(bin, env_prefix, defaults, std::env::args_os())
}

/// [`parse`] over the given arguments (the first is the program name).
pub fn parse_from<T, I>(bin: &str, env_prefix: &str, defaults: &[(&str, &str)], args: I) -> T
where
    T: Parser,
    I: IntoIterator,
    I::Item: Into<OsString> + Clone,
{
    let mut command = T::command();
    let unnamed: Vec<String> = command
        .get_arguments()
        .filter(|a| a.get_env().is_none() && a.get_long().is_some())
        .map(|a| a.get_id().to_string())
        .filter(|id| id != "help" && id != "version")
        .collect();
    for id in unnamed {
        let env = format!("{env_prefix}_{}", id.to_ascii_uppercase());
        command = command.mut_arg(id, |a| a.env(env));
    }
    for (id, value) in defaults {
        let value = (*value).to_owned();
        command = command.mut_arg(*id, |a| a.default_value(value));
    }

    let parsed = command
        .try_get_matches_from(args)
        .and_then(|mut matches| T::from_arg_matches_mut(&mut matches));
    match parsed {
        Ok(parsed) => parsed,
        Err(error) => match error.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => error.exit(),
            _ => {
                eprintln!("{bin}: {}; see {bin} --help", one_line(&error));
                std::process::exit(2);
            }
        },
    }
}

/// clap's error without its usage block and tips, on one line.
fn one_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let reason = rendered.split("\nUsage:").next().unwrap_or(&rendered);
    let parts: Vec<&str> = reason
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    let line = parts.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_owned()
}

/// Runs an endpoint's main future on a runtime of `threads` threads and turns how it
/// ended into the exit code (see [`exit_code`]).
///
/// One thread is the default because an endpoint's work is mostly waiting for
/// PostgreSQL: on one thread a worker and its connection's task wake each other without
/// crossing threads, which the order flow measured as about a tenth less CPU an order
/// than tokio's multi-threaded runtime on two cores.
pub fn run<F>(bin: &str, threads: u16, main: F) -> ExitCode
where
    F: Future<Output = Result<Shutdown, Box<dyn std::error::Error>>>,
{
    let built = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(threads))
            .enable_all()
            .build()
    };
    match built {
        Ok(runtime) => exit_code(bin, runtime.block_on(main)),
        Err(error) => {
            eprintln!("{bin}: cannot start the async runtime ({threads} threads): {error}");
            ExitCode::FAILURE
        }
    }
}

/// The exit code for how an endpoint ended: 0 after a clean shutdown, 3 when the grace
/// period ran out, 1 after an error, which is printed as one line, `<bin>: <reason>`.
pub fn exit_code(bin: &str, outcome: Result<Shutdown, Box<dyn std::error::Error>>) -> ExitCode {
    match outcome {
        Ok(Shutdown::Clean) => ExitCode::SUCCESS,
        Ok(Shutdown::TimedOut) => ExitCode::from(3),
        Err(error) => {
            eprintln!("{bin}: {}", transport_pg::error_chain(&*error));
            ExitCode::FAILURE
        }
    }
}

/// `url` with `application_name` set to `name`, unless it names one already. `name`
/// holds only characters that need no quoting or escaping in either form.
fn with_application_name(url: &str, name: &str) -> String {
    if url.contains("application_name") {
        return url.to_owned();
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}application_name={name}")
    } else {
        format!("{url} application_name={name}")
    }
}

fn instance_name(text: &str) -> Result<String, String> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if text.is_empty() || text.len() > MAX_INSTANCE_LEN || !text.chars().all(valid_char) {
        return Err(format!(
            "{text:?} must be 1 to {MAX_INSTANCE_LEN} ASCII letters, digits, '.', '_' or '-'"
        ));
    }
    Ok(text.to_owned())
}

fn backoff_factor(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(factor) if factor >= 1.0 && factor.is_finite() => Ok(factor),
        Ok(factor) => Err(format!("{factor} is not a number of at least 1")),
        Err(_) => Err(format!("{text:?} is not a number")),
    }
}

/// `<host>-<pid>`, cut and cleaned to a valid instance name.
fn default_instance() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .split('.')
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(12)
        .collect();
    let pid = std::process::id();
    if host.is_empty() {
        format!("pid-{pid}")
    } else {
        format!("{host}-{pid}")
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[derive(Debug, Parser)]
    struct Demo {
        #[command(flatten)]
        endpoint: EndpointArgs,
        #[command(flatten)]
        gateway: GatewayArgs,
    }

    #[test]
    fn the_application_name_is_added_to_either_form_unless_present() {
        assert_eq!(
            with_application_name("postgres://u@h/db", "billing/b1"),
            "postgres://u@h/db?application_name=billing/b1"
        );
        assert_eq!(
            with_application_name("postgres://u@h/db?sslmode=disable", "s/x"),
            "postgres://u@h/db?sslmode=disable&application_name=s/x"
        );
        assert_eq!(
            with_application_name("host=h dbname=d", "s/x"),
            "host=h dbname=d application_name=s/x"
        );
        let theirs = "host=h application_name=mine";
        assert_eq!(with_application_name(theirs, "s/x"), theirs);
    }

    #[test]
    fn defaults_can_be_replaced_and_flags_read() {
        let demo: Demo = parse_from(
            "demo",
            "DEMO_TEST_UNSET",
            &[("batch_size", "10")],
            ["demo", "--instance", "b-2", "--retry-backoff", "2"],
        );
        assert_eq!(demo.endpoint.batch_size, 10);
        assert_eq!(demo.endpoint.instance(), "b-2");
        assert_eq!(demo.endpoint.retry_policy().backoff_factor, 2.0);
        assert_eq!(demo.gateway.http_timeout(), Duration::from_secs(2));
    }

    #[test]
    fn a_default_instance_is_a_valid_one() {
        assert!(instance_name(&default_instance()).is_ok());
        assert!(instance_name("a b").is_err());
        assert!(instance_name(&"x".repeat(MAX_INSTANCE_LEN + 1)).is_err());
    }

    #[test]
    fn clap_errors_fold_to_one_line() {
        let error = Demo::command()
            .try_get_matches_from(["demo", "--concurrency", "zero"])
            .unwrap_err();
        let line = one_line(&error);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("--concurrency"), "{line}");
        assert!(!line.starts_with("error:"), "{line}");
    }

    #[test]
    fn threads_pick_the_runtime_and_zero_is_refused() {
        let flavor = |threads| {
            let seen = std::sync::Mutex::new(None);
            let code = run("demo", threads, async {
                let handle = tokio::runtime::Handle::current();
                *seen.lock().unwrap() = Some(handle.runtime_flavor());
                Ok(Shutdown::TimedOut)
            });
            // ExitCode has no PartialEq; its Debug form names the code.
            assert_eq!(format!("{code:?}"), format!("{:?}", ExitCode::from(3)));
            seen.into_inner().unwrap()
        };
        assert_eq!(
            flavor(1),
            Some(tokio::runtime::RuntimeFlavor::CurrentThread)
        );
        assert_eq!(flavor(2), Some(tokio::runtime::RuntimeFlavor::MultiThread));

        let demo: Demo = parse_from("demo", "DEMO_TEST_UNSET", &[], ["demo"]);
        assert_eq!(demo.endpoint.threads, 1);
        let refused = Demo::command().try_get_matches_from(["demo", "--threads", "0"]);
        assert!(refused.is_err());
    }
}
