//! The exact LRU list of evictable objects.
//!
//! Intrusive and doubly linked through the entries' `lru_prev` / `lru_next` slot indices, so
//! moving an object to the head is O(1) and costs no allocation, and eviction takes exactly
//! the least recently used evictable object (no sampling, unlike Redis' approximated LRU):
//! session stores are sized so eviction is rare, and when it happens it should hit the
//! sessions that are truly idle. Non-evictable objects are never on the list, so eviction
//! never walks past them.

use slab::Slab;

use super::entry::{Entry, NIL};

#[derive(Debug)]
pub(super) struct Lru {
    /// Most recently used, or `NIL` when empty.
    pub head: u32,
    /// Least recently used: the next to evict.
    pub tail: u32,
    pub len: u32,
}

impl Lru {
    pub const fn new() -> Self {
        Lru {
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    /// Puts `slot` (not on the list) at the head.
    #[inline]
    pub fn push_head(&mut self, slab: &mut Slab<Entry>, slot: u32) {
        let old_head = self.head;
        {
            let e = &mut slab[slot as usize];
            e.lru_prev = NIL;
            e.lru_next = old_head;
        }
        if old_head == NIL {
            debug_assert_eq!(self.tail, NIL);
            self.tail = slot;
        } else {
            debug_assert_eq!(slab[old_head as usize].lru_prev, NIL);
            slab[old_head as usize].lru_prev = slot;
        }
        self.head = slot;
        self.len += 1;
    }

    /// Takes `slot` (on the list) off it.
    #[inline]
    pub fn unlink(&mut self, slab: &mut Slab<Entry>, slot: u32) {
        let (prev, next) = {
            let e = &mut slab[slot as usize];
            debug_assert!(e.evictable, "only evictable objects are on the LRU list");
            let links = (e.lru_prev, e.lru_next);
            e.lru_prev = NIL;
            e.lru_next = NIL;
            links
        };
        if prev == NIL {
            debug_assert_eq!(self.head, slot);
            self.head = next;
        } else {
            slab[prev as usize].lru_next = next;
        }
        if next == NIL {
            debug_assert_eq!(self.tail, slot);
            self.tail = prev;
        } else {
            slab[next as usize].lru_prev = prev;
        }
        self.len -= 1;
    }

    /// Marks `slot` (on the list) most recently used.
    #[inline]
    pub fn touch(&mut self, slab: &mut Slab<Entry>, slot: u32) {
        if self.head != slot {
            self.unlink(slab, slot);
            self.push_head(slab, slot);
        }
    }

    /// Walks the list from head to tail checking every link both ways; returns the slots in
    /// order. For tests and invariant checks: O(n).
    #[cfg(test)]
    pub fn check(&self, slab: &Slab<Entry>) -> Vec<u32> {
        let mut order = Vec::with_capacity(self.len as usize);
        let mut prev = NIL;
        let mut cur = self.head;
        while cur != NIL {
            let e = &slab[cur as usize];
            assert!(
                e.evictable,
                "slot {cur} is on the LRU list but not evictable"
            );
            assert_eq!(e.lru_prev, prev, "slot {cur} has a wrong prev link");
            order.push(cur);
            assert!(
                order.len() <= self.len as usize,
                "LRU list longer than its count (a cycle?)"
            );
            prev = cur;
            cur = e.lru_next;
        }
        assert_eq!(self.tail, prev, "LRU tail is not the last slot on the list");
        assert_eq!(
            order.len(),
            self.len as usize,
            "LRU count disagrees with the list"
        );
        order
    }
}
