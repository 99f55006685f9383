//! Tests that prove the lifecycle of docs/engine.md: one table test per row (and per refusal)
//! in the submodules, and a property test that drives random event sequences through `step`
//! and checks the §4 invariants after every step. No clock is read: every `now` is explicit.

mod support;

mod create;
mod deciding;
mod ending;
mod extensions;
mod granting;
mod moved_rules;
mod properties;
mod timers_and_terminals;
