//! jitsudo's public formats. `audit` is the canonical encoding and hash of the audit chain:
//! a published format, so that anyone holding the events, the chain and the public key can
//! verify the log without trusting the server.

pub mod audit;
