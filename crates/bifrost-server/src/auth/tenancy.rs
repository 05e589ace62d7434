//! What a caller names and what the store keeps (see `bifrost_core::tenant`): the
//! caller's tenant's names behind its prefix, its event ids masked. The default tenant's
//! names and ids are stored as they are, and so is everything while auth is off (tenancy
//! off), so neither pays anything for this.

use bifrost_core::group::{DeadLetterEntry, GroupName, Lease};
use bifrost_core::tenant::{id_mask, local_name};
use bifrost_core::{
    Category, Error as CoreError, EventId, LogFilter, RecordedEvent, StreamName, TenantScope,
};

use super::principal::{ActorKind, Principal};

/// How one caller's tenant sees the store; `Copy`, made once per request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TenantView<'a> {
    /// `None`: names and ids as stored (the default tenant, or auth off).
    tenant: Option<&'a str>,
    /// Auth off: every tenant's data is visible.
    open: bool,
    mask: u128,
}

impl Principal {
    pub(crate) fn view(&self) -> TenantView<'_> {
        let tenant = self.tenant.as_deref();
        TenantView { tenant, open: self.actor.kind == ActorKind::Open, mask: tenant.map_or(0, id_mask) }
    }

    /// Whether this caller may see the stored stream `stream` in a list, the log or a live
    /// feed: its tenant's, and readable under its restriction (`$` streams need `admin`).
    /// Runs per event of a page or a feed: it asks the tenant rule of [`TenantView::owns`]
    /// without making a view (whose id mask it does not need).
    pub(crate) fn sees(&self, stream: &StreamName) -> bool {
        let owns = self.actor.kind == ActorKind::Open || stream.tenant() == self.tenant.as_deref();
        owns && self.may_read(stream.local())
    }
}

impl TenantView<'_> {
    /// `local` as the store names it.
    pub(crate) fn stream(&self, local: &StreamName) -> StreamName {
        StreamName::in_tenant(self.tenant, local)
    }

    pub(crate) fn category(&self, local: &Category) -> Category {
        Category::in_tenant(self.tenant, local)
    }

    /// A prefix of names as the store holds it.
    pub(crate) fn prefix(&self, local: Option<&str>) -> Option<String> {
        match self.tenant {
            None => local.map(str::to_owned),
            Some(tenant) => Some(format!("{tenant}/{}", local.unwrap_or_default())),
        }
    }

    /// Whether `stream` (as stored) is this tenant's.
    pub(crate) fn owns(&self, stream: &StreamName) -> bool {
        self.open || stream.tenant() == self.tenant
    }

    /// Whether the caller is a tenant's (names carry its prefix, ids its mask).
    pub(crate) fn is_tenant(&self) -> bool {
        self.tenant.is_some()
    }

    /// Whether a resource of `tenant` (`None`: the default tenant) is this caller's.
    pub(crate) fn owns_tenant(&self, tenant: Option<&str>) -> bool {
        self.open || tenant == self.tenant
    }

    /// Whether a resource of tenant scope `scope` (a webhook, a bridge) is this tenant's;
    /// those made while auth was off belong to the default tenant.
    pub(crate) fn owns_scope(&self, scope: &TenantScope) -> bool {
        self.open || scope.tenant() == self.tenant
    }

    /// The scope of this caller's reads of the global log and of what it subscribes.
    pub(crate) fn scope(&self) -> TenantScope {
        if self.open { TenantScope::All } else { TenantScope::Only(self.tenant.map(str::to_owned)) }
    }

    /// A log filter as the caller gave it, made the store's: its category behind the
    /// tenant prefix, and only the tenant's streams.
    pub(crate) fn log_filter(&self, mut filter: LogFilter) -> LogFilter {
        filter.category = filter.category.map(|c| self.category(&c));
        filter.tenant = self.scope();
        filter
    }

    /// An id as the caller gave it → as the store keeps it (and back: XOR is its own inverse).
    pub(crate) fn id(&self, id: EventId) -> EventId {
        if self.mask == 0 { id } else { EventId::from_u128(id.as_u128() ^ self.mask) }
    }

    /// Events read from the store, made the caller's: local names, the caller's ids.
    pub(crate) fn localize(&self, events: &mut [RecordedEvent]) {
        if self.tenant.is_none() {
            return;
        }
        // A page is mostly runs of one stream: one local name per run, not per event.
        let mut last: Option<(StreamName, StreamName)> = None;
        for event in events {
            event.id = self.id(event.id);
            let local = match &last {
                Some((stored, local)) if *stored == event.stream => local.clone(),
                _ => {
                    let local = local_name(&event.stream);
                    last = Some((event.stream.clone(), local.clone()));
                    local
                }
            };
            event.stream = local;
        }
    }

    pub(crate) fn localize_one(&self, event: &mut RecordedEvent) {
        if self.tenant.is_none() {
            return;
        }
        event.id = self.id(event.id);
        event.stream = self.local_name(&event.stream);
    }

    /// A stored name as the caller names it.
    pub(crate) fn local_name(&self, stream: &StreamName) -> StreamName {
        match self.tenant {
            None => stream.clone(),
            Some(_) => local_name(stream),
        }
    }

    /// `local` as the store names it.
    pub(crate) fn group(&self, local: &GroupName) -> GroupName {
        GroupName::in_tenant(self.tenant, local)
    }

    /// Whether the group `name` (as stored) is this tenant's.
    pub(crate) fn owns_group(&self, name: &GroupName) -> bool {
        self.open || name.tenant() == self.tenant
    }

    /// A stored group name as the caller names it.
    pub(crate) fn local_group(&self, name: &GroupName) -> GroupName {
        match self.tenant {
            None => name.clone(),
            Some(_) => GroupName::stored(name.local()).unwrap_or_else(|_| name.clone()),
        }
    }

    /// Leases of a fetch, made the caller's.
    pub(crate) fn localize_leases(&self, leases: &mut [Lease]) {
        if self.tenant.is_some() {
            for lease in leases {
                self.localize_one(&mut lease.event);
            }
        }
    }

    /// Dead letters, made the caller's.
    pub(crate) fn localize_dead_letters(&self, entries: &mut [DeadLetterEntry]) {
        if self.tenant.is_none() {
            return;
        }
        for entry in entries {
            if let Some(event) = &mut entry.event {
                self.localize_one(event);
            }
            entry.dead_letter.event_id = self.id(entry.dead_letter.event_id);
            if let Some((_, local)) = entry.dead_letter.stream.split_once('/') {
                entry.dead_letter.stream = local.to_owned();
            }
        }
    }

    /// A store error, in the caller's names and ids.
    pub(crate) fn localize_error(&self, error: CoreError) -> CoreError {
        if self.tenant.is_none() {
            return error;
        }
        match error {
            CoreError::StreamNotFound(s) => CoreError::StreamNotFound(self.local_name(&s)),
            CoreError::StreamDeleted(s) => CoreError::StreamDeleted(self.local_name(&s)),
            CoreError::DuplicateEventId { id } => CoreError::DuplicateEventId { id: self.id(id) },
            CoreError::WrongExpectedVersion(mut conflicts) => {
                for conflict in &mut conflicts {
                    conflict.stream = self.local_name(&conflict.stream);
                }
                CoreError::WrongExpectedVersion(conflicts)
            }
            CoreError::GroupNotFound(name) => CoreError::GroupNotFound(
                name.split_once('/').map_or(name.clone(), |(_, local)| local.to_owned()),
            ),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::principal::{Actor, Restrict, Scopes};

    fn principal(tenant: Option<&str>, kind: ActorKind) -> Principal {
        Principal {
            tenant: tenant.map(str::to_owned),
            scopes: Scopes::ALL,
            restrict: Restrict::default(),
            actor: Actor { kind, id: None, sub: None },
        }
    }

    #[test]
    fn a_tenant_sees_its_own_names_and_ids_and_nothing_else() {
        let acme = principal(Some("acme"), ActorKind::Key);
        let view = acme.view();
        let local = StreamName::new("order-1").unwrap();
        let stored = view.stream(&local);
        assert_eq!(stored.as_str(), "acme/order-1");
        assert!(view.owns(&stored) && !view.owns(&local));
        assert_eq!(view.local_name(&stored), local);
        let id = EventId::from_u128(42);
        assert_ne!(view.id(id), id);
        assert_eq!(view.id(view.id(id)), id);
        // Another tenant's mask differs: one id, two stored events.
        let globex = principal(Some("globex"), ActorKind::Key);
        assert_ne!(globex.view().id(id), view.id(id));
    }

    #[test]
    fn the_default_tenant_and_auth_off_keep_names_and_ids_as_they_are() {
        let id = EventId::from_u128(7);
        let local = StreamName::new("order-1").unwrap();
        let tenant_stream = StreamName::in_tenant(Some("acme"), &local);
        let default = principal(None, ActorKind::AdminKey);
        assert_eq!((default.view().stream(&local), default.view().id(id)), (local.clone(), id));
        assert!(default.view().owns(&local) && !default.view().owns(&tenant_stream));
        assert_eq!(default.view().scope(), TenantScope::Only(None));
        let open = Principal::open();
        assert!(open.view().owns(&tenant_stream));
        assert_eq!(open.view().scope(), TenantScope::All);
    }
}
