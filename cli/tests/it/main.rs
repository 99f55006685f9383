//! End-to-end tests of the `jitsudo` binary against a real jitsudod.

mod audit_pins;
mod aws;
mod contexts;
mod dev;
mod device_flow;
mod harness;
mod policy_tests;
mod postgres;
mod snapshots;
