//! PrincipalService: who the caller is, and the trust tiers policies see.

use jitsudo_proto::v1;

use super::{check_text, required};
use crate::convert;
use crate::error::ApiError;
use crate::state::{AppState, Caller};

impl AppState {
    pub fn who_am_i(&self, c: &Caller) -> v1::Principal {
        let p = &c.principal;
        v1::Principal {
            subject: p.subject.clone(),
            email: p.email.clone().unwrap_or_default(),
            email_verified: p.email_verified,
            groups: p.groups.clone(),
            trust_tier: p.trust_tier,
            admin: c.admin,
            auditor: c.auditor,
        }
    }

    pub async fn get_principal(
        &self,
        c: &Caller,
        subject: &str,
    ) -> Result<v1::PrincipalRecord, ApiError> {
        if subject != c.subject() {
            c.require_admin_or_auditor("reading another principal")?;
        }
        required("subject", subject)?;
        check_text("subject", subject, 256)?;
        let rec = self.engine.principal(subject).await?;
        Ok(match rec {
            Some(p) => v1::PrincipalRecord {
                subject: p.subject,
                trust_tier: p.trust_tier,
                updated_by: p.updated_by,
                updated_at: Some(convert::ts(p.updated_at)),
            },
            None => v1::PrincipalRecord {
                subject: subject.to_owned(),
                trust_tier: 0,
                updated_by: String::new(),
                updated_at: None,
            },
        })
    }

    pub async fn set_trust_tier(
        &self,
        c: &Caller,
        r: v1::SetTrustTierRequest,
    ) -> Result<v1::PrincipalRecord, ApiError> {
        c.require_admin("changing trust tiers")?;
        if r.subject.is_empty() {
            return Err(ApiError::invalid("subject is required"));
        }
        check_text("subject", &r.subject, 256)?;
        check_text("reason", &r.reason, 1024)?;
        let p = self
            .engine
            .set_trust_tier(&c.principal, &r.subject, r.trust_tier, &r.reason)
            .await?;
        Ok(v1::PrincipalRecord {
            subject: p.subject,
            trust_tier: p.trust_tier,
            updated_by: p.updated_by,
            updated_at: Some(convert::ts(p.updated_at)),
        })
    }
}
