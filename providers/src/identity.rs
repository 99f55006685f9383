//! Identity mapping: which cloud principal a requester is at one provider.
//!
//! Derived from the authenticated identity by a template (`{email}`, `oidc:{sub}`,
//! `{claim:oid}`), with a map file for the exceptions (bots, people whose cloud name differs).
//! Guarantees: email is used only when the identity provider verified it; a requester who
//! cannot be mapped is refused with the attribute that is missing, never mapped to a guess.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// What the API knows of the caller, as far as mapping needs it.
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a> {
    /// The token's `sub` (or a bot's configured subject).
    pub subject: &'a str,
    pub email: Option<&'a str>,
    pub email_verified: bool,
    /// String-valued claims of the token (`oid`, `preferred_username`, ...).
    pub claims: &'a BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error(
        "invalid subject template {template:?}: {reason} (use literal text with {{sub}}, {{email}} or {{claim:NAME}})"
    )]
    Template { template: String, reason: String },
    #[error("cannot read the identity map file {path}: {reason}")]
    MapFile { path: String, reason: String },
    #[error(
        "{subject:?} cannot be mapped to a principal of provider {provider:?}: {missing} (its subject template is {template:?}; an admin can add {subject:?} to the provider's identity_map_file)"
    )]
    Unmappable {
        provider: String,
        subject: String,
        missing: String,
        template: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Subject,
    Email,
    Claim(String),
}

/// One provider's mapping rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityMapping {
    provider: String,
    template: String,
    parts: Vec<Part>,
    /// Exceptions by subject, then by verified email.
    by_subject: BTreeMap<String, String>,
    by_email: BTreeMap<String, String>,
}

/// The map file: `[subjects]` and `[emails]` tables of `"who" = "cloud principal"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MapFile {
    #[serde(default)]
    subjects: BTreeMap<String, String>,
    #[serde(default)]
    emails: BTreeMap<String, String>,
}

/// The template when a provider's configuration sets none: the requester's own subject.
pub const DEFAULT_TEMPLATE: &str = "{sub}";

impl IdentityMapping {
    /// The mapping of `provider` by `template`.
    pub fn new(provider: &str, template: &str) -> Result<Self, IdentityError> {
        Ok(IdentityMapping {
            provider: provider.to_owned(),
            template: template.to_owned(),
            parts: parse(template)?,
            by_subject: BTreeMap::new(),
            by_email: BTreeMap::new(),
        })
    }

    /// Today's behaviour for providers configured without a template: the subject itself.
    pub fn subject_as_is(provider: &str) -> Self {
        IdentityMapping {
            provider: provider.to_owned(),
            template: DEFAULT_TEMPLATE.to_owned(),
            parts: vec![Part::Subject],
            by_subject: BTreeMap::new(),
            by_email: BTreeMap::new(),
        }
    }

    /// Adds the exceptions of a map file (TOML: `[subjects]`, `[emails]`).
    pub fn with_map_file(mut self, path: &Path) -> Result<Self, IdentityError> {
        let failed = |reason: String| IdentityError::MapFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
        let file: MapFile = toml::from_str(&text).map_err(|e| failed(e.to_string()))?;
        for (who, principal) in file.subjects.iter().chain(&file.emails) {
            if principal.trim().is_empty() {
                return Err(failed(format!("{who:?} maps to an empty principal")));
            }
        }
        self.by_subject.extend(file.subjects);
        self.by_email.extend(
            file.emails
                .into_iter()
                .map(|(e, p)| (e.to_ascii_lowercase(), p)),
        );
        Ok(self)
    }

    pub fn template(&self) -> &str {
        &self.template
    }

    /// The cloud principal of `who` at this provider.
    pub fn map(&self, who: &Identity<'_>) -> Result<String, IdentityError> {
        let verified_email = who.email.filter(|_| who.email_verified);
        if let Some(p) = self.by_subject.get(who.subject) {
            return Ok(p.clone());
        }
        if let Some(p) = verified_email.and_then(|e| self.by_email.get(&e.to_ascii_lowercase())) {
            return Ok(p.clone());
        }
        let unmappable = |missing: String| IdentityError::Unmappable {
            provider: self.provider.clone(),
            subject: who.subject.to_owned(),
            missing,
            template: self.template.clone(),
        };
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Subject => out.push_str(who.subject),
                Part::Email => match (who.email, verified_email) {
                    (_, Some(e)) => out.push_str(e),
                    (Some(_), None) => {
                        return Err(unmappable(
                            "the token's email is not verified (email_verified is not true)".into(),
                        ));
                    }
                    (None, None) => return Err(unmappable("the token has no email claim".into())),
                },
                Part::Claim(name) => match who.claims.get(name).filter(|v| !v.is_empty()) {
                    Some(v) => out.push_str(v),
                    None => {
                        return Err(unmappable(format!(
                            "the token has no string claim {name:?}"
                        )));
                    }
                },
            }
        }
        if out.trim().is_empty() {
            return Err(unmappable("the mapped principal is empty".into()));
        }
        Ok(out)
    }
}

fn parse(template: &str) -> Result<Vec<Part>, IdentityError> {
    let bad = |reason: &str| IdentityError::Template {
        template: template.to_owned(),
        reason: reason.to_owned(),
    };
    let mut parts = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                parts.push(Part::Text(rest.to_owned()));
                break;
            }
            Some(i) if rest[i..].starts_with('}') => return Err(bad("a '}' without its '{'")),
            Some(i) => {
                if i > 0 {
                    parts.push(Part::Text(rest[..i].to_owned()));
                }
                let close = rest[i..]
                    .find('}')
                    .ok_or_else(|| bad("a '{' without its '}'"))?;
                let name = &rest[i + 1..i + close];
                parts.push(match name {
                    "sub" => Part::Subject,
                    "email" => Part::Email,
                    n => match n.strip_prefix("claim:") {
                        Some(c) if !c.is_empty() && !c.contains(['{', '}']) => {
                            Part::Claim(c.to_owned())
                        }
                        _ => return Err(bad(&format!("unknown placeholder {{{n}}}"))),
                    },
                });
                rest = &rest[i + close + 1..];
            }
        }
    }
    if !parts.iter().any(|p| !matches!(p, Part::Text(_))) {
        return Err(bad(
            "it has no placeholder, so every requester would be the same principal",
        ));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who<'a>(
        email: Option<&'a str>,
        verified: bool,
        claims: &'a BTreeMap<String, String>,
    ) -> Identity<'a> {
        Identity {
            subject: "u-123",
            email,
            email_verified: verified,
            claims,
        }
    }

    #[test]
    fn templates_fill_in_subject_email_and_claims() {
        let claims = BTreeMap::from([("oid".to_owned(), "0000-aaaa".to_owned())]);
        let w = who(Some("Alice@Example.com"), true, &claims);
        let map = |t| IdentityMapping::new("k", t).unwrap().map(&w).unwrap();
        assert_eq!(map("{email}"), "Alice@Example.com");
        assert_eq!(map("oidc:{sub}"), "oidc:u-123");
        assert_eq!(map("{claim:oid}"), "0000-aaaa");
        assert_eq!(map("user/{sub}/{claim:oid}"), "user/u-123/0000-aaaa");
    }

    #[test]
    fn an_unverified_email_is_never_used_and_the_refusal_says_why() {
        let claims = BTreeMap::new();
        let m = IdentityMapping::new("k8s", "{email}").unwrap();
        let e = m
            .map(&who(Some("a@example.com"), false, &claims))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not verified") && e.contains("k8s"), "{e}");
        let e = m.map(&who(None, false, &claims)).unwrap_err().to_string();
        assert!(e.contains("no email claim"), "{e}");
        let e = IdentityMapping::new("k8s", "{claim:oid}")
            .unwrap()
            .map(&who(None, false, &claims))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"oid\""), "{e}");
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        for (t, needle) in [
            ("{nope}", "unknown placeholder {nope}"),
            ("{sub", "without its '}'"),
            ("sub}", "without its '{'"),
            ("static-user", "no placeholder"),
            ("{claim:}", "unknown placeholder"),
        ] {
            let e = IdentityMapping::new("k", t).unwrap_err().to_string();
            assert!(e.contains(needle), "{t}: {e}");
        }
    }

    #[test]
    fn the_map_file_wins_over_the_template_by_subject_or_verified_email() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.toml");
        std::fs::write(
            &path,
            "[subjects]\n\"bot:deployer\" = \"system:serviceaccount:ci:deployer\"\n[emails]\n\"Bob@Example.com\" = \"bob-admin\"\n",
        )
        .unwrap();
        let m = IdentityMapping::new("k", "{email}")
            .unwrap()
            .with_map_file(&path)
            .unwrap();
        let claims = BTreeMap::new();
        let bot = Identity {
            subject: "bot:deployer",
            email: None,
            email_verified: false,
            claims: &claims,
        };
        assert_eq!(m.map(&bot).unwrap(), "system:serviceaccount:ci:deployer");
        let bob = |verified| Identity {
            subject: "u-9",
            email: Some("bob@example.com"),
            email_verified: verified,
            claims: &claims,
        };
        assert_eq!(m.map(&bob(true)).unwrap(), "bob-admin");
        // Unverified: neither the map's email entry nor the template may use it.
        assert!(m.map(&bob(false)).is_err());
        std::fs::write(&path, "[subjects]\n\"x\" = \"\"\n").unwrap();
        let e = IdentityMapping::new("k", "{sub}")
            .unwrap()
            .with_map_file(&path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty principal"), "{e}");
    }
}
