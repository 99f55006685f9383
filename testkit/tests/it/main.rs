//! testkit's integration tests, one binary (one link on two cores).

mod kube_fake;
