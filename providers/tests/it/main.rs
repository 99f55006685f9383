//! The integration tests of jitsudo-providers: the conformance suite against every provider,
//! and the http provider's protocol, error mapping and reference server.

#[cfg(feature = "aws")]
mod aws;
#[cfg(feature = "aws")]
mod aws_ic;
#[cfg(feature = "azure")]
mod azure;
mod conformance;
mod demo;
mod features;
#[cfg(feature = "gcp")]
mod gcp;
mod http;
#[cfg(feature = "kubernetes")]
mod kubernetes;
mod server;
mod support;
