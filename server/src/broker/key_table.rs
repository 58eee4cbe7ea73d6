//! The fairness keys of one queue and their state: found by name when a
//! message arrives, and by id from the DRR rotation and from leases.
//!
//! An id is a slot in a vector with the slot's generation. Among many keys a
//! lookup by name is three cold cache lines (the name, to hash it; the
//! map's control bytes; the entry), and the scheduler made two per message
//! besides the one at its arrival: at its key's turn and at the end of its
//! lease. By id it is the entry alone.

use std::ops::Index;
use std::sync::Arc;

use crate::fast_map::FastMap;

/// A key's slot and the slot's generation: an id outliving its key (never
/// expected: the rotation and leases hold only keys with messages) reads
/// as gone instead of as whichever key took the slot next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyId {
    slot: u32,
    generation: u32,
}

struct Slot<V> {
    generation: u32,
    entry: Option<(Arc<str>, V)>,
}

pub struct KeyTable<V> {
    ids: FastMap<Arc<str>, u32>,
    slots: Vec<Slot<V>>,
    free: Vec<u32>,
}

impl<V> Default for KeyTable<V> {
    fn default() -> Self {
        KeyTable { ids: FastMap::default(), slots: Vec::new(), free: Vec::new() }
    }
}

impl<V: Default> KeyTable<V> {
    /// The key named `name`, added with the default state if it is new.
    /// Returns its id, its interned name and its state.
    pub fn entry(&mut self, name: &Arc<str>) -> (KeyId, &Arc<str>, &mut V) {
        let slot = match self.ids.get(&**name) {
            Some(&slot) => slot,
            None => {
                let slot = match self.free.pop() {
                    Some(slot) => slot,
                    None => {
                        self.slots.push(Slot { generation: 0, entry: None });
                        (self.slots.len() - 1) as u32
                    }
                };
                self.slots[slot as usize].entry = Some((Arc::clone(name), V::default()));
                self.ids.insert(Arc::clone(name), slot);
                slot
            }
        };
        let Slot { generation, entry } = &mut self.slots[slot as usize];
        let (name, state) = entry.as_mut().expect("a named slot is occupied");
        (KeyId { slot, generation: *generation }, name, state)
    }
}

impl<V> KeyTable<V> {
    pub fn id_of(&self, name: &str) -> Option<KeyId> {
        let slot = *self.ids.get(name)?;
        Some(KeyId { slot, generation: self.slots[slot as usize].generation })
    }

    /// The name and state of the key `id`, if it is still there.
    pub fn by_id(&self, id: KeyId) -> Option<(&Arc<str>, &V)> {
        let slot = self.slots.get(id.slot as usize).filter(|s| s.generation == id.generation)?;
        slot.entry.as_ref().map(|(name, state)| (name, state))
    }

    pub fn by_id_mut(&mut self, id: KeyId) -> Option<(&Arc<str>, &mut V)> {
        let slot = self.slots.get_mut(id.slot as usize).filter(|s| s.generation == id.generation)?;
        slot.entry.as_mut().map(|(name, state)| (&*name, state))
    }

    pub fn get(&self, name: &str) -> Option<&V> {
        self.get_key_value(name).map(|(_, state)| state)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut V> {
        let id = self.id_of(name)?;
        self.by_id_mut(id).map(|(_, state)| state)
    }

    /// The interned name and the state of the key `name`.
    pub fn get_key_value(&self, name: &str) -> Option<(&Arc<str>, &V)> {
        self.by_id(self.id_of(name)?)
    }

    /// Removes the key `id`; its slot's next key gets a new generation.
    pub fn remove(&mut self, id: KeyId) -> Option<(Arc<str>, V)> {
        let slot = self.slots.get_mut(id.slot as usize).filter(|s| s.generation == id.generation)?;
        let (name, state) = slot.entry.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.ids.remove(&name);
        self.free.push(id.slot);
        Some((name, state))
    }

    /// Every key: its id, name and state.
    pub fn iter(&self) -> impl Iterator<Item = (KeyId, &Arc<str>, &V)> + '_ {
        self.slots.iter().enumerate().filter_map(|(slot, s)| {
            let (name, state) = s.entry.as_ref()?;
            Some((KeyId { slot: slot as u32, generation: s.generation }, name, state))
        })
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (KeyId, &Arc<str>, &mut V)> + '_ {
        self.slots.iter_mut().enumerate().filter_map(|(slot, s)| {
            let generation = s.generation;
            let (name, state) = s.entry.as_mut()?;
            Some((KeyId { slot: slot as u32, generation }, &*name, state))
        })
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, _, state)| state)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

impl<V> Index<&str> for KeyTable<V> {
    type Output = V;

    fn index(&self, name: &str) -> &V {
        self.get(name).expect("a key of the table")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_name_and_by_id() {
        let mut table: KeyTable<u32> = KeyTable::default();
        let a: Arc<str> = Arc::from("a");
        let (id, name, state) = table.entry(&a);
        assert!(Arc::ptr_eq(name, &a), "the name is interned as given");
        *state = 7;
        let (again, _, state) = table.entry(&Arc::from("a"));
        assert_eq!((again, *state), (id, 7), "the same key, not a new one");
        assert_eq!(table.id_of("a"), Some(id));
        assert_eq!(table.by_id(id).map(|(n, s)| (&**n, *s)), Some(("a", 7)));
        assert_eq!(table["a"], 7);
        assert_eq!(table.len(), 1);
        assert_eq!(table.get("b"), None);
    }

    #[test]
    fn a_removed_keys_id_does_not_reach_the_key_that_takes_its_slot() {
        let mut table: KeyTable<u32> = KeyTable::default();
        let (a, _, _) = table.entry(&Arc::from("a"));
        assert_eq!(table.remove(a).map(|(n, _)| n), Some(Arc::from("a")));
        assert!(table.is_empty() && table.get("a").is_none());
        let (b, _, state) = table.entry(&Arc::from("b"));
        *state = 2;
        assert_eq!(b.slot, a.slot, "the slot is reused");
        assert_eq!(table.by_id(a), None);
        assert!(table.remove(a).is_none());
        assert_eq!(table.by_id(b).map(|(n, s)| (&**n, *s)), Some(("b", 2)));
        let names: Vec<&str> = table.iter().map(|(_, n, _)| &**n).collect();
        assert_eq!(names, vec!["b"]);
    }
}
