//! The set of configured providers, by name, each with how its requesters are mapped to
//! cloud principals and what the reconciler does about drift.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::Provider;
use crate::identity::IdentityMapping;

/// What the reconciler does when a live grant has drifted (deleted or edited out of band).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DriftAction {
    /// Audit and notify; the request stays as it is.
    #[default]
    Report,
    /// Audit, notify, and end the request as REVOKED with the drift as its detail.
    End,
}

impl DriftAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftAction::Report => "report",
            DriftAction::End => "end",
        }
    }
}

/// One configured provider.
#[derive(Clone)]
pub struct Entry {
    pub provider: Arc<dyn Provider>,
    pub identity: Arc<IdentityMapping>,
    pub on_drift: DriftAction,
    /// The longest one call may take, all in (the engine abandons it as outcome-unknown
    /// after that); `None` for the engine's default.
    pub call_timeout: Option<std::time::Duration>,
}

impl Entry {
    /// A provider whose principals are the requesters' own subjects, drift reported.
    pub fn new(provider: Arc<dyn Provider>) -> Self {
        Entry {
            identity: Arc::new(IdentityMapping::subject_as_is(provider.name())),
            provider,
            on_drift: DriftAction::Report,
            call_timeout: None,
        }
    }
}

#[derive(Clone, Default)]
pub struct Registry {
    providers: BTreeMap<String, Entry>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a provider under its own name (principals = subjects, drift reported); a later
    /// one with the same name replaces it.
    pub fn with(self, provider: Arc<dyn Provider>) -> Self {
        self.with_entry(Entry::new(provider))
    }

    pub fn with_entry(mut self, entry: Entry) -> Self {
        self.providers
            .insert(entry.provider.name().to_owned(), entry);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.providers.get(name).map(|e| &e.provider)
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.providers.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.providers.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<dyn Provider>)> {
        self.providers
            .iter()
            .map(|(k, v)| (k.as_str(), &v.provider))
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.providers.values()
    }
}
