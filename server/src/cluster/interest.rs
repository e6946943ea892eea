//! Other nodes' tick interest as this node knows it: channel → the nodes with subscribers on it. Kept up to date by
//! the control channel's messages, and read afresh from Redis after the control channel may have missed some (a
//! reload). A reload's snapshot is older than the messages that arrive while it is read, so those are kept in a
//! journal and applied again over the snapshot: a node's `+` during a reload was overwritten by the snapshot that
//! predates it, and its subscribers got no relayed ticks until the next reload.

use std::collections::{HashMap, HashSet};

/// One control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    /// `node` has (or no longer has) subscribers on `channel`.
    Interest { node: String, channel: String, interested: bool },
    /// `node` is gone: none of its interest is left.
    Dead { node: String },
}

/// Channel → other nodes with subscribers on it, and the journal of a reload under way.
#[derive(Debug, Default)]
pub(super) struct RemoteInterest {
    channels: HashMap<String, HashSet<String>>,
    /// `Some` while a reload reads Redis: the changes applied since it began.
    journal: Option<Vec<Change>>,
}

impl RemoteInterest {
    /// Applies a control message (and notes it for the reload under way, if any).
    pub(super) fn apply(&mut self, change: Change) {
        self.apply_now(&change);
        if let Some(journal) = &mut self.journal {
            journal.push(change);
        }
    }

    fn apply_now(&mut self, change: &Change) {
        match change {
            Change::Interest { node, channel, interested: true } => {
                self.channels.entry(channel.clone()).or_default().insert(node.clone());
            }
            Change::Interest { node, channel, interested: false } => {
                if let Some(nodes) = self.channels.get_mut(channel) {
                    nodes.remove(node);
                    if nodes.is_empty() {
                        self.channels.remove(channel);
                    }
                }
            }
            Change::Dead { node } => self.channels.retain(|_, nodes| {
                nodes.remove(node);
                !nodes.is_empty()
            }),
        }
    }

    /// A reload begins reading Redis (one at a time: the caller serializes them).
    pub(super) fn begin_reload(&mut self) {
        self.journal = Some(Vec::new());
    }

    /// The reload's snapshot replaces what was known, with every change since it began applied again over it
    /// (in order: a `+` then a `-` of one channel ends without it).
    pub(super) fn finish_reload(&mut self, snapshot: HashMap<String, HashSet<String>>) {
        self.channels = snapshot;
        for change in self.journal.take().unwrap_or_default() {
            self.apply_now(&change);
        }
    }

    /// A reload that could not read Redis: what was known stays, changes included.
    pub(super) fn abandon_reload(&mut self) {
        self.journal = None;
    }

    /// The channels `node` is known to have subscribers on.
    pub(super) fn of_node(&self, node: &str) -> Vec<String> {
        self.channels.iter().filter(|(_, nodes)| nodes.contains(node)).map(|(channel, _)| channel.clone()).collect()
    }

    /// Whether another node has subscribers on `channel`.
    pub(super) fn contains(&self, channel: &str) -> bool {
        self.channels.contains_key(channel)
    }

    /// Whether any other node has any interest.
    pub(super) fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interest(node: &str, channel: &str, interested: bool) -> Change {
        Change::Interest { node: node.into(), channel: channel.into(), interested }
    }

    fn snapshot(entries: &[(&str, &str)]) -> HashMap<String, HashSet<String>> {
        let mut map: HashMap<String, HashSet<String>> = HashMap::new();
        for (channel, node) in entries {
            map.entry(channel.to_string()).or_default().insert(node.to_string());
        }
        map
    }

    #[test]
    fn changes_during_a_reload_survive_its_older_snapshot() {
        let mut known = RemoteInterest::default();
        known.apply(interest("b", "prices", true));
        known.begin_reload();
        // While the snapshot is read: c subscribes to news, b leaves prices, d subscribes and leaves, e dies.
        known.apply(interest("c", "news", true));
        known.apply(interest("b", "prices", false));
        known.apply(interest("d", "scores", true));
        known.apply(interest("d", "scores", false));
        known.apply(Change::Dead { node: "e".into() });
        // The snapshot was read before all of that.
        known.finish_reload(snapshot(&[("prices", "b"), ("weather", "e"), ("weather", "f")]));
        assert!(known.contains("news"), "the + during the reload is kept");
        assert!(!known.contains("prices"), "the - during the reload is kept");
        assert!(!known.contains("scores"));
        assert_eq!(known.of_node("e"), Vec::<String>::new(), "the death during the reload is kept");
        assert_eq!(known.of_node("f"), ["weather"]);
        // After the reload, changes apply directly and the journal is gone.
        known.apply(interest("c", "news", false));
        known.finish_reload(snapshot(&[]));
        assert!(known.is_empty());
    }

    #[test]
    fn an_abandoned_reload_keeps_what_was_known() {
        let mut known = RemoteInterest::default();
        known.apply(interest("b", "prices", true));
        known.begin_reload();
        known.apply(interest("c", "news", true));
        known.abandon_reload();
        assert!(known.contains("prices") && known.contains("news"));
        known.finish_reload(snapshot(&[("x", "y")]));
        assert_eq!(known.of_node("y"), ["x"], "no journal left to replay");
        assert!(!known.contains("news"));
    }
}
