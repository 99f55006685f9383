-- The verified email last seen on each subject's token: "same person" checks about a
-- subject that is not the caller (trust-tier changes) need it. Unverified emails are never
-- stored: they never link identities.
CREATE TABLE identities (
    subject        text PRIMARY KEY,
    verified_email text NOT NULL,
    seen_at        timestamptz NOT NULL
);
CREATE INDEX identities_by_email ON identities (lower(verified_email));
