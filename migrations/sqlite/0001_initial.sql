-- jitsudo schema, SQLite (single node). Times are integer microseconds since the Unix epoch,
-- read from the clock inside the BEGIN IMMEDIATE transaction that stores them.

CREATE TABLE cluster_meta (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    updated_at integer NOT NULL DEFAULT 0
);

CREATE TABLE nodes (
    node_id      text PRIMARY KEY,
    incarnation  text NOT NULL,
    cluster_addr text NOT NULL DEFAULT '',
    api_addr     text NOT NULL DEFAULT '',
    started_at   integer NOT NULL,
    heartbeat_at integer NOT NULL
);

-- Owner and epoch of a shard: written only by a takeover, read FOR SHARE by fenced writes.
CREATE TABLE shard_owners (
    shard       integer PRIMARY KEY,
    owner       text NOT NULL,
    incarnation text NOT NULL,
    epoch       integer NOT NULL,
    acquired_at integer NOT NULL
);

-- Lease expiry of a shard: written by every renewal, so renewals never touch shard_owners.
CREATE TABLE shard_renewals (
    shard      integer PRIMARY KEY REFERENCES shard_owners (shard),
    epoch      integer NOT NULL,
    expires_at integer NOT NULL
);

CREATE TABLE requests (
    id                text PRIMARY KEY,
    shard             integer NOT NULL,
    version           integer NOT NULL CHECK (version > 0),
    state             text NOT NULL,
    requester         text NOT NULL,
    provider          text NOT NULL,
    role              text NOT NULL,
    scope             text NOT NULL,
    break_glass       integer NOT NULL,
    created_at        integer NOT NULL,
    updated_at        integer NOT NULL,
    approval_deadline integer,
    grant_deadline    integer,
    granted_at        integer,
    expires_at        integer,
    ended_at          integer,
    -- The rest of the record (spec, decision, approvals, grants, extensions), without times.
    body              text NOT NULL
);
CREATE INDEX requests_live ON requests (shard)
    WHERE state IN ('PENDING', 'APPROVED', 'ACTIVE', 'ENDING');
CREATE INDEX requests_by_requester ON requests (requester, created_at DESC, id DESC);
CREATE INDEX requests_by_created ON requests (created_at DESC, id DESC);
CREATE INDEX requests_expiring ON requests (expires_at) WHERE state = 'ACTIVE';

CREATE TABLE approvals (
    request_id text NOT NULL REFERENCES requests (id),
    extension  integer NOT NULL DEFAULT 0,
    approver   text NOT NULL,
    kind       text NOT NULL,
    comment    text NOT NULL DEFAULT '',
    at         integer NOT NULL,
    -- The same person never counts twice (the domain also links verified emails).
    PRIMARY KEY (request_id, extension, approver)
);

CREATE TABLE extensions (
    request_id text NOT NULL REFERENCES requests (id),
    number     integer NOT NULL,
    by_seconds integer NOT NULL,
    state      text NOT NULL,
    grant_id   text,
    PRIMARY KEY (request_id, number)
);

-- Provider references of grants; never secrets.
CREATE TABLE grants (
    grant_id     text PRIMARY KEY,
    request_id   text NOT NULL REFERENCES requests (id),
    provider     text NOT NULL,
    purpose      text NOT NULL,
    status       text NOT NULL,
    provider_ref text NOT NULL DEFAULT '',
    not_after    integer,
    updated_at   integer NOT NULL
);
CREATE INDEX grants_by_request ON grants (request_id);

CREATE TABLE policies (
    name       text NOT NULL,
    version    integer NOT NULL,
    rego       text NOT NULL,
    author     text NOT NULL,
    deleted    integer NOT NULL DEFAULT 0,
    created_at integer NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE principals (
    subject    text PRIMARY KEY,
    trust_tier integer NOT NULL DEFAULT 0,
    updated_by text NOT NULL,
    updated_at integer NOT NULL
);

CREATE TABLE reviews (
    request_id text PRIMARY KEY REFERENCES requests (id),
    reason     text NOT NULL,
    reviewer   text,
    verdict    text,
    created_at integer NOT NULL,
    closed_at  integer
);

-- Immutable; written in the business transaction. `details` is text: the chain hashes the
-- exact stored bytes.
CREATE TABLE audit_events (
    id              text PRIMARY KEY,
    at              integer NOT NULL,
    kind            text NOT NULL,
    actor           text NOT NULL,
    request_id      text,
    request_version integer,
    node            text NOT NULL,
    details         text NOT NULL,
    UNIQUE (request_id, request_version)
);
CREATE INDEX audit_events_by_request ON audit_events (request_id, request_version);

CREATE TABLE audit_chain (
    seq       integer PRIMARY KEY,
    event_id  text NOT NULL UNIQUE REFERENCES audit_events (id),
    prev_hash blob NOT NULL,
    hash      blob NOT NULL
);

CREATE TABLE audit_checkpoints (
    seq       integer PRIMARY KEY,
    hash      blob NOT NULL,
    at        integer NOT NULL,
    key_id    text NOT NULL,
    signature blob NOT NULL
);

CREATE TABLE outbox (
    id               integer PRIMARY KEY AUTOINCREMENT,
    event_id         text NOT NULL,
    request_id       text,
    sink             text NOT NULL CHECK (sink <> ''),
    kind             text NOT NULL,
    payload          text NOT NULL,
    state            text NOT NULL DEFAULT 'pending',
    attempts         integer NOT NULL DEFAULT 0,
    created_at       integer NOT NULL,
    next_attempt_at  integer NOT NULL,
    claimed_by       text,
    claim_expires_at integer,
    last_error       text,
    delivered_at     integer,
    UNIQUE (event_id, sink, kind)
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
