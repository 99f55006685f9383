//! Authentication: turns an `Authorization: Bearer <JWT>` header into an [`Identity`], validating
//! the token against one OIDC issuer's published keys (see docs/security.md, "Authentication").
//! Refusals never echo the token; the dev-mode issuer goes through exactly the same path.

mod authenticator;
mod config;
mod dev_issuer;
mod error;
mod keys;

pub use authenticator::{Authenticator, Identity};
pub use config::{AuthConfig, DEFAULT_ALGORITHMS};
pub use dev_issuer::{DEV_USERS, DevIssuer, DevIssuerError, DevUser};
pub use error::{AuthError, KeyFetchError};
