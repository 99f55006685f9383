mod auth;
mod azure;

mod admin;
mod authz;
mod engine_door;
mod fuzz;
mod harness;
mod kubernetes;
mod limits;
mod policy_audit;
mod prometheus;
mod refusals;
mod requests;
mod transport;
mod watch;
