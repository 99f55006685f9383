//! postgres implementation of the outbox store.

use super::*;

impl OutboxStore for PgStore {}
