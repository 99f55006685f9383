//! jitsudo's public formats. `audit` is the canonical encoding and hash of the audit chain:
//! a published format, so that anyone holding the events, the chain and the public key can
//! verify the log without trusting the server.

pub mod audit;

/// The jitsudo.v1 API: messages, tonic clients and servers, proto3-JSON serde.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/jitsudo.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/jitsudo.v1.serde.rs"));
}

impl std::fmt::Debug for v1::Credentials {
    /// Names the variables, never their values: credentials must not reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.env.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Credentials")
            .field("env", &format_args!("{names:?} (values redacted)"))
            .field("expires_at", &self.expires_at)
            .field("notice", &self.notice)
            .finish()
    }
}

/// The encoded `FileDescriptorSet` of jitsudo.v1 (for gRPC reflection and compatibility checks).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/jitsudo_v1_descriptor.bin"));

/// The method names of every jitsudo.v1 service (`CreateRequest`, `QueryAudit`, ...), from
/// the descriptor the server is built with.
pub fn rpc_names() -> Vec<String> {
    use prost::Message;
    let Ok(set) = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET) else {
        return Vec::new();
    };
    set.file
        .iter()
        .filter(|f| f.package() == "jitsudo.v1")
        .flat_map(|f| &f.service)
        .flat_map(|s| &s.method)
        .map(|m| m.name().to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_rpc_names_come_from_the_descriptor() {
        let names = super::rpc_names();
        for n in [
            "CreateRequest",
            "WatchRequest",
            "VerifyAudit",
            "ApplyPolicy",
        ] {
            assert!(names.iter().any(|m| m == n), "{n} missing from {names:?}");
        }
    }

    #[test]
    fn credentials_debug_names_variables_but_never_values() {
        let c = super::v1::Credentials {
            env: [(
                "AWS_SECRET_ACCESS_KEY".to_owned(),
                "wJalrXUtnFEMI-secret".to_owned(),
            )]
            .into(),
            ..Default::default()
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("AWS_SECRET_ACCESS_KEY"), "{shown}");
        assert!(!shown.contains("wJalrXUtnFEMI-secret"), "{shown}");
    }
}
