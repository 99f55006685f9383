-- jitsudo schema, PostgreSQL. Times that decide leases and deadlines are written by the
-- database clock (statement_timestamp()) in the statement that stores them.

CREATE TABLE cluster_meta (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT statement_timestamp()
);

CREATE TABLE nodes (
    node_id      text PRIMARY KEY,
    incarnation  uuid NOT NULL,
    cluster_addr text NOT NULL DEFAULT '',
    api_addr     text NOT NULL DEFAULT '',
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL
);

-- Owner and epoch of a shard: written only by a takeover, read FOR SHARE by fenced writes.
CREATE TABLE shard_owners (
    shard       integer PRIMARY KEY,
    owner       text NOT NULL,
    incarnation uuid NOT NULL,
    epoch       bigint NOT NULL,
    acquired_at timestamptz NOT NULL
);

-- Lease expiry of a shard: written by every renewal, so renewals never touch shard_owners.
CREATE TABLE shard_renewals (
    shard      integer PRIMARY KEY REFERENCES shard_owners (shard),
    epoch      bigint NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE TABLE requests (
    id                uuid PRIMARY KEY,
    shard             integer NOT NULL,
    version           bigint NOT NULL CHECK (version > 0),
    state             text NOT NULL,
    requester         text NOT NULL,
    provider          text NOT NULL,
    role              text NOT NULL,
    scope             text NOT NULL,
    break_glass       boolean NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    approval_deadline timestamptz,
    grant_deadline    timestamptz,
    granted_at        timestamptz,
    expires_at        timestamptz,
    ended_at          timestamptz,
    -- The rest of the record (spec, decision, approvals, grants, extensions), without times.
    body              jsonb NOT NULL
);
CREATE INDEX requests_live ON requests (shard)
    WHERE state IN ('PENDING', 'APPROVED', 'ACTIVE', 'ENDING');
CREATE INDEX requests_by_requester ON requests (requester, created_at DESC, id DESC);
CREATE INDEX requests_by_created ON requests (created_at DESC, id DESC);
CREATE INDEX requests_expiring ON requests (expires_at) WHERE state = 'ACTIVE';

CREATE TABLE approvals (
    request_id uuid NOT NULL REFERENCES requests (id),
    extension  integer NOT NULL DEFAULT 0,
    approver   text NOT NULL,
    kind       text NOT NULL,
    comment    text NOT NULL DEFAULT '',
    at         timestamptz NOT NULL,
    -- The same person never counts twice (the domain also links verified emails).
    PRIMARY KEY (request_id, extension, approver)
);

CREATE TABLE extensions (
    request_id uuid NOT NULL REFERENCES requests (id),
    number     integer NOT NULL,
    by_seconds bigint NOT NULL,
    state      text NOT NULL,
    grant_id   uuid,
    PRIMARY KEY (request_id, number)
);

-- Provider references of grants; never secrets.
CREATE TABLE grants (
    grant_id     uuid PRIMARY KEY,
    request_id   uuid NOT NULL REFERENCES requests (id),
    provider     text NOT NULL,
    purpose      text NOT NULL,
    status       text NOT NULL,
    provider_ref text NOT NULL DEFAULT '',
    not_after    timestamptz,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX grants_by_request ON grants (request_id);

CREATE TABLE policies (
    name       text NOT NULL,
    version    bigint NOT NULL,
    rego       text NOT NULL,
    author     text NOT NULL,
    deleted    boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE principals (
    subject    text PRIMARY KEY,
    trust_tier bigint NOT NULL DEFAULT 0,
    updated_by text NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE reviews (
    request_id uuid PRIMARY KEY REFERENCES requests (id),
    reason     text NOT NULL,
    reviewer   text,
    verdict    text,
    created_at timestamptz NOT NULL,
    closed_at  timestamptz
);

-- Immutable; written in the business transaction. `details` is text: the chain hashes the
-- exact stored bytes.
CREATE TABLE audit_events (
    id              uuid PRIMARY KEY,
    at              timestamptz NOT NULL,
    kind            text NOT NULL,
    actor           text NOT NULL,
    request_id      uuid,
    request_version bigint,
    node            text NOT NULL,
    details         text NOT NULL,
    UNIQUE (request_id, request_version)
);
CREATE INDEX audit_events_by_request ON audit_events (request_id, request_version);

CREATE TABLE audit_chain (
    seq       bigint PRIMARY KEY,
    event_id  uuid NOT NULL UNIQUE REFERENCES audit_events (id),
    prev_hash bytea NOT NULL,
    hash      bytea NOT NULL
);

CREATE TABLE audit_checkpoints (
    seq       bigint PRIMARY KEY,
    hash      bytea NOT NULL,
    at        timestamptz NOT NULL,
    key_id    text NOT NULL,
    signature bytea NOT NULL
);

CREATE TABLE outbox (
    id               bigserial PRIMARY KEY,
    event_id         uuid NOT NULL,
    request_id       uuid,
    sink             text NOT NULL CHECK (sink <> ''),
    kind             text NOT NULL,
    payload          text NOT NULL,
    state            text NOT NULL DEFAULT 'pending',
    attempts         integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    next_attempt_at  timestamptz NOT NULL,
    claimed_by       text,
    claim_expires_at timestamptz,
    last_error       text,
    delivered_at     timestamptz,
    UNIQUE (event_id, sink, kind)
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
