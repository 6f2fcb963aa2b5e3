//! The announcing node of each Service, visible in `kubectl`: the
//! annotation [`ANNOTATION`] on the Service names the node that answers ARP
//! for its (first) address — MetalLB's most asked L2 question, answered
//! where operators look instead of in an Event that ages out.
//!
//! Every agent computes the same owners ([`super::election::owners`]), so
//! the writer is decided without coordination: the owner writes its name
//! when the annotation says anything else; when nobody may announce the
//! address, the node the annotation names removes it (if alive; a dead one
//! is replaced by the next owner's write). Writes therefore happen only
//! when ownership changes, never on a resync.
//!
//! A Service with several addresses shows the announcer of the first one
//! (`status.loadBalancer.ingress[0]`); each address has its own owner.

/// The annotation naming the announcing node.
pub const ANNOTATION: &str = "onehop.io/announcing-node";

/// What this node should do about one Service's annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Write this node's name.
    Set(String),
    /// Remove the annotation.
    Remove,
}

/// The change `me` makes, given what the annotation says now and which
/// node owns the Service's first address (`None`: nobody announces it).
pub fn change(me: &str, current: Option<&str>, owner: Option<&str>) -> Option<Change> {
    match owner {
        Some(o) if o == me && current != Some(me) => Some(Change::Set(me.to_owned())),
        None if current == Some(me) => Some(Change::Remove),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_writes_and_only_when_it_changes() {
        let set = |n: &str| Some(Change::Set(n.to_owned()));
        // The owner claims a Service without the annotation, or naming another node.
        assert_eq!(change("a", None, Some("a")), set("a"));
        assert_eq!(change("a", Some("b"), Some("a")), set("a"));
        // Already right: nothing (a resync writes nothing).
        assert_eq!(change("a", Some("a"), Some("a")), None);
        // Another node owns it: that node writes, not this one.
        assert_eq!(change("a", Some("a"), Some("b")), None);
        assert_eq!(change("a", None, Some("b")), None);
        // Nobody announces: the node named removes its name; others leave it.
        assert_eq!(change("a", Some("a"), None), Some(Change::Remove));
        assert_eq!(change("a", Some("b"), None), None);
        assert_eq!(change("a", None, None), None);
    }

    #[test]
    fn exactly_one_node_acts_on_any_ownership_change() {
        let nodes = ["a", "b", "c"];
        for current in [None, Some("a"), Some("b"), Some("c")] {
            for owner in [None, Some("a"), Some("b"), Some("c")] {
                let acting: Vec<_> = nodes
                    .iter()
                    .filter_map(|me| change(me, current, owner).map(|c| (*me, c)))
                    .collect();
                let want = usize::from(current != owner);
                assert_eq!(acting.len(), want, "{current:?} -> {owner:?}: {acting:?}");
            }
        }
    }
}
