-- The per-person limits checked at every create (open requests, break-glass cooldown) read
-- only what they need: a person's open requests, and their break-glass requests, however
-- long their history. Additive only (old nodes run alongside).
CREATE INDEX requests_open_by_requester ON requests (requester)
    WHERE state NOT IN ('EXPIRED', 'REVOKED', 'REJECTED', 'CANCELLED', 'TIMED_OUT', 'FAILED');
CREATE INDEX requests_break_glass_by_requester ON requests (requester, created_at DESC)
    WHERE break_glass <> 0;
