//! Cross-checks the Azure fake with Microsoft's own Python libraries — `azure-identity`
//! (MSAL underneath) for the token and `azure-mgmt-authorization` for ARM, pinned in a venv
//! — over HTTPS with the fake's CA: role definitions by name, role assignments created,
//! repeated, refused as duplicates, listed over pages, deleted; the replication delay; a
//! PIM schedule request assigning with an end, its schedules and instances, the refusals,
//! and the removal; a missing permission and a wrong secret; a throttled write retried by
//! the SDK. When these clients accept the fake's answers and raise on its errors what they
//! raise on Azure's, the fake can stand in for Azure in jitsudo's own tests. Never skipped.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use jitsudo_testkit::fakes::Filter;
use jitsudo_testkit::fakes::azure::{FakeAzure, READER};
use serde_json::Value;

const PINS: [&str; 4] = [
    "azure-mgmt-authorization==4.0.0",
    "azure-identity==1.27.0",
    "azure-core==1.41.0",
    "msal==1.39.0",
];

fn python() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match jitsudo_testkit::python::venv(&PINS) {
        Ok(bin) => bin.join("python"),
        Err(e) => panic!(
            "the pinned Python libraries ({}) could not be installed; these tests need python3 and PyPI: {e:#}",
            PINS.join(", ")
        ),
    })
    .clone()
}

const SCRIPT: &str = r#"
import json, sys, time
from azure.identity import ClientAssertionCredential, CertificateCredential, ClientSecretCredential
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError,
                                   ResourceExistsError, ResourceNotFoundError)

a = json.loads(sys.argv[1])
base, ca, sub, tenant = a["base"], a["ca"], a["sub"], a["tenant"]
scope = f"/subscriptions/{sub}"
rd = f"{scope}/providers/Microsoft.Authorization/roleDefinitions/{a['reader']}"

def out(step, **kw):
    print(json.dumps(dict(step=step, **kw)), flush=True)

def client(client_id, secret):
    cred = ClientSecretCredential(tenant, client_id, secret, authority=base,
                                  disable_instance_discovery=True, connection_verify=ca)
    return AuthorizationManagementClient(cred, sub, base_url=base,
        credential_scopes=["https://management.azure.com/.default"], connection_verify=ca)

def error(e):
    return dict(cls=type(e).__name__, status=getattr(e, "status_code", None),
                code=e.error.code if getattr(e, "error", None) else None, message=str(e))

c = client(a["client_id"], a["secret"])
defs = list(c.role_definitions.list(scope, filter="roleName eq 'Reader'"))
out("definitions", names=[d.role_name for d in defs], ids=[d.id for d in defs])

body = {"properties": {"roleDefinitionId": rd, "principalId": a["alice"]}}
ra = c.role_assignments.create(scope, a["names"][0], body)   # the fake throttles this once
out("create", name=ra.name, principal_type=ra.principal_type, scope=ra.scope, id=ra.id)
ra = c.role_assignments.create(scope, a["names"][0], body)
out("again", name=ra.name)
try:
    c.role_assignments.create(scope, a["names"][1], body)
    out("duplicate", accepted=True)
except HttpResponseError as e:
    out("duplicate", **error(e))

for i, p in enumerate(a["more"]):
    c.role_assignments.create(scope, a["names"][2 + i], {"properties": {"roleDefinitionId": rd, "principalId": p, "principalType": "User"}})
names = sorted(r.name for r in c.role_assignments.list_for_scope(scope, filter="atScope()"))
out("listed", names=names)
mine = [r.name for r in c.role_assignments.list_for_scope(scope, filter=f"principalId eq '{a['alice']}'")]
out("by_principal", names=mine)

try:
    c.role_assignments.create(scope, a["names"][5], {"properties": {"roleDefinitionId": rd, "principalId": a["fresh"]}})
    out("replication", accepted=True)
except HttpResponseError as e:
    out("replication", **error(e))
ra = c.role_assignments.create(scope, a["names"][5], {"properties": {"roleDefinitionId": rd, "principalId": a["fresh"], "principalType": "User"}})
out("replication_typed", name=ra.name)

out("get", name=c.role_assignments.get(scope, a["names"][0]).name)
out("delete", deleted=c.role_assignments.delete(scope, a["names"][0]) is not None,
    again=c.role_assignments.delete(scope, a["names"][0]) is None)
try:
    c.role_assignments.get(scope, a["names"][0])
    out("gone", found=True)
except ResourceNotFoundError as e:
    out("gone", **error(e))
try:
    c.role_assignments.create(scope, "not-a-guid", body)
except HttpResponseError as e:
    out("bad_name", **error(e))

schedule = {"startDateTime": a["start"], "expiration": {"type": "AfterDateTime", "endDateTime": a["end"]}}
pim = {"properties": {"principalId": a["bob"], "roleDefinitionId": rd, "requestType": "AdminAssign",
                      "justification": "incident 42", "scheduleInfo": schedule}}
r = c.role_assignment_schedule_requests.create(scope, a["requests"][0], pim)
out("pim", status=r.status, request_type=r.request_type, target=r.target_role_assignment_schedule_id)
sch = list(c.role_assignment_schedules.list_for_scope(scope, filter=f"principalId eq '{a['bob']}'"))
out("schedules", n=len(sch), end=[s.end_date_time.isoformat() if s.end_date_time else None for s in sch],
    names=[s.name for s in sch])
ins = list(c.role_assignment_schedule_instances.list_for_scope(scope, filter=f"principalId eq '{a['bob']}'"))
out("instances", n=len(ins), origin=[i.origin_role_assignment_id for i in ins])
for step, name, req in [("pim_repeat", a["requests"][0], pim), ("pim_twice", a["requests"][1], pim)]:
    try:
        c.role_assignment_schedule_requests.create(scope, name, req)
        out(step, accepted=True)
    except HttpResponseError as e:
        out(step, **error(e))
too_long = json.loads(json.dumps(pim))
too_long["properties"]["principalId"] = a["carol"]
too_long["properties"]["scheduleInfo"]["expiration"] = {"type": "NoExpiration"}
try:
    c.role_assignment_schedule_requests.create(scope, a["requests"][2], too_long)
    out("pim_forever", accepted=True)
except HttpResponseError as e:
    out("pim_forever", **error(e))
# Carol is assigned with an end and kept; Bob is removed, twice.
keep = json.loads(json.dumps(pim))
keep["properties"]["principalId"] = a["carol"]
out("pim_carol", status=c.role_assignment_schedule_requests.create(scope, a["requests"][3], keep).status)
# Carol's assignment moved to a later end (PIM's AdminUpdate), as jitsudo does for a second grant.
update = json.loads(json.dumps(keep))
update["properties"]["requestType"] = "AdminUpdate"
update["properties"]["scheduleInfo"]["expiration"]["endDateTime"] = a["later"]
u = c.role_assignment_schedule_requests.create(scope, a["requests"][6], update)
moved = list(c.role_assignment_schedules.list_for_scope(scope, filter=f"principalId eq '{a['carol']}'"))
out("pim_update", status=u.status, request_type=u.request_type,
    end=[s.end_date_time.isoformat() for s in moved],
    request=[s.role_assignment_schedule_request_id for s in moved])
remove = {"properties": {"principalId": a["bob"], "roleDefinitionId": rd, "requestType": "AdminRemove"}}
# PIM keeps an assignment a minimum time (five minutes in Azure; two seconds here) before
# removal: Carol's, made just now, is refused; Bob's, older than that, goes.
early = json.loads(json.dumps(remove))
early["properties"]["principalId"] = a["carol"]
try:
    c.role_assignment_schedule_requests.create(scope, a["requests"][4], early)
    out("pim_remove_early", accepted=True)
except HttpResponseError as e:
    out("pim_remove_early", **error(e))
time.sleep(2.2)
out("pim_remove", status=c.role_assignment_schedule_requests.create(scope, a["requests"][4], remove).status)
try:
    c.role_assignment_schedule_requests.create(scope, a["requests"][5], remove)
    out("pim_remove_again", accepted=True)
except HttpResponseError as e:
    out("pim_remove_again", **error(e))
got = c.role_assignment_schedule_requests.get(scope, a["requests"][4])
out("pim_get", status=got.status)

d = client(a["denied_id"], a["denied_secret"])
try:
    d.role_assignments.create(scope, a["names"][6], body)
    out("denied", accepted=True)
except HttpResponseError as e:
    out("denied", **error(e))
# A certificate registered on the application, and a federated token Entra trusts for it.
for step, cred in [
    ("certificate", CertificateCredential(tenant, a["client_id"], certificate_path=a["cert"],
                                          authority=base, disable_instance_discovery=True,
                                          connection_verify=ca)),
    ("federated", ClientAssertionCredential(tenant, a["client_id"], lambda: a["federated"],
                                            authority=base, disable_instance_discovery=True,
                                            connection_verify=ca)),
]:
    m = AuthorizationManagementClient(cred, sub, base_url=base,
        credential_scopes=["https://management.azure.com/.default"], connection_verify=ca)
    out(step, n=len(list(m.role_definitions.list(scope, filter="roleName eq 'Reader'"))))
w = client(a["client_id"], "wrong-secret")
try:
    list(w.role_definitions.list(scope))
    out("wrong_secret", accepted=True)
except ClientAuthenticationError as e:
    out("wrong_secret", cls=type(e).__name__, message=str(e))
"#;

fn step<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {steps:#?}"))
}

#[test]
fn microsofts_python_libraries_run_assignments_and_pim_against_the_fake() {
    jitsudo_testkit::init_crypto();
    let az = FakeAzure::start().unwrap();
    let sub = az.add_subscription();
    let app = az.add_application("jitsudod");
    let denied = az.add_application("reader-only");
    az.deny(
        &denied.client_id,
        "Microsoft.Authorization/roleAssignments/write",
    );
    let alice = az.add_user("alice@contoso.example");
    let bob = az.add_user("bob@contoso.example");
    let carol = az.add_user("carol@contoso.example");
    let more: Vec<String> = (0..3)
        .map(|i| az.add_user(&format!("u{i}@contoso.example")))
        .collect();
    // A user made just now: ARM does not see it for a minute.
    az.set_replication_delay(Duration::from_secs(60));
    let fresh = az.add_user("new@contoso.example");
    az.set_page_size(2);
    az.set_min_active(Duration::from_secs(2));
    az.faults()
        .throttle(1, 1, Filter::method("PUT").and_path("/roleAssignments/"));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, az.ca_pem()).unwrap();
    let guids =
        |n: usize| -> Vec<String> { (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect() };
    let names = guids(7);
    let requests = guids(7);
    let start = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let end = (Utc::now() + TimeDelta::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let later =
        (Utc::now() + TimeDelta::hours(2)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let args = serde_json::json!({
        "base": az.url(), "ca": ca, "sub": sub, "tenant": az.tenant(), "reader": READER,
        "client_id": app.client_id, "secret": app.secret,
        "denied_id": denied.client_id, "denied_secret": denied.secret,
        "alice": alice, "bob": bob, "carol": carol, "more": more, "fresh": fresh,
        "names": names, "requests": requests, "start": start, "end": end, "later": later,
    });
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, az.add_certificate(&app.client_id)).unwrap();
    let federated = az.add_federated_credential(
        &app.client_id,
        "https://token.actions.githubusercontent.com",
        "repo:example/infra:environment:prod",
    );
    let mut args = args;
    args["cert"] = serde_json::json!(cert);
    args["federated"] = serde_json::json!(federated);
    let script = dir.path().join("xcheck.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let out = Command::new(python())
        .arg(&script)
        .arg(args.to_string())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("REQUESTS_CA_BUNDLE")
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python libraries failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let scope = format!("/subscriptions/{sub}");

    let defs = step(&steps, "definitions");
    assert_eq!(defs["names"], serde_json::json!(["Reader"]));
    assert_eq!(
        defs["ids"][0],
        format!("{scope}/providers/Microsoft.Authorization/roleDefinitions/{READER}")
    );
    let create = step(&steps, "create");
    assert_eq!(create["name"], names[0]);
    assert_eq!(
        create["principal_type"], "User",
        "looked up in the directory"
    );
    assert_eq!(create["scope"], scope);
    // The SDK met the 429, waited Retry-After and sent the same PUT again.
    let puts: Vec<Option<u16>> = az
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with(&names[0]))
        .map(|r| r.status)
        .collect();
    assert_eq!(&puts[..2], &[Some(429), Some(201)], "{puts:?}");
    assert_eq!(step(&steps, "again")["name"], names[0]);
    let dup = step(&steps, "duplicate");
    assert_eq!(dup["cls"], "ResourceExistsError", "{dup}");
    assert_eq!(dup["code"], "RoleAssignmentExists");
    assert!(
        dup["message"]
            .as_str()
            .unwrap()
            .contains(&names[0].replace('-', "")),
        "{dup}"
    );
    let mut expected: Vec<String> = vec![
        names[0].clone(),
        names[2].clone(),
        names[3].clone(),
        names[4].clone(),
    ];
    expected.sort();
    assert_eq!(
        step(&steps, "listed")["names"],
        serde_json::json!(expected),
        "every page followed"
    );
    assert_eq!(
        step(&steps, "by_principal")["names"],
        serde_json::json!([names[0]])
    );
    let repl = step(&steps, "replication");
    assert_eq!(repl["code"], "PrincipalNotFound", "{repl}");
    assert!(
        repl["message"]
            .as_str()
            .unwrap()
            .contains("replication delay")
    );
    assert_eq!(step(&steps, "replication_typed")["name"], names[5]);
    assert_eq!(step(&steps, "get")["name"], names[0]);
    assert_eq!(step(&steps, "delete")["deleted"], true);
    assert_eq!(
        step(&steps, "delete")["again"],
        true,
        "a second delete is a 204"
    );
    assert_eq!(step(&steps, "gone")["code"], "RoleAssignmentNotFound");
    assert_eq!(step(&steps, "bad_name")["code"], "InvalidRoleAssignmentId");

    let pim = step(&steps, "pim");
    assert_eq!(pim["status"], "Provisioned");
    assert_eq!(pim["request_type"], "AdminAssign");
    let sch = step(&steps, "schedules");
    assert_eq!(sch["n"], 1);
    assert_eq!(sch["names"][0], pim["target"]);
    assert!(
        sch["end"][0].as_str().unwrap().starts_with(&end[..19]),
        "{sch}"
    );
    let ins = step(&steps, "instances");
    assert_eq!(ins["n"], 1);
    assert!(
        ins["origin"][0]
            .as_str()
            .unwrap()
            .contains("/roleAssignments/")
    );
    assert_eq!(
        step(&steps, "pim_repeat")["code"],
        "RoleAssignmentRequestExists"
    );
    assert_eq!(step(&steps, "pim_repeat")["cls"], "ResourceExistsError");
    assert_eq!(step(&steps, "pim_twice")["code"], "RoleAssignmentExists");
    let forever = step(&steps, "pim_forever");
    assert_eq!(
        forever["code"],
        "RoleAssignmentRequestPolicyValidationFailed"
    );
    assert!(
        forever["message"]
            .as_str()
            .unwrap()
            .contains("ExpirationRule")
    );
    assert_eq!(step(&steps, "pim_carol")["status"], "Provisioned");
    let u = step(&steps, "pim_update");
    assert_eq!(u["status"], "Provisioned", "{u}");
    assert_eq!(u["request_type"], "AdminUpdate");
    assert!(
        u["end"][0].as_str().unwrap().starts_with(&later[..19]),
        "{u}"
    );
    assert!(
        u["request"][0].as_str().unwrap().ends_with(&requests[6]),
        "the schedule names the request that shaped it last: {u}"
    );
    let early = step(&steps, "pim_remove_early");
    assert_eq!(early["code"], "ActiveDurationTooShort", "{early}");
    assert_eq!(step(&steps, "pim_remove")["status"], "Revoked");
    assert_eq!(
        step(&steps, "pim_remove_again")["code"],
        "RoleAssignmentDoesNotExist"
    );
    assert_eq!(step(&steps, "pim_get")["status"], "Revoked");
    let d = step(&steps, "denied");
    assert_eq!(d["code"], "AuthorizationFailed", "{d}");
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("Microsoft.Authorization/roleAssignments/write")
    );
    assert_eq!(
        step(&steps, "certificate")["n"],
        1,
        "MSAL's certificate assertion is taken"
    );
    assert_eq!(
        step(&steps, "federated")["n"],
        1,
        "a federated token is taken"
    );
    let w = step(&steps, "wrong_secret");
    assert_eq!(w["cls"], "ClientAuthenticationError");
    assert!(
        w["message"].as_str().unwrap().contains("AADSTS7000215"),
        "{w}"
    );

    // What the libraries left is what ARM grants: Bob removed, Carol until her end, which
    // the fake's clock enforces by itself.
    assert!(!az.has_role(&scope, &bob, READER));
    assert!(az.has_role(&scope, &carol, READER));
    assert!(
        az.has_role(&format!("{scope}/resourceGroups/rg1"), &carol, READER),
        "inherited below"
    );
    az.advance(Duration::from_secs(2 * 3600));
    assert!(
        !az.has_role(&scope, &carol, READER),
        "ended at its expiration"
    );
}

#[tokio::test]
async fn moving_the_clock_ends_pim_assignments_but_not_the_tokens_clients_cache() {
    jitsudo_testkit::init_crypto();
    let az = FakeAzure::start().unwrap();
    let sub = az.add_subscription();
    let app = az.add_application("jitsudod");
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(az.ca_pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let token: Value = http
        .post(format!("{}/{}/oauth2/v2.0/token", az.url(), az.tenant()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            [
                ("grant_type", "client_credentials"),
                ("client_id", app.client_id.as_str()),
                ("client_secret", app.secret.as_str()),
                ("scope", "https://management.azure.com/.default"),
            ]
            .iter()
            .map(|(k, v)| {
                let v =
                    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC);
                format!("{k}={v}")
            })
            .collect::<Vec<_>>()
            .join("&"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = token["access_token"].as_str().unwrap().to_owned();
    assert_eq!(token["expires_in"], 3599);
    az.advance(Duration::from_secs(3 * 3600));
    let listed = http
        .get(format!(
            "{}/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions?api-version=2022-04-01",
            az.url()
        ))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.status(),
        200,
        "a token still valid by the real clock"
    );
    let missing = http
        .get(format!(
            "{}/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions",
            az.url()
        ))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "MissingApiVersionParameter");
}
