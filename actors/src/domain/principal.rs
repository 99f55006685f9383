//! Who is acting, and the one rule that decides "same person" (docs/security.md): the same
//! subject, or the same *verified* email. An unverified email never links identities.

use serde::{Deserialize, Serialize};

/// An authenticated principal as the engine sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub subject: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub trust_tier: i64,
    /// Other subjects configured as this same person (`authz.same_person`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    /// The token's string claims, for identity mapping at create. Never stored: the mapped
    /// principal is stored instead ([`crate::domain::Request::principal`]).
    #[serde(skip)]
    pub claims: std::collections::BTreeMap<String, String>,
}

impl Principal {
    pub fn new(subject: impl Into<String>) -> Self {
        Principal {
            subject: subject.into(),
            email: None,
            email_verified: false,
            groups: Vec::new(),
            trust_tier: 0,
            links: Vec::new(),
            claims: Default::default(),
        }
    }

    pub fn with_groups<I: IntoIterator<Item = S>, S: Into<String>>(mut self, groups: I) -> Self {
        self.groups = groups.into_iter().map(Into::into).collect();
        self
    }

    pub fn with_verified_email(mut self, email: impl Into<String>) -> Self {
        self.email = Some(email.into());
        self.email_verified = true;
        self
    }

    pub fn person(&self) -> PersonRef {
        PersonRef {
            subject: self.subject.clone(),
            verified_email: self
                .email
                .as_ref()
                .filter(|_| self.email_verified)
                .map(|e| e.to_lowercase()),
            links: self.links.clone(),
        }
    }
}

/// The identity attributes that decide "same person"; stored with approvals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonRef {
    pub subject: String,
    /// Lower-cased, and present only when the issuer said it was verified.
    #[serde(default)]
    pub verified_email: Option<String>,
    /// Other subjects configured as this same person.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
}

/// The same subject, the same verified email, or subjects configured as one person.
pub fn same_person(a: &PersonRef, b: &PersonRef) -> bool {
    a.subject == b.subject
        || a.links.contains(&b.subject)
        || b.links.contains(&a.subject)
        || matches!((&a.verified_email, &b.verified_email), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_links_make_two_subjects_one_person_either_way() {
        let mut alice = Principal::new("alice");
        alice.links = vec!["alice-admin".into()];
        let admin_login = Principal::new("alice-admin");
        assert!(same_person(&alice.person(), &admin_login.person()));
        assert!(same_person(&admin_login.person(), &alice.person()));
        assert!(!same_person(
            &alice.person(),
            &Principal::new("bob").person()
        ));
    }

    #[test]
    fn verified_emails_link_identities_but_unverified_do_not() {
        let a = Principal::new("a").with_verified_email("Alice@Example.com");
        let b = Principal::new("b").with_verified_email("alice@example.com");
        assert!(same_person(&a.person(), &b.person()));
        let mut c = Principal::new("c");
        c.email = Some("alice@example.com".into());
        assert!(!same_person(&a.person(), &c.person()));
        assert!(same_person(&c.person(), &Principal::new("c").person()));
    }
}
