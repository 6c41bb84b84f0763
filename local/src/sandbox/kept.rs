//! Collections of the kept state that remember what changed since they were last saved.
//!
//! Why: a sandbox with a state file ([`super::persist`]) must have every change on disk before
//! it answers. Writing all it remembers for each change made every purchase cost the size of
//! everything WeChat ever saw (13× slower after a few thousand orders). So the kept maps and
//! logs say which entries changed, and the writer journals only those.
//!
//! A [`Kept`] map reads like the `BTreeMap` it wraps (`get`, `iter`, `values`, `range`, …),
//! and every way to change it goes through a method here that records the key
//! (conservatively: `get_or_insert_with` and `get_mut` count as a change whether or not the
//! caller writes; `values_mut` counts every entry). Its values are shared behind `Arc`s, so
//! the compaction's copy does not copy them. A [`KeptLog`] only grows, so what is new is what
//! lies past the part already saved.
//! Both serialise as the plain map or list, so a full snapshot reads as it always did.

use serde::de::DeserializeOwned;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Borrow;
use std::collections::btree_map::{self, BTreeMap};
use std::collections::BTreeSet;
use std::ops::RangeBounds;
use std::sync::Arc;

/// A map of the kept state that records which keys changed since [`Kept::take_changes`].
///
/// Each value sits behind an [`Arc`], so a clone (the compaction's copy, taken under the
/// state lock: [`super::persist`]) copies the tree and the keys but shares every value: a
/// refcount, not a deep copy of each order. A change goes through [`Arc::make_mut`], which
/// copies the one value only while a compaction still holds the old one.
#[derive(Clone, Debug)]
pub struct Kept<K, V> {
    map: BTreeMap<K, Arc<V>>,
    /// Keys inserted, removed or borrowed mutably since the last save.
    changed: BTreeSet<K>,
    /// Every entry may have changed (`values_mut`, `clear`): saved whole.
    all: bool,
}

impl<K, V> Default for Kept<K, V> {
    fn default() -> Self {
        Kept {
            map: BTreeMap::new(),
            changed: BTreeSet::new(),
            all: false,
        }
    }
}

/// The entries in key order, values borrowed out of their `Arc`s.
pub struct Iter<'a, K, V>(btree_map::Iter<'a, K, Arc<V>>);

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(k, v)| (k, &**v))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl<K, V> DoubleEndedIterator for Iter<'_, K, V> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(|(k, v)| (k, &**v))
    }
}

impl<'a, K, V> IntoIterator for &'a Kept<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Reads, as on the `BTreeMap` the map used to be.
impl<K, V> Kept<K, V> {
    pub fn iter(&self) -> Iter<'_, K, V> {
        Iter(self.map.iter())
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> {
        self.map.values().map(|v| &**v)
    }

    pub fn keys(&self) -> btree_map::Keys<'_, K, Arc<V>> {
        self.map.keys()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl<K: Ord, V> Kept<K, V> {
    pub fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.map.get(k).map(|v| &**v)
    }

    pub fn contains_key<Q>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.map.contains_key(k)
    }

    pub fn range<Q, R>(&self, range: R) -> impl DoubleEndedIterator<Item = (&K, &V)>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
        R: RangeBounds<Q>,
    {
        self.map.range(range).map(|(k, v)| (k, &**v))
    }
}

impl<K: Ord, V, Q> std::ops::Index<&Q> for Kept<K, V>
where
    K: Borrow<Q>,
    Q: Ord + ?Sized,
{
    type Output = V;
    /// Panics when `k` is absent, as a `BTreeMap`'s index does.
    fn index(&self, k: &Q) -> &V {
        &self.map[k]
    }
}

/// Changes, each recorded.
impl<K: Ord + Clone, V: Clone> Kept<K, V> {
    /// Sets `k` to `v`. The old value is dropped, not returned: returning it would copy it
    /// whenever a compaction still shares it, and no caller wants it.
    pub fn insert(&mut self, k: K, v: V) {
        self.changed.insert(k.clone());
        self.map.insert(k, Arc::new(v));
    }

    /// Counts as a change of `k` (when present), written or not.
    pub fn get_mut<Q>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let key = self.map.get_key_value(k)?.0.clone();
        self.changed.insert(key);
        self.map.get_mut(k).map(Arc::make_mut)
    }

    pub fn remove<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let (key, v) = self.map.remove_entry(k)?;
        self.changed.insert(key);
        Some(Arc::unwrap_or_clone(v))
    }

    /// The value at `k`, inserted by `make` when absent. Counts as a change of `k`, whatever
    /// the caller does with it.
    pub fn get_or_insert_with(&mut self, k: K, make: impl FnOnce() -> V) -> &mut V {
        self.changed.insert(k.clone());
        Arc::make_mut(self.map.entry(k).or_insert_with(|| Arc::new(make())))
    }

    /// Counts as a change of every entry.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.all = true;
        self.map.values_mut().map(Arc::make_mut)
    }

    /// Removes the entries `keep` refuses (each removal a change).
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let changed = &mut self.changed;
        self.map.retain(|k, v| {
            let kept = keep(k, v);
            if !kept {
                changed.insert(k.clone());
            }
            kept
        });
    }
}

/// What the writer of the state file asks of a map.
impl<K: Ord + Clone, V> Kept<K, V> {
    /// What changed since the last call, and forgets it: the entries to write (key and new
    /// value) and the keys removed.
    pub(crate) fn take_changes(&mut self) -> (Vec<(&K, &V)>, Vec<K>) {
        let changed = std::mem::take(&mut self.changed);
        if std::mem::take(&mut self.all) {
            let gone = changed
                .into_iter()
                .filter(|k| !self.map.contains_key(k))
                .collect();
            return (self.iter().collect(), gone);
        }
        let mut set = Vec::new();
        let mut gone = Vec::new();
        for k in changed {
            match self.map.get_key_value(&k) {
                Some((k, v)) => set.push((k, &**v)),
                None => gone.push(k),
            }
        }
        (set, gone)
    }

    /// Whether anything changed since the last save.
    pub(crate) fn is_changed(&self) -> bool {
        self.all || !self.changed.is_empty()
    }

    /// Forgets what changed: the whole map was saved.
    pub(crate) fn mark_saved(&mut self) {
        self.changed.clear();
        self.all = false;
    }

    /// Applies changes read back from a journal (not counted as changes: they are on disk).
    pub(crate) fn apply(&mut self, set: Vec<(K, V)>, gone: Vec<K>) {
        for k in gone {
            self.map.remove(&k);
        }
        self.map
            .extend(set.into_iter().map(|(k, v)| (k, Arc::new(v))));
    }
}

impl<K: Serialize, V: Serialize> Serialize for Kept<K, V> {
    /// The plain map, as a `BTreeMap<K, V>` writes it.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.map.len()))?;
        for (k, v) in &self.map {
            m.serialize_entry(k, &**v)?;
        }
        m.end()
    }
}

impl<'de, K, V> Deserialize<'de> for Kept<K, V>
where
    K: Ord + DeserializeOwned,
    V: DeserializeOwned,
{
    /// Also reads a map written from a `HashMap` (the same JSON object).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map: BTreeMap<K, V> = BTreeMap::deserialize(d)?;
        Ok(Kept {
            map: map.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            ..Kept::default()
        })
    }
}

/// A list of the kept state that only grows (the funds' flows): what is new is what lies past
/// the part already saved.
#[derive(Clone, Debug)]
pub struct KeptLog<T> {
    items: Vec<T>,
    saved: usize,
}

impl<T> Default for KeptLog<T> {
    fn default() -> Self {
        KeptLog {
            items: Vec::new(),
            saved: 0,
        }
    }
}

impl<T> std::ops::Deref for KeptLog<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.items
    }
}

impl<'a, T> IntoIterator for &'a KeptLog<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

impl<T> KeptLog<T> {
    pub fn push(&mut self, item: T) {
        self.items.push(item);
    }

    /// Where the unsaved part starts and the unsaved items; forgets them.
    pub(crate) fn take_new(&mut self) -> (usize, &[T]) {
        let from = std::mem::replace(&mut self.saved, self.items.len());
        (from, &self.items[from..])
    }

    pub(crate) fn is_changed(&self) -> bool {
        self.saved < self.items.len()
    }

    pub(crate) fn mark_saved(&mut self) {
        self.saved = self.items.len();
    }

    /// Appends items read back from a journal, which were written starting at `from`:
    /// `Err` when that is not where this log ends (the journal does not follow the snapshot).
    pub(crate) fn apply(&mut self, from: usize, items: Vec<T>) -> Result<(), String> {
        if from != self.items.len() {
            return Err(format!(
                "it continues a list of {from} entries where there are {}",
                self.items.len()
            ));
        }
        self.items.extend(items);
        self.saved = self.items.len();
        Ok(())
    }
}

impl<T: Serialize> Serialize for KeptLog<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.items.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for KeptLog<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::deserialize(d)?;
        Ok(KeptLog {
            saved: items.len(),
            items,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_the_keys_touched_and_reads_are_not_changes() {
        let mut m: Kept<String, u32> = Kept::default();
        m.insert("a".into(), 1);
        m.insert("b".into(), 2);
        let (set, gone) = m.take_changes();
        assert_eq!(set.len(), 2);
        assert!(gone.is_empty());
        assert!(!m.is_changed());
        let _ = m.get("a");
        assert!(!m.is_changed(), "a read is no change");
        *m.get_mut("a").unwrap() = 3;
        m.remove("b");
        let (set, gone) = m.take_changes();
        assert_eq!(set, vec![(&"a".to_owned(), &3)]);
        assert_eq!(gone, vec!["b".to_owned()]);
        for v in m.values_mut() {
            *v += 1;
        }
        assert_eq!(m.take_changes().0.len(), 1);
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"a":4}"#);
    }

    #[test]
    fn a_copy_keeps_the_values_it_was_taken_with() {
        let mut m: Kept<String, Vec<u32>> = Kept::default();
        m.insert("a".into(), vec![1]);
        m.insert("b".into(), vec![2]);
        let copy = m.clone();
        assert!(
            Arc::ptr_eq(&m.map["a"], &copy.map["a"]),
            "shared, not copied"
        );
        m.get_mut("a").unwrap().push(9);
        *m.get_or_insert_with("c".into(), Vec::new) = vec![3];
        for v in m.values_mut() {
            v.push(0);
        }
        m.remove("b");
        assert_eq!(
            serde_json::to_string(&copy).unwrap(),
            r#"{"a":[1],"b":[2]}"#
        );
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"a":[1,9,0],"c":[3,0]}"#
        );
    }

    #[test]
    fn a_log_gives_what_is_new_once() {
        let mut l: KeptLog<u32> = serde_json::from_str("[1,2]").unwrap();
        assert!(!l.is_changed());
        l.push(3);
        assert_eq!(l.take_new(), (2, &[3][..]));
        assert_eq!(l.take_new(), (3, &[][..]));
        assert!(l.apply(2, vec![9]).is_err());
        l.apply(3, vec![4]).unwrap();
        assert_eq!(&*l, &[1, 2, 3, 4]);
    }
}
