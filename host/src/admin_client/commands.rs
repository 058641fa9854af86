//! Each admin command as its API request(s) and printed result.

use std::io::Write;

use hyper::{Method, StatusCode};
use serde_json::json;

use super::http::{Client, Progress, RequestBody, Response, segment};
use super::output::{self, CreatedKey, Deleted, PluginVersion, Tenant, TenantList, VersionList};
use super::{ActivateArgs, AdminClientError, AdminCommand, DeployArgs, KeysCommand, TenantCommand};

/// What a command prints.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Printed {
    /// The result, for stdout.
    pub stdout: String,
    /// A notice for stderr (the shown-once warning of a key in `--json` mode).
    pub notice: Option<String>,
}

impl Printed {
    fn out(stdout: String) -> Self {
        Printed {
            stdout,
            notice: None,
        }
    }
}

/// Run `cmd`; `progress` receives `deploy`'s upload progress, if given.
pub(crate) async fn execute(
    cmd: AdminCommand,
    progress: Option<Box<dyn Write + Send>>,
) -> Result<Printed, AdminClientError> {
    let client = Client::new(cmd.connection())?;
    execute_with(&client, cmd, progress).await
}

/// [`execute`] with a given client.
pub(crate) async fn execute_with(
    client: &Client,
    cmd: AdminCommand,
    progress: Option<Box<dyn Write + Send>>,
) -> Result<Printed, AdminClientError> {
    let json = cmd.connection().json;
    match cmd {
        AdminCommand::Tenant(TenantCommand::Create(a)) => {
            let mut body = json!({ "id": a.id });
            if let Some(plan) = &a.plan {
                body["plan"] = json!(plan);
            }
            if a.suspended {
                body["suspended"] = json!(true);
            }
            let r = client
                .send(Method::POST, "/admin/tenants", RequestBody::json(&body))
                .await?;
            tenant_answer(&r, json, &format!("created tenant {}", a.id))
        }
        AdminCommand::Tenant(TenantCommand::List(_)) => {
            let r = client
                .send(Method::GET, "/admin/tenants", RequestBody::empty())
                .await?;
            if json {
                return json_answer(&r);
            }
            let list: TenantList = r.json()?;
            Ok(Printed::out(output::tenant_table(&list.tenants)))
        }
        AdminCommand::Tenant(TenantCommand::Show(a)) => {
            let r = client
                .send(Method::GET, &tenant_path(&a.id), RequestBody::empty())
                .await?;
            tenant_answer(&r, json, "")
        }
        AdminCommand::Tenant(TenantCommand::Suspend(a)) => {
            let body = match &a.reason {
                Some(reason) => RequestBody::json(&json!({ "reason": reason })),
                None => RequestBody::empty(),
            };
            let path = format!("{}/suspend", tenant_path(&a.id));
            let r = client.send(Method::POST, &path, body).await?;
            tenant_answer(&r, json, &format!("suspended tenant {}", a.id))
        }
        AdminCommand::Tenant(TenantCommand::Resume(a)) => {
            let path = format!("{}/resume", tenant_path(&a.id));
            let r = client
                .send(Method::POST, &path, RequestBody::empty())
                .await?;
            tenant_answer(&r, json, &format!("resumed tenant {}", a.id))
        }
        AdminCommand::Tenant(TenantCommand::Delete(a)) => {
            let r = client
                .send(Method::DELETE, &tenant_path(&a.id), RequestBody::empty())
                .await?;
            if json {
                return json_answer(&r);
            }
            let d: Deleted = r.json()?;
            Ok(Printed::out(format!("deleted tenant {}\n", d.deleted)))
        }
        AdminCommand::Deploy(a) => deploy(client, a, json, progress).await,
        AdminCommand::Versions(a) => {
            let path = format!("{}/plugins", tenant_path(&a.tenant));
            let r = client
                .send(Method::GET, &path, RequestBody::empty())
                .await?;
            if json {
                return json_answer(&r);
            }
            let list: VersionList = r.json()?;
            Ok(Printed::out(output::versions(&list)))
        }
        AdminCommand::Activate(a) => activate(client, a, json).await,
        AdminCommand::Rollback(a) => {
            let path = format!("{}/rollback", tenant_path(&a.tenant));
            let r = client
                .send(Method::POST, &path, RequestBody::empty())
                .await?;
            tenant_answer(&r, json, &format!("rolled back tenant {}", a.tenant))
        }
        AdminCommand::Keys(KeysCommand::Create(a)) => {
            let path = format!("{}/keys", tenant_path(&a.tenant));
            let r = client
                .send(Method::POST, &path, RequestBody::empty())
                .await?;
            if json {
                let mut printed = json_answer(&r)?;
                printed.notice = Some(output::KEY_SHOWN_ONCE.to_owned());
                return Ok(printed);
            }
            let key: CreatedKey = r.json()?;
            Ok(Printed::out(output::created_key(&key)))
        }
    }
}

fn tenant_path(id: &str) -> String {
    format!("/admin/tenants/{}", segment(id))
}

/// The answer's JSON, indented.
fn json_answer(r: &Response) -> Result<Printed, AdminClientError> {
    Ok(Printed::out(format!("{}\n", r.pretty_json()?)))
}

/// A tenant answer: the headline (if any), then the tenant.
fn tenant_answer(r: &Response, json: bool, headline: &str) -> Result<Printed, AdminClientError> {
    if json {
        return json_answer(r);
    }
    let t: Tenant = r.json()?;
    let mut out = String::new();
    if !headline.is_empty() {
        out.push_str(headline);
        out.push('\n');
    }
    out.push_str(&output::tenant(&t));
    Ok(Printed::out(out))
}

async fn activate(
    client: &Client,
    a: ActivateArgs,
    json: bool,
) -> Result<Printed, AdminClientError> {
    let path = format!(
        "{}/plugins/{}/activate",
        tenant_path(&a.tenant),
        segment(&a.version)
    );
    let body = match a.canary {
        Some(percent) => RequestBody::json(&json!({ "canary_percent": percent })),
        None => RequestBody::empty(),
    };
    let r = client.send(Method::POST, &path, body).await?;
    let headline = match a.canary {
        Some(percent) => format!(
            "{} is the canary of tenant {} for {percent}% of new connections",
            a.version, a.tenant
        ),
        None => format!("activated {} for tenant {}", a.version, a.tenant),
    };
    tenant_answer(&r, json, &headline)
}

async fn deploy(
    client: &Client,
    a: DeployArgs,
    json: bool,
    progress: Option<Box<dyn Write + Send>>,
) -> Result<Printed, AdminClientError> {
    let wasm = tokio::fs::read(&a.plugin)
        .await
        .map_err(|source| AdminClientError::ReadPlugin {
            path: a.plugin.clone(),
            source,
        })?;
    let name = a.plugin.file_name().map_or_else(
        || a.plugin.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let progress =
        progress.map(|out| Progress::new(format!("uploading {name}"), wasm.len() as u64, out));
    let activate_now = a.activate && a.canary.is_none();
    let path = format!(
        "{}/plugins{}",
        tenant_path(&a.tenant),
        if activate_now { "?activate=true" } else { "" }
    );
    let r = client
        .send(
            Method::POST,
            &path,
            RequestBody::wasm(wasm.into(), progress),
        )
        .await?;
    let mut document: serde_json::Value = r.json()?;
    let mut uploaded: PluginVersion = r.json()?;
    let headline = if r.status == StatusCode::CREATED {
        format!(
            "uploaded version {} for tenant {}",
            uploaded.version, a.tenant
        )
    } else {
        format!(
            "version {} was already uploaded for tenant {}",
            uploaded.version, a.tenant
        )
    };

    let mut canary_percent = None;
    if let Some(percent) = a.canary {
        let path = format!(
            "{}/plugins/{}/activate",
            tenant_path(&a.tenant),
            segment(&uploaded.version)
        );
        let body = RequestBody::json(&json!({ "canary_percent": percent }));
        let tenant: Tenant = async { client.send(Method::POST, &path, body).await?.json() }
            .await
            .map_err(|source| AdminClientError::CanaryNotStarted {
                version: uploaded.version.clone(),
                source: Box::new(source),
            })?;
        // The version's state after the activation, as the tenant reports it.
        uploaded.active = tenant.active_version.as_deref() == Some(uploaded.version.as_str());
        uploaded.canary = tenant
            .canary
            .as_ref()
            .is_some_and(|c| c.version == uploaded.version);
        canary_percent = tenant
            .canary
            .as_ref()
            .filter(|c| c.version == uploaded.version)
            .map(|c| c.percent);
        if let Some(fields) = document.as_object_mut() {
            fields.insert("active".to_owned(), json!(uploaded.active));
            fields.insert("canary".to_owned(), json!(uploaded.canary));
        }
    }

    if json {
        let text = serde_json::to_string_pretty(&document)
            .map_err(|e| AdminClientError::Output(std::io::Error::other(e)))?;
        return Ok(Printed::out(format!("{text}\n")));
    }
    let mut out = format!("{headline}\n{}", output::version(&uploaded, canary_percent));
    if !uploaded.active && !uploaded.canary {
        out.push_str(&format!(
            "activate it with: tenantry activate --tenant {} {}\n",
            a.tenant, uploaded.version
        ));
    }
    Ok(Printed::out(out))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::response::IntoResponse as _;
    use parking_lot::Mutex;

    use super::*;
    use crate::admin_client::tests::parse;
    use crate::admin_client::{ConnectionArgs, exit_code};

    /// One request as the test server saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        uri: String,
        host: Option<String>,
        authorization: Option<String>,
        content_type: Option<String>,
        content_length: Option<String>,
        body: Vec<u8>,
    }

    impl Seen {
        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    /// A canned answer for `method path`.
    struct Canned {
        method: &'static str,
        path: &'static str,
        status: u16,
        body: String,
        delay: Duration,
    }

    fn canned(method: &'static str, path: &'static str, status: u16, body: &str) -> Canned {
        Canned {
            method,
            path,
            status,
            body: body.to_owned(),
            delay: Duration::ZERO,
        }
    }

    /// A local axum server answering `answers`; returns its URL and what it saw.
    async fn server(answers: Vec<Canned>) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(answers);
        let log = Arc::clone(&seen);
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let log = Arc::clone(&log);
            let answers = Arc::clone(&answers);
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                let header = |name: &str| {
                    parts
                        .headers
                        .get(name)
                        .map(|v| v.to_str().unwrap().to_owned())
                };
                log.lock().push(Seen {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    host: header("host"),
                    authorization: header("authorization"),
                    content_type: header("content-type"),
                    content_length: header("content-length"),
                    body: body.to_vec(),
                });
                let Some(a) = answers
                    .iter()
                    .find(|a| a.method == parts.method.as_str() && a.path == parts.uri.path())
                else {
                    return (StatusCode::NOT_FOUND, "no such route").into_response();
                };
                tokio::time::sleep(a.delay).await;
                (
                    StatusCode::from_u16(a.status).unwrap(),
                    [
                        ("content-type", "application/json"),
                        ("x-request-id", "req-from-header"),
                    ],
                    a.body.clone(),
                )
                    .into_response()
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, seen)
    }

    /// Run `tenantry ARGS... --url URL --token tok`.
    async fn run_at(url: &str, args: &[&str]) -> Result<Printed, AdminClientError> {
        let all: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--url", url, "--token", "tok"])
            .collect();
        execute(parse(&all).unwrap(), None).await
    }

    const TENANT: &str = r#"{"id":"acme","plan":"starter","limits":{"max_connections":500},
        "suspended":false,"suspend_reason":null,"created_at":"2026-11-23T17:00:00Z",
        "active_version":"3f2a9c1b0d4e","canary":null,"versions":1}"#;

    fn version_doc(active: bool) -> String {
        format!(
            r#"{{"version":"3f2a9c1b0d4e","sha256":"3f2a9c1b0d4e{}","size":200000,
            "uploaded_at":"2026-11-23T17:02:11Z","uploaded_by":"operator",
            "world":"tenantry:plugin/plugin@0.1.0","active":{active},"canary":false}}"#,
            "0".repeat(52)
        )
    }

    #[tokio::test]
    async fn tenant_commands_send_the_documented_requests() {
        let (url, seen) = server(vec![
            canned("POST", "/admin/tenants", 201, TENANT),
            canned(
                "GET",
                "/admin/tenants",
                200,
                &format!(r#"{{"tenants":[{TENANT}]}}"#),
            ),
            canned("GET", "/admin/tenants/acme", 200, TENANT),
            canned("POST", "/admin/tenants/acme/suspend", 200, TENANT),
            canned("POST", "/admin/tenants/acme/resume", 200, TENANT),
            canned(
                "DELETE",
                "/admin/tenants/acme",
                200,
                r#"{"deleted":"acme"}"#,
            ),
        ])
        .await;

        let p = run_at(
            &url,
            &["tenant", "create", "acme", "--plan", "pro", "--suspended"],
        )
        .await
        .unwrap();
        assert!(
            p.stdout.starts_with("created tenant acme\nid:"),
            "{}",
            p.stdout
        );
        let p = run_at(&url, &["tenant", "create", "acme"]).await.unwrap();
        assert!(
            p.stdout.contains("active version: 3f2a9c1b0d4e\n"),
            "{}",
            p.stdout
        );
        let p = run_at(&url, &["tenant", "list"]).await.unwrap();
        assert!(p.stdout.starts_with("ID    PLAN"), "{}", p.stdout);
        let p = run_at(&url, &["tenant", "list", "--json"]).await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&p.stdout).unwrap();
        assert_eq!(v["tenants"][0]["id"], "acme");
        run_at(&url, &["tenant", "show", "acme"]).await.unwrap();
        run_at(&url, &["tenant", "suspend", "acme", "--reason", "unpaid"])
            .await
            .unwrap();
        run_at(&url, &["tenant", "suspend", "acme"]).await.unwrap();
        let p = run_at(&url, &["tenant", "resume", "acme"]).await.unwrap();
        assert!(
            p.stdout.starts_with("resumed tenant acme\n"),
            "{}",
            p.stdout
        );
        let p = run_at(&url, &["tenant", "delete", "acme"]).await.unwrap();
        assert_eq!(p.stdout, "deleted tenant acme\n");

        let seen = seen.lock().clone();
        let calls: Vec<(&str, &str)> = seen
            .iter()
            .map(|s| (s.method.as_str(), s.uri.as_str()))
            .collect();
        assert_eq!(
            calls,
            [
                ("POST", "/admin/tenants"),
                ("POST", "/admin/tenants"),
                ("GET", "/admin/tenants"),
                ("GET", "/admin/tenants"),
                ("GET", "/admin/tenants/acme"),
                ("POST", "/admin/tenants/acme/suspend"),
                ("POST", "/admin/tenants/acme/suspend"),
                ("POST", "/admin/tenants/acme/resume"),
                ("DELETE", "/admin/tenants/acme"),
            ]
        );
        for s in &seen {
            assert_eq!(s.authorization.as_deref(), Some("Bearer tok"), "{s:?}");
            assert_eq!(s.host.as_deref(), url.strip_prefix("http://"), "{s:?}");
        }
        assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
        assert_eq!(
            seen[0].json(),
            json!({"id": "acme", "plan": "pro", "suspended": true})
        );
        assert_eq!(seen[1].json(), json!({"id": "acme"}));
        assert!(seen[2].body.is_empty());
        assert_eq!(seen[5].json(), json!({"reason": "unpaid"}));
        assert!(seen[6].body.is_empty(), "no reason: no body");
        assert_eq!(seen[6].content_type, None);
    }

    #[tokio::test]
    async fn plugin_commands_send_the_documented_requests() {
        let list = format!(
            r#"{{"active":"3f2a9c1b0d4e","canary":null,"versions":[{}]}}"#,
            version_doc(true)
        );
        let (url, seen) = server(vec![
            canned("GET", "/admin/tenants/acme/plugins", 200, &list),
            canned("POST", "/admin/tenants/acme/plugins/3f2a9c1b0d4e/activate", 200, TENANT),
            canned("POST", "/admin/tenants/acme/rollback", 200, TENANT),
            canned(
                "POST",
                "/admin/tenants/acme/keys",
                201,
                r#"{"id":"k_1","key":"tk_secret","tenant":"acme","created_at":"2026-11-23T17:00:00Z"}"#,
            ),
        ])
        .await;
        let p = run_at(&url, &["versions", "--tenant", "acme"])
            .await
            .unwrap();
        assert!(p.stdout.starts_with("VERSION       STATE"), "{}", p.stdout);
        assert!(p.stdout.contains("3f2a9c1b0d4e  active"), "{}", p.stdout);
        let p = run_at(&url, &["activate", "--tenant", "acme", "3f2a9c1b0d4e"])
            .await
            .unwrap();
        assert!(
            p.stdout
                .starts_with("activated 3f2a9c1b0d4e for tenant acme\n"),
            "{}",
            p.stdout
        );
        run_at(
            &url,
            &[
                "activate",
                "--tenant",
                "acme",
                "3f2a9c1b0d4e",
                "--canary",
                "10",
            ],
        )
        .await
        .unwrap();
        let p = run_at(&url, &["rollback", "--tenant", "acme"])
            .await
            .unwrap();
        assert!(
            p.stdout.starts_with("rolled back tenant acme\n"),
            "{}",
            p.stdout
        );
        let p = run_at(&url, &["keys", "create", "--tenant", "acme"])
            .await
            .unwrap();
        assert!(p.stdout.contains("key:     tk_secret\n"), "{}", p.stdout);
        assert!(p.stdout.ends_with(&format!("{}\n", output::KEY_SHOWN_ONCE)));
        assert_eq!(p.notice, None);
        let p = run_at(&url, &["keys", "create", "--tenant", "acme", "--json"])
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&p.stdout).unwrap();
        assert_eq!(v["key"], "tk_secret");
        assert_eq!(p.notice.as_deref(), Some(output::KEY_SHOWN_ONCE));

        let seen = seen.lock().clone();
        let calls: Vec<(&str, &str)> = seen
            .iter()
            .map(|s| (s.method.as_str(), s.uri.as_str()))
            .collect();
        assert_eq!(
            calls,
            [
                ("GET", "/admin/tenants/acme/plugins"),
                ("POST", "/admin/tenants/acme/plugins/3f2a9c1b0d4e/activate"),
                ("POST", "/admin/tenants/acme/plugins/3f2a9c1b0d4e/activate"),
                ("POST", "/admin/tenants/acme/rollback"),
                ("POST", "/admin/tenants/acme/keys"),
                ("POST", "/admin/tenants/acme/keys"),
            ]
        );
        assert!(seen[1].body.is_empty());
        assert_eq!(seen[2].json(), json!({"canary_percent": 10}));
        assert!(
            seen.iter()
                .all(|s| s.authorization.as_deref() == Some("Bearer tok"))
        );
    }

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn plugin_file() -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.wasm");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        (dir, path, bytes)
    }

    #[tokio::test]
    async fn deploy_streams_the_file_and_activates() {
        let (url, seen) = server(vec![canned(
            "POST",
            "/admin/tenants/acme/plugins",
            201,
            &version_doc(true),
        )])
        .await;
        let (_dir, path, bytes) = plugin_file();
        let path = path.to_str().unwrap();
        let sink = Sink::default();
        let cmd = parse(&[
            "deploy",
            "--tenant",
            "acme",
            path,
            "--activate",
            "--url",
            &url,
            "--token",
            "tok",
        ])
        .unwrap();
        let p = execute(cmd, Some(Box::new(sink.clone()))).await.unwrap();
        assert_eq!(
            p.stdout,
            format!(
                "uploaded version 3f2a9c1b0d4e for tenant acme\n\
                 version:     3f2a9c1b0d4e\n\
                 size:        200000 bytes (195.3 KiB)\n\
                 sha256:      3f2a9c1b0d4e{}\n\
                 world:       tenantry:plugin/plugin@0.1.0\n\
                 uploaded:    2026-11-23T17:02:11Z\n\
                 uploaded by: operator\n\
                 active:      yes\n",
                "0".repeat(52)
            )
        );
        let progress = String::from_utf8(sink.0.lock().clone()).unwrap();
        assert!(
            progress.starts_with("\ruploading plugin.wasm: 64.0 KiB / 195.3 KiB (32%)"),
            "{progress:?}"
        );
        assert!(
            progress.ends_with("(100%), waiting for the host to check it\n"),
            "{progress:?}"
        );

        let seen = seen.lock().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, "POST");
        assert_eq!(seen[0].uri, "/admin/tenants/acme/plugins?activate=true");
        assert_eq!(seen[0].content_type.as_deref(), Some("application/wasm"));
        assert_eq!(seen[0].content_length.as_deref(), Some("200000"));
        assert_eq!(seen[0].authorization.as_deref(), Some("Bearer tok"));
        assert!(seen[0].body == bytes, "the body arrives intact");
    }

    #[tokio::test]
    async fn deploy_as_canary_uploads_then_activates() {
        let canary_tenant = TENANT
            .replace(
                r#""canary":null"#,
                r#""canary":{"version":"3f2a9c1b0d4e","percent":10}"#,
            )
            .replace(
                r#""active_version":"3f2a9c1b0d4e""#,
                r#""active_version":"000000000000""#,
            );
        let (url, seen) = server(vec![
            canned(
                "POST",
                "/admin/tenants/acme/plugins",
                200,
                &version_doc(false),
            ),
            canned(
                "POST",
                "/admin/tenants/acme/plugins/3f2a9c1b0d4e/activate",
                200,
                &canary_tenant,
            ),
        ])
        .await;
        let (_dir, path, _) = plugin_file();
        let path = path.to_str().unwrap();
        // --activate with --canary: the canary wins.
        let p = run_at(
            &url,
            &[
                "deploy",
                "--tenant",
                "acme",
                path,
                "--activate",
                "--canary",
                "10",
            ],
        )
        .await
        .unwrap();
        assert!(
            p.stdout
                .starts_with("version 3f2a9c1b0d4e was already uploaded for tenant acme\n"),
            "{}",
            p.stdout
        );
        assert!(
            p.stdout
                .ends_with("active:      no (canary for 10% of new connections)\n"),
            "{}",
            p.stdout
        );
        let p = run_at(
            &url,
            &[
                "deploy", "--tenant", "acme", path, "--canary", "10", "--json",
            ],
        )
        .await
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&p.stdout).unwrap();
        assert_eq!(
            (&v["version"], &v["active"], &v["canary"]),
            (&json!("3f2a9c1b0d4e"), &json!(false), &json!(true))
        );

        let seen = seen.lock().clone();
        let calls: Vec<(&str, &str)> = seen
            .iter()
            .map(|s| (s.method.as_str(), s.uri.as_str()))
            .collect();
        assert_eq!(
            calls[..2],
            [
                ("POST", "/admin/tenants/acme/plugins"),
                ("POST", "/admin/tenants/acme/plugins/3f2a9c1b0d4e/activate"),
            ]
        );
        assert_eq!(seen[1].json(), json!({"canary_percent": 10}));
        assert_eq!(seen[1].content_type.as_deref(), Some("application/json"));
    }

    #[tokio::test]
    async fn deploy_without_activation_says_how() {
        let (url, _) = server(vec![canned(
            "POST",
            "/admin/tenants/acme/plugins",
            201,
            &version_doc(false),
        )])
        .await;
        let (_dir, path, _) = plugin_file();
        let p = run_at(
            &url,
            &["deploy", "--tenant", "acme", path.to_str().unwrap()],
        )
        .await
        .unwrap();
        assert!(
            p.stdout.ends_with(
                "active:      no\nactivate it with: tenantry activate --tenant acme 3f2a9c1b0d4e\n"
            ),
            "{}",
            p.stdout
        );
    }

    #[tokio::test]
    async fn deploy_of_a_missing_file() {
        let e = run_at(
            "http://127.0.0.1:1",
            &["deploy", "--tenant", "acme", "/nonexistent/p.wasm"],
        )
        .await
        .unwrap_err();
        assert!(matches!(e, AdminClientError::ReadPlugin { .. }), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/p.wasm"), "{e}");
    }

    #[tokio::test]
    async fn api_errors_are_decoded() {
        let (url, _) = server(vec![
            canned(
                "GET",
                "/admin/tenants/ghost",
                404,
                r#"{"error":{"code":"NOT_FOUND","message":"tenant \"ghost\" does not exist","request_id":"5b0c"}}"#,
            ),
            canned(
                "POST",
                "/admin/tenants/acme/plugins",
                422,
                r#"{"error":{"code":"INVALID_PLUGIN","message":"not a plugin this host runs","request_id":"r2",
                   "reason":"core_module","details":["a core wasm module, not a component","build for wasm32-wasip2"]}}"#,
            ),
            canned("GET", "/admin/tenants", 500, "oops"),
        ])
        .await;
        let e = run_at(&url, &["tenant", "show", "ghost"])
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"tenant "ghost" does not exist [NOT_FOUND, HTTP 404, request id 5b0c]"#
        );
        assert_eq!(exit_code(&e), 1);

        let (_dir, path, _) = plugin_file();
        let e = run_at(
            &url,
            &["deploy", "--tenant", "acme", path.to_str().unwrap()],
        )
        .await
        .unwrap_err();
        let AdminClientError::Api(api) = &e else {
            panic!("{e:?}")
        };
        assert_eq!((api.status, api.code.as_str()), (422, "INVALID_PLUGIN"));
        assert_eq!(api.reason.as_deref(), Some("core_module"));
        assert_eq!(
            e.to_string(),
            "not a plugin this host runs [INVALID_PLUGIN, HTTP 422, request id r2]\n  \
             reason: core_module\n  \
             - a core wasm module, not a component\n  \
             - build for wasm32-wasip2"
        );

        let e = run_at(&url, &["tenant", "list"]).await.unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, AdminClientError::UnexpectedResponse { status: 500, .. }),
            "{e:?}"
        );
        assert!(
            msg.contains("oops") && msg.contains("request id req-from-header"),
            "{msg}"
        );

        // No route at all (e.g. an old host): not JSON either.
        let e = run_at(&url, &["rollback", "--tenant", "acme"])
            .await
            .unwrap_err();
        assert!(
            matches!(e, AdminClientError::UnexpectedResponse { status: 404, .. }),
            "{e:?}"
        );

        // A 2xx answer that is not the documented shape.
        let (url, _) = server(vec![canned(
            "GET",
            "/admin/tenants/acme",
            200,
            r#"{"nope":1}"#,
        )])
        .await;
        let e = run_at(&url, &["tenant", "show", "acme"]).await.unwrap_err();
        assert!(
            matches!(e, AdminClientError::UnexpectedResponse { status: 200, .. }),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn canary_failure_after_upload_says_the_upload_worked() {
        let (url, _) = server(vec![
            canned("POST", "/admin/tenants/acme/plugins", 201, &version_doc(false)),
            canned(
                "POST",
                "/admin/tenants/acme/plugins/3f2a9c1b0d4e/activate",
                503,
                r#"{"error":{"code":"UNAVAILABLE","message":"the registry store failed","request_id":"r3"}}"#,
            ),
        ])
        .await;
        let (_dir, path, _) = plugin_file();
        let e = run_at(
            &url,
            &[
                "deploy",
                "--tenant",
                "acme",
                path.to_str().unwrap(),
                "--canary",
                "5",
            ],
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, AdminClientError::CanaryNotStarted { .. }),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "version 3f2a9c1b0d4e was uploaded, but starting it as a canary failed: \
             the registry store failed [UNAVAILABLE, HTTP 503, request id r3]"
        );
    }

    #[tokio::test]
    async fn unreachable_host() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}");
        let e = run_at(&url, &["tenant", "list"]).await.unwrap_err();
        assert!(matches!(e, AdminClientError::Unreachable { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("cannot reach the admin API at {url}: ")),
            "{msg}"
        );
        assert_eq!(exit_code(&e), 1);
    }

    #[tokio::test]
    async fn https_and_missing_token_are_refused_before_connecting() {
        let e = run_at("https://127.0.0.1:1", &["tenant", "list"])
            .await
            .unwrap_err();
        assert!(
            matches!(e, AdminClientError::HttpsUnsupported { .. }),
            "{e:?}"
        );
        let cmd = AdminCommand::Tenant(TenantCommand::List(crate::admin_client::ListArgs {
            conn: ConnectionArgs {
                url: "http://127.0.0.1:1".into(),
                token: None,
                json: false,
            },
        }));
        let e = execute(cmd, None).await.unwrap_err();
        assert!(matches!(e, AdminClientError::MissingToken), "{e:?}");
    }

    #[tokio::test]
    async fn request_timeout() {
        let mut slow = canned("GET", "/admin/tenants", 200, r#"{"tenants":[]}"#);
        slow.delay = Duration::from_secs(10);
        let (url, _) = server(vec![slow]).await;
        let conn = ConnectionArgs {
            url,
            token: Some("tok".into()),
            json: false,
        };
        let client = Client::new(&conn)
            .unwrap()
            .with_timeouts(Duration::from_secs(5), Duration::from_millis(200));
        let cmd = AdminCommand::Tenant(TenantCommand::List(crate::admin_client::ListArgs { conn }));
        let e = execute_with(&client, cmd, None).await.unwrap_err();
        assert!(
            matches!(e, AdminClientError::RequestTimeout { .. }),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn paths_are_encoded_and_prefixed() {
        let (url, seen) = server(vec![]).await;
        let url = format!("{url}/base/");
        let _ = run_at(&url, &["tenant", "show", "a/b c"]).await;
        let _ = run_at(&url, &["activate", "--tenant", "acme", "../x"]).await;
        let seen = seen.lock().clone();
        assert_eq!(seen[0].uri, "/base/admin/tenants/a%2Fb%20c");
        assert_eq!(
            seen[1].uri,
            "/base/admin/tenants/acme/plugins/..%2Fx/activate"
        );
    }
}
