//! testkit's integration tests, one binary (one link on two cores).

mod azure_fake;
mod gcp_fake;
mod kube_fake;
