//! The admin client: the `tenantry` subcommands that drive a running host's
//! admin API (see `docs/admin-api.md`, section CLI).
//!
//! ```text
//! tenantry tenant create ID [--plan P] [--suspended]
//! tenantry tenant list
//! tenantry tenant show ID
//! tenantry tenant suspend ID [--reason TEXT]
//! tenantry tenant resume ID
//! tenantry tenant delete ID
//! tenantry deploy --tenant T plugin.wasm [--activate] [--canary PERCENT]
//! tenantry versions --tenant T
//! tenantry activate --tenant T VERSION [--canary PERCENT]
//! tenantry rollback --tenant T
//! tenantry keys create --tenant T
//! ```
//!
//! Every command takes `--url` (env `TENANTRY_ADMIN_URL`, default
//! `http://127.0.0.1:9090`), `--token` (env `TENANTRY_ADMIN_TOKEN`: the
//! operator token or a tenant's deploy key) and `--json` (print the API's
//! JSON instead of readable text). The transport is plain HTTP/1.1 over
//! hyper, one connection per request; `https://` is refused (bind the admin
//! listener to a private interface, or tunnel to it).
//!
//! Module map: [`http`] is the typed HTTP client, `commands` maps each
//! command to its requests, [`output`] decodes and formats the answers.

mod commands;
pub mod http;
pub mod output;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

pub use http::ApiError;

/// Default admin API URL (the host's default `--admin-listen` address).
pub const DEFAULT_URL: &str = "http://127.0.0.1:9090";

/// The admin subcommands of `tenantry` (flatten into the top-level command enum).
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Create, list, show, suspend, resume or delete tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Upload a plugin (.wasm component) for a tenant, optionally activating it.
    Deploy(DeployArgs),
    /// List a tenant's uploaded plugin versions.
    Versions(TenantFlagArgs),
    /// Activate an uploaded version (or start it as a canary).
    Activate(ActivateArgs),
    /// End a running canary, or re-activate the previously active version.
    Rollback(TenantFlagArgs),
    /// Manage a tenant's deploy keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// `tenantry tenant ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (it has no plugin until a version is activated).
    Create(TenantCreateArgs),
    /// List every tenant.
    List(ListArgs),
    /// Show one tenant.
    Show(TenantIdArgs),
    /// Refuse new connections and close the open ones.
    Suspend(TenantSuspendArgs),
    /// Let connections in again.
    Resume(TenantIdArgs),
    /// Delete a tenant and all its data (plugins, keys, KV).
    Delete(TenantIdArgs),
}

/// `tenantry keys ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Create a deploy key for a tenant (shown once).
    Create(TenantFlagArgs),
}

/// Where the admin API is and how to authenticate; common to every command.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Admin API base URL (http:// only).
    #[arg(long, env = "TENANTRY_ADMIN_URL", default_value = DEFAULT_URL, value_name = "URL")]
    pub url: String,
    /// Operator token or the tenant's deploy key.
    #[arg(
        long,
        env = "TENANTRY_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Print the API's JSON instead of readable text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `tenant list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Connection options.
    #[command(flatten)]
    pub conn: ConnectionArgs,
}

/// A command on one tenant named by a positional `ID`.
#[derive(Debug, Clone, Args)]
pub struct TenantIdArgs {
    /// The tenant id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Connection options.
    #[command(flatten)]
    pub conn: ConnectionArgs,
}

/// Arguments of `tenant create`.
#[derive(Debug, Clone, Args)]
pub struct TenantCreateArgs {
    /// The new tenant's id: `[a-z0-9][a-z0-9-]{0,62}`.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Plan name (default: the host's `default_plan`).
    #[arg(long, value_name = "P")]
    pub plan: Option<String>,
    /// Create it suspended.
    #[arg(long)]
    pub suspended: bool,
    /// Connection options.
    #[command(flatten)]
    pub conn: ConnectionArgs,
}

/// Arguments of `tenant suspend`.
#[derive(Debug, Clone, Args)]
pub struct TenantSuspendArgs {
    /// The tenant id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Close reason sent to open connections (default `tenant suspended`).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Connection options.
    #[command(flatten)]
    pub conn: ConnectionArgs,
}

/// A command on one tenant named by `--tenant T`.
#[derive(Debug, Clone, Args)]
pub struct TenantFlagArgs {
    /// The tenant id.
    #[arg(long, short, value_name = "T")]
    pub tenant: String,
    /// Connection options.
    #[command(flatten)]
    pub conn: ConnectionArgs,
}

/// Arguments of `deploy`.
#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    /// The tenant id.
    #[arg(long, short, value_name = "T")]
    pub tenant: String,
    /// The plugin: a WebAssembly component (.wasm) built for wasm32-wasip2.
    #[arg(value_name = "PLUGIN.wasm")]
    pub plugin: PathBuf,
    /// Activate it once uploaded.
    #[arg(long)]
    pub activate: bool,
    /// Start it as a canary for this share (1-99) of new connections.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=99))]
    pub canary: Option<u8>,
    /// Connection options.
    #[command(flatten)]
    pub conn: ConnectionArgs,
}

/// Arguments of `activate`.
#[derive(Debug, Clone, Args)]
pub struct ActivateArgs {
    /// The tenant id.
    #[arg(long, short, value_name = "T")]
    pub tenant: String,
    /// The version to activate (12 hex digits, as `versions` lists them).
    #[arg(value_name = "VERSION")]
    pub version: String,
    /// Start it as a canary for this share (1-99) of new connections instead.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=99))]
    pub canary: Option<u8>,
    /// Connection options.
    #[command(flatten)]
    pub conn: ConnectionArgs,
}

impl AdminCommand {
    /// The connection options of this command.
    pub fn connection(&self) -> &ConnectionArgs {
        match self {
            AdminCommand::Tenant(cmd) => match cmd {
                TenantCommand::Create(a) => &a.conn,
                TenantCommand::List(a) => &a.conn,
                TenantCommand::Show(a) | TenantCommand::Resume(a) | TenantCommand::Delete(a) => {
                    &a.conn
                }
                TenantCommand::Suspend(a) => &a.conn,
            },
            AdminCommand::Deploy(a) => &a.conn,
            AdminCommand::Activate(a) => &a.conn,
            AdminCommand::Versions(a) | AdminCommand::Rollback(a) => &a.conn,
            AdminCommand::Keys(KeysCommand::Create(a)) => &a.conn,
        }
    }
}

/// Why an admin command failed. `Display` is the message for the operator
/// (the caller prints it on stderr); [`exit_code`] gives the exit status.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// No token was given.
    #[error(
        "no admin token: pass --token or set TENANTRY_ADMIN_TOKEN (the operator token or the tenant's deploy key)"
    )]
    MissingToken,
    /// The token cannot be sent in an HTTP header.
    #[error("the admin token contains characters that cannot be sent in an HTTP header")]
    InvalidToken,
    /// The URL is not a usable `http://` URL.
    #[error("invalid admin URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `https://` URL: this client speaks plain HTTP only.
    #[error(
        "{url}: https is not supported; the admin client speaks plain HTTP only (bind the admin listener to a private interface or reach it through a tunnel)"
    )]
    HttpsUnsupported {
        /// The URL as given.
        url: String,
    },
    /// The TCP connection could not be made.
    #[error(
        "cannot reach the admin API at {url}: {source} (is the host running with --admin-listen?)"
    )]
    Unreachable {
        /// The admin API URL.
        url: String,
        /// The connect error.
        source: std::io::Error,
    },
    /// The TCP connection did not complete within the connect timeout.
    #[error("cannot reach the admin API at {url}: no connection after {after_secs} s")]
    ConnectTimeout {
        /// The admin API URL.
        url: String,
        /// The connect timeout in seconds.
        after_secs: u64,
    },
    /// The request got no complete answer within the request timeout.
    #[error("{method} {url}: no answer after {after_secs} s")]
    RequestTimeout {
        /// The request method.
        method: String,
        /// The request URL.
        url: String,
        /// The request timeout in seconds.
        after_secs: u64,
    },
    /// The connection failed during the request.
    #[error("{method} {url}: {source}")]
    Transport {
        /// The request method.
        method: String,
        /// The request URL.
        url: String,
        /// The HTTP or I/O error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The API answered with an error (its `{"error": ...}` document).
    #[error(transparent)]
    Api(Box<ApiError>),
    /// The answer is not what the API documents (not JSON, or not the expected shape).
    #[error("{method} {url}: unexpected answer (HTTP {status}{}): {detail}", request_id_suffix(request_id.as_deref()))]
    UnexpectedResponse {
        /// The request method.
        method: String,
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The `x-request-id` of the answer, if any.
        request_id: Option<String>,
        /// What was wrong, with the start of the body.
        detail: String,
    },
    /// `deploy --canary`: the upload worked, starting the canary did not.
    #[error("version {version} was uploaded, but starting it as a canary failed: {source}")]
    CanaryNotStarted {
        /// The uploaded version.
        version: String,
        /// Why the activation failed.
        source: Box<AdminClientError>,
    },
    /// The plugin file could not be read.
    #[error("cannot read plugin {}: {source}", path.display())]
    ReadPlugin {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The result could not be written to stdout.
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

impl From<ApiError> for AdminClientError {
    fn from(e: ApiError) -> Self {
        AdminClientError::Api(Box::new(e))
    }
}

fn request_id_suffix(id: Option<&str>) -> String {
    id.map(|id| format!(", request id {id}"))
        .unwrap_or_default()
}

/// The process exit status for `err`: 2 for a local usage problem (no
/// token, a bad or `https://` URL), 1 for everything else (the API said
/// no, the host is unreachable, the file is unreadable, ...).
pub fn exit_code(err: &AdminClientError) -> u8 {
    match err {
        AdminClientError::MissingToken
        | AdminClientError::InvalidToken
        | AdminClientError::InvalidUrl { .. }
        | AdminClientError::HttpsUnsupported { .. } => 2,
        AdminClientError::Unreachable { .. }
        | AdminClientError::ConnectTimeout { .. }
        | AdminClientError::RequestTimeout { .. }
        | AdminClientError::Transport { .. }
        | AdminClientError::Api(_)
        | AdminClientError::UnexpectedResponse { .. }
        | AdminClientError::CanaryNotStarted { .. }
        | AdminClientError::ReadPlugin { .. }
        | AdminClientError::Output(_) => 1,
    }
}

/// Run one admin command: send its request(s) and print the result on
/// stdout (readable text, or the API's JSON with `--json`). `deploy` shows
/// upload progress on stderr when stderr is a terminal. Errors are returned
/// for the caller to print (`tenantry: {err}`) and turn into
/// [`exit_code`].
pub async fn run(cmd: AdminCommand) -> Result<(), AdminClientError> {
    use std::io::IsTerminal as _;
    let progress: Option<Box<dyn Write + Send>> = if std::io::stderr().is_terminal() {
        Some(Box::new(std::io::stderr()))
    } else {
        None
    };
    let printed = commands::execute(cmd, progress).await?;
    if let Some(notice) = &printed.notice {
        let mut err = std::io::stderr().lock();
        // A failed write to stderr has nowhere to be reported.
        let _ = writeln!(err, "{notice}");
    }
    let mut out = std::io::stdout().lock();
    out.write_all(printed.stdout.as_bytes())
        .and_then(|()| out.flush())
        .map_err(AdminClientError::Output)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clap::{CommandFactory as _, Parser};

    /// The admin commands inside a minimal top-level parser.
    #[derive(Debug, Parser)]
    #[command(name = "tenantry")]
    struct TestCli {
        #[command(subcommand)]
        cmd: AdminCommand,
    }

    /// Parse `tenantry ARGS...`.
    pub(crate) fn parse(args: &[&str]) -> Result<AdminCommand, clap::Error> {
        TestCli::try_parse_from(std::iter::once("tenantry").chain(args.iter().copied()))
            .map(|cli| cli.cmd)
    }

    const CONN: [&str; 4] = ["--url", "http://10.0.0.1:9", "--token", "tok"];

    /// Parse with explicit connection options (independent of the environment).
    fn parse_ok(args: &[&str]) -> AdminCommand {
        let all: Vec<&str> = args.iter().chain(CONN.iter()).copied().collect();
        let cmd = parse(&all).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let conn = cmd.connection();
        assert_eq!(conn.url, "http://10.0.0.1:9");
        assert_eq!(conn.token.as_deref(), Some("tok"));
        cmd
    }

    #[test]
    fn definition_is_valid() {
        TestCli::command().debug_assert();
    }

    #[test]
    fn tenant_commands() {
        let AdminCommand::Tenant(TenantCommand::Create(a)) =
            parse_ok(&["tenant", "create", "acme", "--plan", "pro", "--suspended"])
        else {
            panic!()
        };
        assert_eq!(
            (a.id.as_str(), a.plan.as_deref(), a.suspended),
            ("acme", Some("pro"), true)
        );
        let AdminCommand::Tenant(TenantCommand::Create(a)) = parse_ok(&["tenant", "create", "b"])
        else {
            panic!()
        };
        assert_eq!((a.plan, a.suspended), (None, false));

        assert!(matches!(
            parse_ok(&["tenant", "list", "--json"]),
            AdminCommand::Tenant(TenantCommand::List(ListArgs {
                conn: ConnectionArgs { json: true, .. }
            }))
        ));
        let AdminCommand::Tenant(TenantCommand::Show(a)) = parse_ok(&["tenant", "show", "acme"])
        else {
            panic!()
        };
        assert_eq!(a.id, "acme");
        assert!(!a.conn.json);
        let AdminCommand::Tenant(TenantCommand::Suspend(a)) =
            parse_ok(&["tenant", "suspend", "acme", "--reason", "unpaid bill"])
        else {
            panic!()
        };
        assert_eq!(
            (a.id.as_str(), a.reason.as_deref()),
            ("acme", Some("unpaid bill"))
        );
        let AdminCommand::Tenant(TenantCommand::Resume(a)) =
            parse_ok(&["tenant", "resume", "acme"])
        else {
            panic!()
        };
        assert_eq!(a.id, "acme");
        let AdminCommand::Tenant(TenantCommand::Delete(a)) =
            parse_ok(&["tenant", "delete", "acme"])
        else {
            panic!()
        };
        assert_eq!(a.id, "acme");

        assert!(parse(&["tenant", "show"]).is_err());
        assert!(parse(&["tenant", "frobnicate", "x"]).is_err());
    }

    #[test]
    fn plugin_commands() {
        let AdminCommand::Deploy(a) =
            parse_ok(&["deploy", "--tenant", "acme", "p.wasm", "--activate"])
        else {
            panic!()
        };
        assert_eq!(a.tenant, "acme");
        assert_eq!(a.plugin, PathBuf::from("p.wasm"));
        assert!(a.activate);
        assert_eq!(a.canary, None);
        let AdminCommand::Deploy(a) =
            parse_ok(&["deploy", "-t", "acme", "p.wasm", "--canary", "10"])
        else {
            panic!()
        };
        assert_eq!((a.activate, a.canary), (false, Some(10)));
        for bad in ["0", "100", "x"] {
            assert!(
                parse(&["deploy", "-t", "a", "p.wasm", "--canary", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(
            parse(&["deploy", "p.wasm"]).is_err(),
            "--tenant is required"
        );
        assert!(
            parse(&["deploy", "--tenant", "a"]).is_err(),
            "the file is required"
        );

        let AdminCommand::Versions(a) = parse_ok(&["versions", "--tenant", "acme"]) else {
            panic!()
        };
        assert_eq!(a.tenant, "acme");
        let AdminCommand::Activate(a) = parse_ok(&[
            "activate",
            "--tenant",
            "acme",
            "3f2a9c1b0d4e",
            "--canary",
            "25",
        ]) else {
            panic!()
        };
        assert_eq!(
            (a.tenant.as_str(), a.version.as_str(), a.canary),
            ("acme", "3f2a9c1b0d4e", Some(25))
        );
        let AdminCommand::Activate(a) = parse_ok(&["activate", "--tenant", "acme", "3f2a9c1b0d4e"])
        else {
            panic!()
        };
        assert_eq!(a.canary, None);
        let AdminCommand::Rollback(a) = parse_ok(&["rollback", "--tenant", "acme"]) else {
            panic!()
        };
        assert_eq!(a.tenant, "acme");
        let AdminCommand::Keys(KeysCommand::Create(a)) =
            parse_ok(&["keys", "create", "--tenant", "acme", "--json"])
        else {
            panic!()
        };
        assert_eq!(a.tenant, "acme");
        assert!(a.conn.json);
        assert!(parse(&["rollback"]).is_err());
    }

    #[test]
    fn connection_defaults() {
        // Only meaningful when the environment does not set them.
        if std::env::var_os("TENANTRY_ADMIN_URL").is_none()
            && std::env::var_os("TENANTRY_ADMIN_TOKEN").is_none()
        {
            let cmd = parse(&["tenant", "list"]).unwrap();
            assert_eq!(cmd.connection().url, DEFAULT_URL);
            assert_eq!(cmd.connection().token, None);
        }
    }

    #[test]
    fn local_problems_exit_2() {
        let conn = ConnectionArgs {
            url: DEFAULT_URL.into(),
            token: None,
            json: false,
        };
        let e = http::Client::new(&conn).unwrap_err();
        assert!(matches!(e, AdminClientError::MissingToken));
        assert!(e.to_string().contains("TENANTRY_ADMIN_TOKEN"), "{e}");
        assert_eq!(exit_code(&e), 2);
        let e = http::Client::new(&ConnectionArgs {
            token: Some("  ".into()),
            ..conn.clone()
        })
        .unwrap_err();
        assert!(matches!(e, AdminClientError::MissingToken));
        let e = http::Client::new(&ConnectionArgs {
            url: "https://h:9090".into(),
            token: Some("t".into()),
            json: false,
        })
        .unwrap_err();
        assert_eq!(exit_code(&e), 2);
        let e = http::Client::new(&ConnectionArgs {
            token: Some("bad\ntoken".into()),
            ..conn
        })
        .unwrap_err();
        assert!(matches!(e, AdminClientError::InvalidToken));
    }
}
