-- Idempotent creates: the key a client sent with a create and the SHA-256 of the request
-- content, written by the create's own statement; a key is used once per requester.
ALTER TABLE requests ADD COLUMN idempotency_key text, ADD COLUMN content_hash text;
CREATE UNIQUE INDEX requests_by_idempotency_key ON requests (requester, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- "Awaiting my approval" and provider listings page newest first.
CREATE INDEX requests_pending ON requests (created_at DESC, id DESC) WHERE state = 'PENDING';
CREATE INDEX requests_by_provider ON requests (provider, created_at DESC, id DESC);
-- Audit queries by actor or kind, in (at, id) order either way.
CREATE INDEX audit_events_by_actor ON audit_events (actor, at, id);
CREATE INDEX audit_events_by_kind ON audit_events (kind, at, id);
