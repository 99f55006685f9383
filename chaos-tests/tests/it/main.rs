//! Chaos tests: real jitsudod processes, a real PostgreSQL, a fake cloud, cut links.
//! One binary (link time); the scenarios run one at a time.

mod harness;
mod proxy;
mod scenarios;
