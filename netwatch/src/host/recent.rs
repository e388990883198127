//! A thread's last few answers of a shared, locked cache, kept in front of it.
//!
//! Why: every event written as JSON, recorded, or (in `report`) of an owner asks for its
//! owner's names, and events come in runs of a few owners (a client and a server). The shared
//! caches cost a lock, a hash and a copy per event, enough to slow an unoptimised reader until
//! the ring buffer overflows. An answer kept here is valid while the generation of what it was
//! derived from (bumped at every change of the shared cache) stays the same.

/// How many answers a thread keeps.
pub const ANSWERS: usize = 4;

/// The last [`ANSWERS`] answers of one thread, valid for one generation `G`.
pub struct Recent<K, V, G> {
    generation: G,
    answers: [Option<(K, V)>; ANSWERS],
    next: usize,
}

impl<K, V, G: Default> Default for Recent<K, V, G> {
    fn default() -> Self {
        Recent {
            generation: G::default(),
            answers: std::array::from_fn(|_| None),
            next: 0,
        }
    }
}

impl<K: PartialEq, V: Clone, G: PartialEq + Default> Recent<K, V, G> {
    /// The remembered answer for `key`, if any is still valid in `generation`.
    pub fn get(&mut self, key: &K, generation: G) -> Option<V> {
        if self.generation != generation {
            *self = Recent {
                generation,
                ..Recent::default()
            };
            return None;
        }
        self.answers
            .iter()
            .flatten()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// Remembers `answer` for `key`, in place of the oldest.
    pub fn put(&mut self, key: K, answer: V) {
        self.answers[self.next] = Some((key, answer));
        self.next = (self.next + 1) % ANSWERS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn recent_answers_are_few_and_die_with_their_generation() {
        let mut r: Recent<u32, Option<Arc<str>>, u64> = Recent::default();
        let key = |pid: u32| pid;
        assert_eq!(r.get(&key(1), 0), None);
        r.put(key(1), Some(Arc::from("/a")));
        assert_eq!(r.get(&key(1), 0), Some(Some(Arc::from("/a"))));
        for pid in 2..=ANSWERS as u32 {
            r.put(key(pid), None);
        }
        assert_eq!(r.get(&key(2), 0), Some(None), "a remembered 'none'");
        r.put(key(99), None); // the oldest, pid 1, makes room
        assert_eq!(r.get(&key(1), 0), None);
        assert_eq!(
            r.get(&key(2), 1),
            None,
            "a new generation forgets everything"
        );
        assert_eq!(r.get(&key(99), 1), None);
    }

    #[test]
    fn a_generation_of_two_tables_changes_with_either() {
        let mut r: Recent<u32, &str, (u64, u64)> = Recent::default();
        r.get(&1, (1, 1));
        r.put(1, "web");
        assert_eq!(r.get(&1, (1, 1)), Some("web"));
        assert_eq!(r.get(&1, (1, 2)), None);
        r.put(1, "web");
        assert_eq!(r.get(&1, (2, 2)), None);
    }
}
