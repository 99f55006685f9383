//! postgres implementation of the audit chain store.

use super::*;

impl AuditStore for PgStore {}
