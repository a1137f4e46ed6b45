//! Values shared by everything that loads the same thing, while any of it holds them: a base's
//! serving weights, a tokenizer. The map holds them weakly, so the last holder frees them.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError, Weak};

pub struct Shared<K, V> {
    held: Mutex<HashMap<K, Weak<V>>>,
}

impl<K: Eq + Hash, V> Default for Shared<K, V> {
    fn default() -> Self {
        Shared { held: Mutex::new(HashMap::new()) }
    }
}

impl<K: Eq + Hash, V> Shared<K, V> {
    /// The value shared under `key`, if something still holds it.
    pub fn get(&self, key: &K) -> Option<Arc<V>> {
        // A poisoned map of weak references is still a consistent one.
        self.held.lock().unwrap_or_else(PoisonError::into_inner).get(key).and_then(Weak::upgrade)
    }

    /// Shares `value` under `key`; if another was shared there meanwhile (two loads at once),
    /// that one, so there is still one copy.
    pub fn share(&self, key: K, value: V) -> Arc<V> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.retain(|_, v| v.strong_count() > 0);
        if let Some(shared) = held.get(&key).and_then(Weak::upgrade) {
            return shared;
        }
        let value = Arc::new(value);
        held.insert(key, Arc::downgrade(&value));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_copy_while_held_and_none_after() {
        let shared: Shared<&str, String> = Shared::default();
        assert!(shared.get(&"a").is_none());
        let first = shared.share("a", "one".to_string());
        let second = shared.share("a", "two".to_string());
        assert!(Arc::ptr_eq(&first, &second), "the copy already shared wins");
        assert!(Arc::ptr_eq(&shared.get(&"a").unwrap(), &first));
        drop((first, second));
        assert!(shared.get(&"a").is_none(), "freed with its last holder");
        assert_eq!(*shared.share("a", "three".to_string()), "three");
    }
}
