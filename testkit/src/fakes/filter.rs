//! Which requests a fault applies to, for every fake that matches on method and path.

/// Which requests a fault applies to: all given conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// HTTP method, compared case-insensitively.
    pub method: Option<String>,
    /// A substring of the request path (query excluded).
    pub path_contains: Option<String>,
}

impl Filter {
    /// Every request.
    pub fn any() -> Self {
        Self::default()
    }

    pub fn method(method: &str) -> Self {
        Self::any().and_method(method)
    }

    pub fn path(substring: &str) -> Self {
        Self::any().and_path(substring)
    }

    pub fn and_method(mut self, method: &str) -> Self {
        self.method = Some(method.to_string());
        self
    }

    pub fn and_path(mut self, substring: &str) -> Self {
        self.path_contains = Some(substring.to_string());
        self
    }

    pub(crate) fn matches(&self, method: &str, path: &str) -> bool {
        self.method
            .as_ref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.path_contains.as_ref().is_none_or(|p| path.contains(p))
    }
}
