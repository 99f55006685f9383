mod auth;

mod admin;
mod harness;
