//! Cross-checks the GCP Resource Manager fake with Google's own Python client
//! (`google-cloud-resource-manager`, REST transport, pinned in a venv) authenticating with a
//! service-account key through `google-auth`: the read-modify-write sequence jitsudo runs,
//! the conflict on a stale etag, the version rules, the refusals and a throttle. When that
//! client accepts the fake's answers and raises on its errors what it raises on Google's,
//! the fake can stand in for Resource Manager in jitsudo's own tests. Never skipped: without
//! the venv these tests fail.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use chrono::{TimeDelta, Utc};
use jitsudo_testkit::fakes::gcp::{FakeGcp, Rpc};
use serde_json::Value;

/// The client library and the auth and core libraries it runs on, as released together.
const PINS: [&str; 3] = [
    "google-cloud-resource-manager==1.19.0",
    "google-api-core==2.44.0",
    "google-auth==2.63.0",
];

fn python() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match jitsudo_testkit::python::venv(&PINS) {
        Ok(bin) => bin.join("python"),
        Err(e) => panic!(
            "the pinned Python client ({}) could not be installed; these tests need python3 and PyPI: {e:#}",
            PINS.join(", ")
        ),
    })
    .clone()
}

/// The sequence, in Google's client: each step prints one JSON line `{"step", ...}`.
const SCRIPT: &str = r#"
import json, sys
from google.oauth2 import service_account
from google.cloud import resourcemanager_v3
from google.iam.v1 import iam_policy_pb2, options_pb2, policy_pb2
from google.type import expr_pb2
from google.api_core import exceptions

endpoint, key_file, stranger_file, until, resource, mode = sys.argv[1:7]

def out(step, **kw):
    print(json.dumps(dict(step=step, **kw)), flush=True)

def creds(path, scoped=True):
    scopes = ["https://www.googleapis.com/auth/cloud-platform"] if scoped else None
    return service_account.Credentials.from_service_account_file(path, scopes=scopes)

def client(cls, c):
    return cls(credentials=c, transport="rest", client_options={"api_endpoint": endpoint})

def error(e):
    body = {}
    try:
        body = e.response.json()["error"]
    except Exception:
        pass
    return dict(cls=type(e).__name__, code=e.code, status=body.get("status"),
                reason=getattr(e, "reason", None), message=body.get("message", str(e)))

def get(c, name, version=3):
    return c.get_iam_policy(request=iam_policy_pb2.GetIamPolicyRequest(
        resource=name, options=options_pb2.GetPolicyOptions(requested_policy_version=version)))

def timed(role, member, title, until):
    return policy_pb2.Binding(role=role, members=[member], condition=expr_pb2.Expr(
        title=title, description="cross-check", expression=f'request.time < timestamp("{until}")'))

kinds = {"projects": resourcemanager_v3.ProjectsClient, "folders": resourcemanager_v3.FoldersClient,
         "organizations": resourcemanager_v3.OrganizationsClient}
c = client(kinds[resource.split("/")[0]], creds(key_file))

if mode == "throttle":
    # The test armed a throttle for the next write.
    p = get(c, resource)
    try:
        c.set_iam_policy(request={"resource": resource, "policy": p})
        out("throttled", accepted=True)
    except exceptions.GoogleAPICallError as e:
        d = [x.get("retryDelay") for x in e.details
             if isinstance(x, dict) and x.get("@type", "").endswith("google.rpc.RetryInfo")]
        out("throttled", retry_delay=d, **error(e))
    sys.exit(0)

p = get(c, resource)
out("read", version=p.version, etag=len(p.etag), bindings=len(p.bindings))
first = p.etag
p.version = 3
p.bindings.append(timed("roles/browser", "user:alice@example.com", "jit-alice", until))
p.bindings.append(policy_pb2.Binding(role="roles/browser", members=["user:carol@example.com"]))
w = c.set_iam_policy(request={"resource": resource, "policy": p})
out("write", version=w.version, changed=w.etag != first, bindings=len(w.bindings))

# The same write with the etag of the first read: another writer came between.
p.etag = first
try:
    c.set_iam_policy(request={"resource": resource, "policy": p})
    out("stale", accepted=True)
except exceptions.GoogleAPICallError as e:
    out("stale", **error(e))

# Read again, modify, write: the retry that succeeds.
p = get(c, resource)
p.bindings.append(timed("roles/browser", "user:bob@example.com", "jit-bob", until))
w = c.set_iam_policy(request={"resource": resource, "policy": p})
out("retry", bindings=len(w.bindings), titles=sorted(b.condition.title for b in w.bindings if b.condition.title))

# Version rules: a policy with conditions cannot be read or written as version 1.
try:
    get(c, resource, 1)
    out("read_v1", accepted=True)
except exceptions.GoogleAPICallError as e:
    out("read_v1", **error(e))
p = get(c, resource)
p.version = 1
try:
    c.set_iam_policy(request={"resource": resource, "policy": p})
    out("write_v1", accepted=True)
except exceptions.GoogleAPICallError as e:
    out("write_v1", **error(e))

# No condition on a basic role; members must be typed.
for step, b in [("basic", timed("roles/viewer", "user:dave@example.com", "jit-dave", until)),
                ("member", policy_pb2.Binding(role="roles/browser", members=["dave@example.com"]))]:
    p = get(c, resource)
    p.bindings.append(b)
    try:
        c.set_iam_policy(request={"resource": resource, "policy": p})
        out(step, accepted=True)
    except exceptions.GoogleAPICallError as e:
        out(step, **error(e))

# A JWT signed for an audience (no scopes) authenticates too; an unknown resource is 403.
u = client(kinds[resource.split("/")[0]], creds(key_file, scoped=False))
out("audience", version=get(u, resource).version)
try:
    get(c, resource.split("/")[0] + "/999999999")
    out("unknown", accepted=True)
except exceptions.GoogleAPICallError as e:
    out("unknown", **error(e))

# A key Google does not know.
s = client(kinds[resource.split("/")[0]], creds(stranger_file))
try:
    get(s, resource)
    out("stranger", accepted=True)
except exceptions.GoogleAPICallError as e:
    out("stranger", **error(e))

"#;

fn run(
    fake: &FakeGcp,
    dir: &std::path::Path,
    resource: &str,
    until: &str,
    mode: &str,
) -> Vec<Value> {
    let key = dir.join("key.json");
    fake.service_account("xcheck@jit-test.iam.gserviceaccount.com")
        .write(&key)
        .unwrap();
    // Made by the fake but never registered with it: Google does not know this key.
    let stranger = dir.join("stranger.json");
    let other = FakeGcp::start().unwrap();
    other
        .service_account("stranger@elsewhere.iam.gserviceaccount.com")
        .write(&stranger)
        .unwrap();
    let script = dir.join("xcheck.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let out = Command::new(python())
        .arg(&script)
        .args([
            &fake.url(),
            key.to_str().unwrap(),
            stranger.to_str().unwrap(),
            until,
            resource,
            mode,
        ])
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn step<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {steps:?}"))
}

#[test]
fn googles_python_client_runs_the_read_modify_write_and_conflict_sequence() {
    for resource in ["projects/jit-test", "folders/1234", "organizations/5678"] {
        let fake = FakeGcp::start().unwrap();
        fake.add_resource(resource);
        let dir = tempfile::tempdir().unwrap();
        let until =
            (Utc::now() + TimeDelta::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let steps = run(&fake, dir.path(), resource, &until, "sequence");
        assert_eq!(
            step(&steps, "read")["version"],
            1,
            "{resource}: an empty policy is version 1"
        );
        assert!(
            step(&steps, "read")["etag"].as_u64().unwrap() > 0,
            "an etag on every read"
        );
        let w = step(&steps, "write");
        assert_eq!(w["version"], 3, "conditions make it version 3");
        assert_eq!(w["changed"], true, "every write changes the etag");
        let stale = step(&steps, "stale");
        assert_eq!(stale["cls"], "Conflict", "{stale}");
        assert_eq!(stale["code"], 409);
        assert_eq!(stale["status"], "ABORTED");
        assert!(
            stale["message"]
                .as_str()
                .unwrap()
                .contains("concurrent policy changes")
        );
        let retry = step(&steps, "retry");
        assert_eq!(retry["bindings"], 3);
        assert_eq!(retry["titles"], serde_json::json!(["jit-alice", "jit-bob"]));
        for s in ["read_v1", "write_v1", "basic", "member"] {
            let e = step(&steps, s);
            assert_eq!(e["cls"], "BadRequest", "{s}: {e}");
            assert_eq!(e["status"], "INVALID_ARGUMENT", "{s}: {e}");
        }
        assert!(
            step(&steps, "basic")["message"]
                .as_str()
                .unwrap()
                .contains("primitive roles")
        );
        assert!(
            step(&steps, "member")["message"]
                .as_str()
                .unwrap()
                .contains("<type>:<value>")
        );
        assert_eq!(step(&steps, "audience")["version"], 3);
        let unknown = step(&steps, "unknown");
        assert_eq!(unknown["cls"], "Forbidden", "{unknown}");
        assert_eq!(unknown["reason"], "IAM_PERMISSION_DENIED");
        assert!(
            unknown["message"]
                .as_str()
                .unwrap()
                .contains("(or it may not exist)")
        );
        let stranger = step(&steps, "stranger");
        assert_eq!(stranger["cls"], "Unauthorized", "{stranger}");
        assert_eq!(stranger["status"], "UNAUTHENTICATED");
        fake.faults().throttle(1, 7, Rpc::Set);
        let throttled = run(&fake, dir.path(), resource, &until, "throttle");
        let throttled = step(&throttled, "throttled");
        assert_eq!(throttled["cls"], "TooManyRequests", "{throttled}");
        assert_eq!(throttled["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(
            throttled["retry_delay"],
            serde_json::json!(["7s"]),
            "{throttled}"
        );
        // What the client wrote is what IAM evaluates: alice and bob until `until`, carol
        // always; none of the refused writes changed anything.
        let now = Utc::now();
        let later = Utc::now() + TimeDelta::hours(2);
        assert!(fake.has_role(resource, "user:alice@example.com", "roles/browser", now));
        assert!(fake.has_role(resource, "user:bob@example.com", "roles/browser", now));
        assert!(!fake.has_role(resource, "user:alice@example.com", "roles/browser", later));
        assert!(fake.has_role(resource, "user:carol@example.com", "roles/browser", later));
        assert!(!fake.has_role(resource, "user:dave@example.com", "roles/viewer", now));
        assert_eq!(fake.bindings(resource).len(), 3);
    }
}
