//! The OpenAPI document against the API itself: it describes exactly the router's paths and
//! methods, and Schemathesis, fuzzing every operation of a running api with a valid key, finds
//! no server error and no answer the document does not declare.

use std::collections::BTreeSet;
use std::time::Duration;

use lethe_tests::Services;
use lethe_tests::e2e::{Daemon, Deployment, Options};
use utoipa::OpenApi as _;

/// The router's source: the test reads the routes where they are declared, so a route added
/// without documenting it fails here.
const ROUTER_SOURCE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../api/src/lib.rs"));

/// Routes of `router` that the document does not describe: the document itself.
const UNDOCUMENTED: &[&str] = &["/openapi.json"];

/// Examples Schemathesis generates per operation: enough to reach every declared answer,
/// bounded so the test takes a minute or two.
const MAX_EXAMPLES: &str = "30";

/// `(path, METHOD)` of every `.route(path, get(..).post(..))` in `pub fn router`.
fn router_routes() -> BTreeSet<(String, String)> {
    let start = ROUTER_SOURCE
        .find("pub fn router(")
        .expect("api/src/lib.rs has `pub fn router`");
    let body = &ROUTER_SOURCE[start..];
    let end = body.find(".fallback(").expect("the router has a fallback");
    let mut routes = BTreeSet::new();
    for route in body[..end].split(".route(").skip(1) {
        let path = route
            .split('"')
            .nth(1)
            .expect("a route's first argument is a string literal");
        let handlers = &route[route.find(',').expect("a route has a handler")..];
        for method in ["get", "post", "put", "patch", "delete"] {
            let called = handlers
                .match_indices(&format!("{method}("))
                .any(|(at, _)| {
                    at == 0
                        || !handlers.as_bytes()[at - 1].is_ascii_alphanumeric()
                            && handlers.as_bytes()[at - 1] != b'_'
                });
            if called {
                routes.insert((path.to_owned(), method.to_uppercase()));
            }
        }
    }
    routes
}

/// `(path, METHOD)` of every operation of the document.
fn documented_routes() -> BTreeSet<(String, String)> {
    let document = serde_json::to_value(lethe_api::openapi::ApiDoc::openapi()).unwrap();
    let mut routes = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                routes.insert((path.clone(), method.to_uppercase()));
            }
        }
    }
    routes
}

#[test]
fn openapi_document_paths_and_methods_equal_the_routers() {
    let mut router = router_routes();
    assert!(
        router.len() >= 16,
        "the router's routes were not found: {router:?}"
    );
    router.retain(|(path, _)| !UNDOCUMENTED.contains(&path.as_str()));
    let documented = documented_routes();
    let undocumented: Vec<_> = router.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&router).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes missing from the document: {undocumented:?}; documented but not routed: {unrouted:?}"
    );
}

/// The schemathesis executable: `LETHE_SCHEMATHESIS_BIN` (set by scripts/test), else the one
/// in the venv under `LETHE_HOME`, else `schemathesis` on the PATH.
fn schemathesis() -> Option<std::path::PathBuf> {
    let candidates = std::env::var_os("LETHE_SCHEMATHESIS_BIN")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("LETHE_HOME")
                .map(std::path::PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME")
                        .map(|h| std::path::PathBuf::from(h).join(".local/share/lethe"))
                })
                .map(|home| home.join("venv/bin/schemathesis")),
        );
    for candidate in candidates {
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    let on_path = std::process::Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    on_path.then(|| "schemathesis".into())
}

#[tokio::test]
async fn openapi_schemathesis_finds_no_server_error_and_no_answer_the_document_does_not_declare() {
    let Some(schemathesis) = schemathesis() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "schemathesis is not installed, and CI must fuzz the API: run scripts/test, which installs it"
        );
        eprintln!(
            "SKIPPED: schemathesis is not installed (scripts/test installs it into $LETHE_HOME/venv)"
        );
        return;
    };
    let services = Services::from_env();
    let mut deployment = Deployment::create(
        &services,
        Options {
            subjects: 3,
            filter: "info".to_owned(),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    deployment.start(Daemon::Api).await.unwrap();
    let api = deployment.api().unwrap();
    let reports = deployment.dir().join("schemathesis");

    let run = tokio::process::Command::new(&schemathesis)
        .arg("run")
        .arg(format!("{api}/openapi.json"))
        .args([
            "--header",
            &format!("Authorization: Bearer {}", deployment.key),
        ])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance",
        ])
        .args([
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            "18",
            "--workers",
            "2",
        ])
        .args(["--request-timeout", "10", "--max-redirects", "0"])
        .args(["--report", "junit", "--report-dir"])
        .arg(&reports)
        // Its cache of crashes goes to the working directory: the test's, not the repository.
        .current_dir(deployment.dir())
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_HOOKS", "")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("schemathesis finished within 10 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found problems ({}):\n{stdout}\n{stderr}\n{}",
        output.status,
        deployment.log_problems()
    );
    // Every operation was exercised (none skipped for lack of a way to call it).
    println!("{stdout}");
    deployment.cleanup().await.unwrap();
}
