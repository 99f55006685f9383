//! Azure Resource Manager's `Microsoft.Authorization` provider: role definitions and role
//! assignments (api-version 2022-04-01), PIM role assignment schedule requests, schedules
//! and instances (2020-10-01). Paths, status codes, bodies and error codes follow the REST
//! specifications (azure-rest-api-specs) and Microsoft's RBAC and PIM documentation.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use http::HeaderMap;
use serde_json::{Value, json};

use super::{Assignment, Reply, Schedule, Shared, State, Token, guid};

const PROVIDER: &str = "/providers/microsoft.authorization/";

/// The api-versions ARM serves for each resource type (a subset of the real lists: the
/// stable ones and the previews clients still send).
fn versions(kind: &str) -> &'static [&'static str] {
    match kind {
        "roleassignments" => &[
            "2015-07-01",
            "2018-01-01-preview",
            "2020-04-01-preview",
            "2020-10-01-preview",
            "2022-01-01-preview",
            "2022-04-01",
        ],
        "roledefinitions" => &[
            "2015-07-01",
            "2018-01-01-preview",
            "2022-04-01",
            "2022-05-01-preview",
        ],
        _ => &[
            "2020-10-01-preview",
            "2020-10-01",
            "2022-04-01-preview",
            "2024-02-01-preview",
            "2024-09-01-preview",
        ],
    }
}

pub(super) fn error_body(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

fn err(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(status, error_body(code, message))
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Whether an assignment at `above` applies at `below` (both lower case): the same scope or
/// one of its ancestors. Management group hierarchies are not modelled.
pub(super) fn covers(above: &str, below: &str) -> bool {
    let above = above.trim_end_matches('/');
    above.is_empty() || below == above || below.starts_with(&format!("{above}/"))
}

fn is_guid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok() && s.len() == 36
}

/// Checks the bearer token; the error is ARM's 401.
pub(super) fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<Token, (u16, Value)> {
    let Some(h) = headers.get(http::header::AUTHORIZATION) else {
        return Err((
            401,
            error_body(
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            ),
        ));
    };
    let Some(token) = h.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
        return Err((
            401,
            error_body(
                "AuthenticationFailedInvalidHeader",
                "Authentication failed. The 'Authorization' header is provided in an invalid format.",
            ),
        ));
    };
    let s = shared.lock();
    match s.tokens.get(token.trim()) {
        None => Err((
            401,
            error_body("InvalidAuthenticationToken", "The access token is invalid."),
        )),
        Some(t) if t.expires <= Utc::now() => Err((
            401,
            error_body(
                "ExpiredAuthenticationToken",
                &format!(
                    "The access token expiry UTC time '{}' is earlier than current UTC time '{}'.",
                    t.expires.format("%-m/%-d/%Y %-I:%M:%S %p"),
                    Utc::now().format("%-m/%-d/%Y %-I:%M:%S %p")
                ),
            ),
        )),
        // ARM takes tokens for its own resource only (public ARM's two spellings, or this
        // endpoint as a custom cloud's ARM).
        Some(t)
            if ![
                "https://management.azure.com",
                "https://management.core.windows.net",
                shared.base().as_str(),
            ]
            .contains(&t.audience.trim_end_matches('/')) =>
        {
            Err((
                401,
                error_body(
                    "InvalidAuthenticationTokenAudience",
                    &format!(
                        "The access token has been obtained for wrong audience or resource '{}'. It should exactly match with one of the allowed audiences 'https://management.core.windows.net/','https://management.core.windows.net','https://management.azure.com/','https://management.azure.com'.",
                        t.audience
                    ),
                ),
            ))
        }
        Some(t) => Ok(t.clone()),
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        let k = percent_encoding::percent_decode_str(k).decode_utf8_lossy();
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// A `$filter` ARM understands for these lists.
#[derive(Debug, PartialEq)]
enum Filter {
    None,
    AtScope,
    Principal(String),
    AtScopePrincipal(String),
    AsTarget,
    RoleName(String),
    Type(String),
}

fn parse_filter(f: Option<&str>) -> Result<Filter, String> {
    let Some(f) = f.map(str::trim).filter(|f| !f.is_empty()) else {
        return Ok(Filter::None);
    };
    let quoted = |s: &str| {
        s.trim()
            .strip_prefix('\'')
            .and_then(|s| s.strip_suffix('\''))
            .map(str::to_owned)
    };
    let one = |p: &str| -> Option<Filter> {
        let p = p.trim();
        if p == "atScope()" {
            return Some(Filter::AtScope);
        }
        if p == "asTarget()" {
            return Some(Filter::AsTarget);
        }
        if let Some(v) = p.strip_prefix("principalId eq ") {
            return quoted(v).map(Filter::Principal);
        }
        if let Some(v) = p
            .strip_prefix("assignedTo(")
            .and_then(|v| v.strip_suffix(')'))
        {
            return quoted(v).map(Filter::Principal);
        }
        if let Some(v) = p.strip_prefix("roleName eq ") {
            return quoted(v).map(Filter::RoleName);
        }
        if let Some(v) = p.strip_prefix("type eq ") {
            return quoted(v).map(Filter::Type);
        }
        None
    };
    let unsupported = || {
        format!(
            "The filter '{f}' is not supported. Supported filters are either 'atScope()' or 'principalId eq '{{value}}' or 'assignedTo('{{value}}')'."
        )
    };
    match f.split_once(" and ") {
        Some((a, b)) => match (one(a), one(b)) {
            (Some(Filter::AtScope), Some(Filter::Principal(p)))
                if b.trim().starts_with("assignedTo(") =>
            {
                Ok(Filter::AtScopePrincipal(p))
            }
            (Some(Filter::Principal(p)), Some(Filter::AtScope))
                if a.trim().starts_with("assignedTo(") =>
            {
                Ok(Filter::AtScopePrincipal(p))
            }
            _ => Err(unsupported()),
        },
        None => one(f).ok_or_else(unsupported),
    }
}

/// Splits `{scope}/providers/Microsoft.Authorization/{kind}[/{name}[/{action}]]`.
fn split(path: &str) -> Option<(String, String, Option<String>, Option<String>)> {
    let lower = path.to_ascii_lowercase();
    let at = lower.find(PROVIDER)?;
    let scope = path[..at].to_owned();
    let rest: Vec<&str> = path[at + PROVIDER.len()..]
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let kind = rest.first()?.to_ascii_lowercase();
    Some((
        scope,
        kind,
        rest.get(1).map(|s| (*s).to_owned()),
        rest.get(2).map(|s| s.to_ascii_lowercase()),
    ))
}

/// Checks a scope names something the fake knows; returns it normalised.
fn check_scope(s: &State, scope: &str) -> Result<String, Reply> {
    let parts: Vec<&str> = scope.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        [""] => Ok(String::new()),
        [p, sub, rest @ ..] if p.eq_ignore_ascii_case("subscriptions") => {
            if !s.subscriptions.iter().any(|x| x.eq_ignore_ascii_case(sub)) {
                return Err(err(
                    404,
                    "SubscriptionNotFound",
                    &format!("The subscription '{sub}' could not be found."),
                ));
            }
            match rest {
                [] => Ok(format!("/subscriptions/{sub}")),
                [rg, name, more @ ..]
                    if rg.eq_ignore_ascii_case("resourceGroups") && !name.is_empty() =>
                {
                    if more.is_empty()
                        || (more.len() >= 4 && more[0].eq_ignore_ascii_case("providers"))
                    {
                        Ok(format!(
                            "/subscriptions/{sub}/resourceGroups/{name}{}",
                            more.iter().map(|m| format!("/{m}")).collect::<String>()
                        ))
                    } else {
                        Err(err(
                            400,
                            "InvalidScope",
                            &format!("The scope '{scope}' is not valid."),
                        ))
                    }
                }
                _ => Err(err(
                    400,
                    "InvalidScope",
                    &format!("The scope '{scope}' is not valid."),
                )),
            }
        }
        [p, ns, mg, name]
            if p.eq_ignore_ascii_case("providers")
                && ns.eq_ignore_ascii_case("Microsoft.Management")
                && mg.eq_ignore_ascii_case("managementGroups") =>
        {
            if s.management_groups.contains(*name) {
                Ok(format!(
                    "/providers/Microsoft.Management/managementGroups/{name}"
                ))
            } else {
                Err(err(
                    404,
                    "ManagementGroupNotFound",
                    &format!("The management group '{name}' could not be found."),
                ))
            }
        }
        _ => Err(err(
            400,
            "InvalidScope",
            &format!("The scope '{scope}' is not valid."),
        )),
    }
}

fn forbidden(token: &Token, action: &str, target: &str) -> Reply {
    err(
        403,
        "AuthorizationFailed",
        &format!(
            "The client '{}' with object id '{}' does not have authorization to perform action '{action}' over scope '{target}' or the scope is invalid. If access was recently granted, please refresh your credentials.",
            token.client_id, token.object_id
        ),
    )
}

fn definition_id(scope: &str, id: &str) -> String {
    match scope
        .split('/')
        .nth(2)
        .filter(|_| scope.starts_with("/subscriptions/"))
    {
        Some(sub) => {
            format!("/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{id}")
        }
        None => format!("/providers/Microsoft.Authorization/roleDefinitions/{id}"),
    }
}

fn assignment_json(a: &Assignment) -> Value {
    json!({
        "properties": {
            "roleDefinitionId": definition_id(&a.scope, &a.role),
            "principalId": a.principal_id,
            "principalType": a.principal_type,
            "scope": a.scope,
            "condition": null,
            "conditionVersion": null,
            "createdOn": ts(a.created),
            "updatedOn": ts(a.updated),
            "createdBy": a.created_by,
            "updatedBy": a.created_by,
            "delegatedManagedIdentityResourceId": null,
            "description": a.description,
        },
        "id": format!("{}/providers/Microsoft.Authorization/roleAssignments/{}", a.scope, a.name),
        "type": "Microsoft.Authorization/roleAssignments",
        "name": a.name,
    })
}

/// A page of `items` from `skip`, with an absolute `nextLink` when more remain.
fn page(base: &str, path: &str, query: &str, items: Vec<Value>, size: usize) -> Reply {
    let skip: usize = query_param(query, "$skipToken")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let total = items.len();
    let value: Vec<Value> = items.into_iter().skip(skip).take(size).collect();
    let mut body = json!({ "value": value });
    if skip + size < total {
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| !p.starts_with("$skipToken=") && !p.starts_with("%24skipToken="))
            .collect();
        body["nextLink"] = json!(format!(
            "{base}{path}?{}&$skipToken={}",
            kept.join("&"),
            skip + size
        ));
    }
    Reply::json(200, body)
}

pub(super) fn handle(
    shared: &Shared,
    token: &Token,
    method: &str,
    path: &str,
    query: &str,
    body: &Bytes,
) -> Reply {
    let Some((scope, kind, name, action)) = split(path) else {
        return err(404, "NotFound", "The requested resource does not exist.");
    };
    let Some(version) = query_param(query, "api-version") else {
        return err(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    };
    let known = matches!(
        kind.as_str(),
        "roleassignments"
            | "roledefinitions"
            | "roleassignmentschedulerequests"
            | "roleassignmentschedules"
            | "roleassignmentscheduleinstances"
    );
    if !known {
        return err(
            400,
            "InvalidResourceType",
            &format!(
                "The resource type '{kind}' could not be found in the namespace 'Microsoft.Authorization' for api version '{version}'."
            ),
        );
    }
    if !versions(&kind).contains(&version.as_str()) {
        return err(
            400,
            "NoRegisteredProviderFound",
            &format!(
                "No registered resource provider found for location 'global' and API version '{version}' for type '{kind}'. The supported api-versions are '{}'.",
                versions(&kind).join(", ")
            ),
        );
    }
    let base = shared.base();
    let mut s = shared.lock();
    s.expire();
    let scope = match check_scope(&s, &scope) {
        Ok(sc) => sc,
        Err(r) => return r,
    };
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return err(
                    400,
                    "InvalidRequestContent",
                    &format!(
                        "The request content was invalid and could not be deserialized: '{e}'."
                    ),
                );
            }
        }
    };
    let filter = match parse_filter(query_param(query, "$filter").as_deref()) {
        Ok(f) => f,
        Err(m) => return err(400, "UnsupportedQuery", &m),
    };
    let denied = |s: &State, action: &str| {
        s.denied
            .contains(&(token.client_id.clone(), action.to_owned()))
    };
    match (kind.as_str(), method, name.as_deref(), action.as_deref()) {
        ("roledefinitions", "GET", None, _) => {
            let items = s
                .definitions
                .iter()
                .filter(|d| match &filter {
                    Filter::RoleName(n) => d.name.eq_ignore_ascii_case(n),
                    Filter::Type(t) => d.kind.eq_ignore_ascii_case(t),
                    _ => true,
                })
                .map(|d| definition_json(&scope, d))
                .collect();
            page(&base, path, query, items, s.page_size)
        }
        ("roledefinitions", "GET", Some(id), _) => {
            match s.definitions.iter().find(|d| d.id.eq_ignore_ascii_case(id)) {
                Some(d) => Reply::json(200, definition_json(&scope, d)),
                None => err(
                    404,
                    "RoleDefinitionDoesNotExist",
                    &format!("The specified role definition with ID '{id}' does not exist."),
                ),
            }
        }
        ("roleassignments", "GET", None, _) => {
            let me = token.object_id.clone();
            let scope_l = scope.to_ascii_lowercase();
            let items = s
                .assignments
                .values()
                .filter(|a| {
                    let at = a.scope.to_ascii_lowercase();
                    let above_or_at = covers(&at, &scope_l);
                    let below = covers(&scope_l, &at);
                    match &filter {
                        Filter::AtScope => above_or_at,
                        Filter::Principal(p) => {
                            (above_or_at || below) && a.principal_id.eq_ignore_ascii_case(p)
                        }
                        Filter::AtScopePrincipal(p) => {
                            above_or_at && a.principal_id.eq_ignore_ascii_case(p)
                        }
                        Filter::AsTarget => (above_or_at || below) && a.principal_id == me,
                        _ => above_or_at || below,
                    }
                })
                .map(assignment_json)
                .collect();
            page(&base, path, query, items, s.page_size)
        }
        ("roleassignments", m, Some(n), None)
            if !is_guid(n) && matches!(m, "GET" | "PUT" | "DELETE") =>
        {
            err(
                400,
                "InvalidRoleAssignmentId",
                &format!(
                    "The role assignment ID '{n}' is not valid. The role assignment ID must be a GUID."
                ),
            )
        }
        ("roleassignments", "GET", Some(n), None) => match s
            .assignments
            .get(&n.to_ascii_lowercase())
        {
            Some(a) if a.scope.eq_ignore_ascii_case(&scope) => Reply::json(200, assignment_json(a)),
            _ => err(
                404,
                "RoleAssignmentNotFound",
                &format!("The role assignment '{n}' is not found."),
            ),
        },
        ("roleassignments", "PUT", Some(n), None) => {
            let target = format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{n}");
            if denied(&s, "Microsoft.Authorization/roleAssignments/write") {
                return forbidden(
                    token,
                    "Microsoft.Authorization/roleAssignments/write",
                    &target,
                );
            }
            put_assignment(&mut s, token, &scope, &n.to_ascii_lowercase(), &body)
        }
        ("roleassignments", "DELETE", Some(n), None) => {
            let target = format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{n}");
            if denied(&s, "Microsoft.Authorization/roleAssignments/delete") {
                return forbidden(
                    token,
                    "Microsoft.Authorization/roleAssignments/delete",
                    &target,
                );
            }
            let key = n.to_ascii_lowercase();
            match s.assignments.get(&key) {
                Some(a) if a.scope.eq_ignore_ascii_case(&scope) => {
                    let a = s.assignments.remove(&key).expect("present");
                    Reply::json(200, assignment_json(&a))
                }
                _ => Reply::empty(204),
            }
        }
        ("roleassignmentschedulerequests", "PUT", Some(n), None) => {
            if !is_guid(n) {
                return err(
                    400,
                    "InvalidRoleAssignmentScheduleRequestId",
                    &format!(
                        "The role assignment schedule request ID '{n}' is not valid. It must be a GUID."
                    ),
                );
            }
            let target = format!(
                "{scope}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{n}"
            );
            if denied(
                &s,
                "Microsoft.Authorization/roleAssignmentScheduleRequests/write",
            ) {
                return forbidden(
                    token,
                    "Microsoft.Authorization/roleAssignmentScheduleRequests/write",
                    &target,
                );
            }
            schedule_request(&mut s, token, &scope, &n.to_ascii_lowercase(), &body)
        }
        ("roleassignmentschedulerequests", "GET", Some(n), None) => {
            match s.requests.get(&n.to_ascii_lowercase()) {
                Some(r)
                    if r["properties"]["scope"]
                        .as_str()
                        .is_some_and(|x| x.eq_ignore_ascii_case(&scope)) =>
                {
                    Reply::json(200, r.clone())
                }
                _ => err(
                    404,
                    "RoleAssignmentScheduleRequestNotFound",
                    &format!("The role assignment schedule request '{n}' is not found."),
                ),
            }
        }
        ("roleassignmentschedulerequests", "POST", Some(n), Some("cancel")) => {
            match s.requests.get(&n.to_ascii_lowercase()) {
                None => err(
                    404,
                    "RoleAssignmentScheduleRequestNotFound",
                    &format!("The role assignment schedule request '{n}' is not found."),
                ),
                // The fake decides every request at once: nothing is left pending to cancel.
                Some(_) => err(
                    400,
                    "RoleAssignmentScheduleRequestCannotBeCanceled",
                    "Only a request in a pending state can be canceled.",
                ),
            }
        }
        ("roleassignmentschedulerequests", "GET", None, _) => {
            let me = token.object_id.clone();
            let scope_l = scope.to_ascii_lowercase();
            let items = s
                .requests
                .values()
                .filter(|r| {
                    let at = r["properties"]["scope"]
                        .as_str()
                        .unwrap_or_default()
                        .to_ascii_lowercase();
                    let principal = r["properties"]["principalId"].as_str().unwrap_or_default();
                    let near = covers(&at, &scope_l) || covers(&scope_l, &at);
                    match &filter {
                        Filter::AtScope => covers(&at, &scope_l),
                        Filter::Principal(p) => near && principal.eq_ignore_ascii_case(p),
                        Filter::AsTarget => near && principal == me,
                        _ => near,
                    }
                })
                .cloned()
                .collect();
            page(&base, path, query, items, s.page_size)
        }
        ("roleassignmentschedules" | "roleassignmentscheduleinstances", "GET", None, _) => {
            let instances = kind == "roleassignmentscheduleinstances";
            let me = token.object_id.clone();
            let scope_l = scope.to_ascii_lowercase();
            let now = s.now();
            let items = s
                .assignments
                .values()
                // Assignments made outside PIM are listed too (memberType Direct, no end).
                .filter(|a| {
                    a.schedule
                        .as_ref()
                        .is_none_or(|sc| sc.start <= now || !instances)
                })
                .filter(|a| {
                    let at = a.scope.to_ascii_lowercase();
                    let near = covers(&at, &scope_l) || covers(&scope_l, &at);
                    match &filter {
                        Filter::AtScope => covers(&at, &scope_l),
                        Filter::Principal(p) | Filter::AtScopePrincipal(p) => {
                            near && a.principal_id.eq_ignore_ascii_case(p)
                        }
                        Filter::AsTarget => near && a.principal_id == me,
                        _ => near,
                    }
                })
                .map(|a| schedule_json(a, instances))
                .collect();
            page(&base, path, query, items, s.page_size)
        }
        _ => err(
            405,
            "MethodNotAllowed",
            &format!("The requested method '{method}' is not allowed for this resource."),
        ),
    }
}

fn definition_json(scope: &str, d: &super::RoleDefinition) -> Value {
    json!({
        "properties": {
            "roleName": d.name, "type": d.kind, "description": d.description,
            "assignableScopes": ["/"],
            "permissions": [{"actions": ["*/read"], "notActions": [], "dataActions": [], "notDataActions": []}],
            "createdOn": "2015-02-02T21:55:09.8806423Z", "updatedOn": "2021-11-11T20:13:47.8628684Z",
            "createdBy": null, "updatedBy": null,
        },
        "id": definition_id(scope, &d.id),
        "type": "Microsoft.Authorization/roleDefinitions",
        "name": d.id,
    })
}

/// The role definition a body names, by its GUID, when the fake has it.
fn known_role(s: &State, role_id: &str) -> Result<String, Reply> {
    let role = definition_guid(role_id).to_ascii_lowercase();
    if s.definitions.iter().any(|d| d.id == role) {
        Ok(role)
    } else {
        Err(err(
            400,
            "RoleDefinitionDoesNotExist",
            &format!("The specified role definition with ID '{role}' does not exist."),
        ))
    }
}

/// The GUID at the end of a role definition id (or the GUID itself).
fn definition_guid(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

fn principal_check(s: &State, id: &str) -> Result<&'static str, Reply> {
    if !is_guid(id) {
        return Err(err(
            400,
            "InvalidPrincipalId",
            &format!("The Principal ID '{id}' is not valid. Principal ID must be a GUID."),
        ));
    }
    match s.principals.get(id) {
        Some(p) if p.visible_at <= s.now() => Ok(p.kind),
        _ => Err(err(
            400,
            "PrincipalNotFound",
            &format!(
                "Principal {} does not exist in the directory {}. Check that you have the correct principal ID. If you are creating this principal and then immediately assigning a role, this error might be related to a replication delay. In this case, set the role assignment principalType property to a value, such as ServicePrincipal, User, or Group.  See https://aka.ms/docs-principaltype",
                id.replace('-', ""),
                s.tenant
            ),
        )),
    }
}

fn put_assignment(s: &mut State, token: &Token, scope: &str, name: &str, body: &Value) -> Reply {
    let p = &body["properties"];
    let (Some(role_id), Some(principal)) =
        (p["roleDefinitionId"].as_str(), p["principalId"].as_str())
    else {
        return err(
            400,
            "InvalidRequestContent",
            "The request content was invalid: properties.roleDefinitionId and properties.principalId are required.",
        );
    };
    let role = match known_role(s, role_id) {
        Ok(r) => r,
        Err(r) => return r,
    };
    // With principalType given, ARM skips the directory look-up (the documented way past
    // the replication delay); without it, a principal not yet replicated is not found.
    let principal_type = match p["principalType"].as_str() {
        Some(t)
            if [
                "User",
                "Group",
                "ServicePrincipal",
                "ForeignGroup",
                "Device",
            ]
            .contains(&t) =>
        {
            t.to_owned()
        }
        Some(t) => {
            return err(
                400,
                "InvalidPrincipalType",
                &format!("The principal type '{t}' is not valid."),
            );
        }
        None => match principal_check(s, principal) {
            Ok(kind) => kind.to_owned(),
            Err(r) => return r,
        },
    };
    if !is_guid(principal) {
        return err(
            400,
            "InvalidPrincipalId",
            &format!("The Principal ID '{principal}' is not valid. Principal ID must be a GUID."),
        );
    }
    let now = s.now();
    let description = p["description"].as_str().map(str::to_owned);
    if let Some(existing) = s.assignments.get_mut(name) {
        if !existing.scope.eq_ignore_ascii_case(scope)
            || !existing.principal_id.eq_ignore_ascii_case(principal)
            || existing.role != role
        {
            return err(
                400,
                "RoleAssignmentUpdateNotPermitted",
                "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.",
            );
        }
        existing.description = description;
        existing.updated = now;
        let a = existing.clone();
        return Reply::json(200, assignment_json(&a));
    }
    if let Some(other) = s.assignments.values().find(|a| {
        a.scope.eq_ignore_ascii_case(scope)
            && a.principal_id.eq_ignore_ascii_case(principal)
            && a.role == role
    }) {
        return err(
            409,
            "RoleAssignmentExists",
            &format!(
                "The role assignment already exists. The ID of the existing role assignment is {}.",
                other.name.replace('-', "")
            ),
        );
    }
    let a = Assignment {
        name: name.to_owned(),
        scope: scope.to_owned(),
        role,
        principal_id: principal.to_ascii_lowercase(),
        principal_type,
        description,
        created: now,
        updated: now,
        created_by: token.object_id.clone(),
        schedule: None,
    };
    let out = assignment_json(&a);
    s.assignments.insert(name.to_owned(), a);
    Reply::json(201, out)
}

/// ISO 8601 durations as PIM takes them: `PnD`, `PTnH`, `PTnM`, `PTnS` and combinations.
fn iso_duration(d: &str) -> Option<TimeDelta> {
    let rest = d.strip_prefix('P')?;
    let (days, time) = rest.split_once('T').unwrap_or((rest, ""));
    let mut total = TimeDelta::zero();
    let mut take = |part: &str, units: &[(char, i64)]| -> Option<()> {
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() {
                num.push(c);
            } else {
                let secs = units.iter().find(|(u, _)| *u == c)?.1;
                total += TimeDelta::seconds(num.parse::<i64>().ok()? * secs);
                num.clear();
            }
        }
        num.is_empty().then_some(())
    };
    take(days, &[('D', 86_400), ('W', 604_800)])?;
    take(time, &[('H', 3_600), ('M', 60), ('S', 1)])?;
    Some(total)
}

fn schedule_json(a: &Assignment, instance: bool) -> Value {
    // An assignment made outside PIM: a schedule from its creation, without an end or a
    // request; its schedule is named after the assignment.
    let standing = Schedule {
        name: a.name.clone(),
        request: String::new(),
        start: a.created,
        end: None,
    };
    let sc = a.schedule.as_ref().unwrap_or(&standing);
    let mut props = json!({
        "scope": a.scope,
        "roleDefinitionId": definition_id(&a.scope, &a.role),
        "principalId": a.principal_id,
        "principalType": a.principal_type,
        "status": "Provisioned",
        "assignmentType": "Assigned",
        "memberType": "Direct",
        "startDateTime": ts(sc.start),
        "endDateTime": sc.end.map(ts),
        "condition": null,
        "conditionVersion": null,
        "createdOn": ts(a.created),
    });
    let (kind, name) = if instance {
        props["roleAssignmentScheduleId"] = json!(format!(
            "{}/providers/Microsoft.Authorization/roleAssignmentSchedules/{}",
            a.scope, sc.name
        ));
        props["originRoleAssignmentId"] = json!(format!(
            "{}/providers/Microsoft.Authorization/roleAssignments/{}",
            a.scope, a.name
        ));
        ("RoleAssignmentScheduleInstances", a.name.clone())
    } else {
        props["roleAssignmentScheduleRequestId"] = if sc.request.is_empty() {
            Value::Null
        } else {
            json!(format!(
                "{}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{}",
                a.scope, sc.request
            ))
        };
        props["updatedOn"] = json!(ts(a.updated));
        ("RoleAssignmentSchedules", sc.name.clone())
    };
    json!({
        "properties": props,
        "name": name,
        "id": format!("{}/providers/Microsoft.Authorization/{kind}/{name}", a.scope),
        "type": format!("Microsoft.Authorization/{kind}"),
    })
}

fn schedule_request(s: &mut State, token: &Token, scope: &str, name: &str, body: &Value) -> Reply {
    if s.requests.contains_key(name) {
        return err(
            409,
            "RoleAssignmentRequestExists",
            &format!("A role assignment request with Id: {name} already exists."),
        );
    }
    let p = &body["properties"];
    let (Some(request_type), Some(role_id), Some(principal)) = (
        p["requestType"].as_str(),
        p["roleDefinitionId"].as_str(),
        p["principalId"].as_str(),
    ) else {
        return err(
            400,
            "InvalidRequestContent",
            "The request content was invalid: properties.requestType, properties.roleDefinitionId and properties.principalId are required.",
        );
    };
    let role = match known_role(s, role_id) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let kind = match principal_check(s, principal) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let principal = principal.to_ascii_lowercase();
    let now = s.now();
    let active = s
        .assignments
        .values()
        .find(|a| {
            // Assignments made outside PIM count too (PIM shows them as schedules).
            a.scope.eq_ignore_ascii_case(scope) && a.principal_id == principal && a.role == role
        })
        .map(|a| a.name.clone());
    let info = &p["scheduleInfo"];
    let mut status = "Provisioned";
    let mut target_schedule = Value::Null;
    match request_type {
        "AdminAssign" => {
            if active.is_some() {
                return err(
                    400,
                    "RoleAssignmentExists",
                    "The Role assignment already exists.",
                );
            }
            let (start, end) = match justified(p).and_then(|_| schedule_of(info, now, s.max_active))
            {
                Ok(t) => t,
                Err(r) => return r,
            };
            let schedule = guid();
            let assignment = guid();
            target_schedule = json!(schedule);
            s.assignments.insert(
                assignment.clone(),
                Assignment {
                    name: assignment,
                    scope: scope.to_owned(),
                    role: role.clone(),
                    principal_id: principal.clone(),
                    principal_type: kind.to_owned(),
                    description: None,
                    created: now,
                    updated: now,
                    created_by: token.object_id.clone(),
                    schedule: Some(Schedule {
                        name: schedule,
                        request: name.to_owned(),
                        start,
                        end,
                    }),
                },
            );
        }
        "AdminRemove" => {
            let Some(a) = active else {
                return err(
                    400,
                    "RoleAssignmentDoesNotExist",
                    "The Role assignment does not exist.",
                );
            };
            // PIM keeps an assignment for a minimum time, from when it was made, before it
            // may be removed (whatever start the request named).
            if let Some(x) = s.assignments.get(&a).filter(|x| x.schedule.is_some())
                && now - x.created < s.min_active
            {
                return err(
                    400,
                    "ActiveDurationTooShort",
                    "The Active duration is too short. Miniumum Required is 5 minutes.",
                );
            }
            s.assignments.remove(&a);
            status = "Revoked";
        }
        "AdminUpdate" => {
            // A new schedule for the active assignment (jitsudo moves its end when grants
            // that share it come and go).
            let Some(a) = active else {
                return err(
                    400,
                    "RoleAssignmentDoesNotExist",
                    "The Role assignment does not exist.",
                );
            };
            let (start, end) = match justified(p).and_then(|_| schedule_of(info, now, s.max_active))
            {
                Ok(t) => t,
                Err(r) => return r,
            };
            let schedule = guid();
            target_schedule = json!(schedule);
            if let Some(a) = s.assignments.get_mut(&a) {
                a.updated = now;
                a.schedule = Some(Schedule {
                    name: schedule,
                    request: name.to_owned(),
                    start,
                    end,
                });
            }
        }
        "AdminExtend" | "AdminRenew" | "SelfActivate" | "SelfDeactivate" | "SelfExtend"
        | "SelfRenew" => {
            return err(
                400,
                "InvalidRoleAssignmentRequest",
                &format!("The request type '{request_type}' is not modelled by the testkit fake."),
            );
        }
        other => {
            return err(
                400,
                "InvalidRoleAssignmentRequest",
                &format!("The request type '{other}' is not valid."),
            );
        }
    }
    let out = json!({
        "properties": {
            "targetRoleAssignmentScheduleId": target_schedule,
            "targetRoleAssignmentScheduleInstanceId": null,
            "scope": scope,
            "roleDefinitionId": definition_id(scope, &role),
            "principalId": principal,
            "principalType": kind,
            "requestType": request_type,
            "status": status,
            "approvalId": null,
            "scheduleInfo": info.clone(),
            "ticketInfo": {"ticketNumber": p["ticketInfo"]["ticketNumber"].clone(), "ticketSystem": p["ticketInfo"]["ticketSystem"].clone()},
            "justification": p["justification"].clone(),
            "requestorId": token.object_id,
            "createdOn": ts(now),
            "condition": null,
            "conditionVersion": null,
        },
        "name": name,
        "id": format!("{scope}/providers/Microsoft.Authorization/RoleAssignmentScheduleRequests/{name}"),
        "type": "Microsoft.Authorization/RoleAssignmentScheduleRequests",
    });
    s.requests.insert(name.to_owned(), out.clone());
    Reply::json(201, out)
}

/// The role settings' justification rule (on by default for assignments).
fn justified(p: &Value) -> Result<(), Reply> {
    if p["justification"]
        .as_str()
        .is_none_or(|j| j.trim().is_empty())
    {
        return Err(err(
            400,
            "RoleAssignmentRequestPolicyValidationFailed",
            "The following policy rules failed: [\"JustificationRule\"]",
        ));
    }
    Ok(())
}

/// The start and end a schedule request asks for, checked as the role settings do.
fn schedule_of(
    info: &Value,
    now: DateTime<Utc>,
    max_active: TimeDelta,
) -> Result<(DateTime<Utc>, Option<DateTime<Utc>>), Reply> {
    let bad = |message: &str| Err(err(400, "InvalidRoleAssignmentRequest", message));
    let start = match info["startDateTime"].as_str() {
        Some(t) => match DateTime::parse_from_rfc3339(t) {
            Ok(t) => t.to_utc(),
            Err(_) => return bad(&format!("The start date time '{t}' is not valid.")),
        },
        None => now,
    };
    let expiration = &info["expiration"];
    let end = match expiration["type"].as_str().unwrap_or("NoExpiration") {
        "AfterDateTime" => match expiration["endDateTime"]
            .as_str()
            .map(DateTime::parse_from_rfc3339)
        {
            Some(Ok(t)) => Some(t.to_utc()),
            _ => {
                return bad(
                    "expiration.endDateTime is required and must be a date-time for type AfterDateTime.",
                );
            }
        },
        "AfterDuration" => match expiration["duration"].as_str().and_then(iso_duration) {
            Some(d) => Some(start + d),
            None => {
                return bad(
                    "expiration.duration must be an ISO 8601 duration for type AfterDuration.",
                );
            }
        },
        "NoExpiration" => None,
        other => return bad(&format!("The expiration type '{other}' is not valid.")),
    };
    match end {
        Some(end) if end <= start => bad("The end date time must be after the start date time."),
        Some(end) if end - start <= max_active => Ok((start, Some(end))),
        _ => Err(err(
            400,
            "RoleAssignmentRequestPolicyValidationFailed",
            "The following policy rules failed: [\"ExpirationRule\"]",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_as_arm_takes_them() {
        assert_eq!(parse_filter(Some("atScope()")).unwrap(), Filter::AtScope);
        assert_eq!(
            parse_filter(Some("principalId eq 'x'")).unwrap(),
            Filter::Principal("x".into())
        );
        assert_eq!(
            parse_filter(Some("atScope() and assignedTo('x')")).unwrap(),
            Filter::AtScopePrincipal("x".into())
        );
        assert!(
            parse_filter(Some("principalId eq x")).is_err(),
            "the value must be quoted"
        );
        assert!(parse_filter(Some("atScope() and principalId eq 'x'")).is_err());
    }

    #[test]
    fn scopes_cover_what_is_below_them() {
        assert!(covers(
            "/subscriptions/a",
            "/subscriptions/a/resourcegroups/rg"
        ));
        assert!(!covers("/subscriptions/a", "/subscriptions/ab"));
        assert!(covers("", "/subscriptions/a"));
    }

    #[test]
    fn pim_durations_parse() {
        assert_eq!(iso_duration("PT8H"), Some(TimeDelta::hours(8)));
        assert_eq!(iso_duration("P1DT30M"), Some(TimeDelta::minutes(1470)));
        assert_eq!(iso_duration("8H"), None);
    }
}
