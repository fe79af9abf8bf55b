//! The exits by targeting: every subset of an exit's (country, state, city) tags is a key,
//! so any targeting resolves to its candidate list with one lookup.

use crate::config::Exit;
use ahash::AHashMap;

/// Exits by tag combination: for every exit, each subset of its (country, state, city)
/// tags is a key, so any targeting resolves with one lookup.
#[derive(Debug, Default)]
pub struct ExitIndex {
    lists: AHashMap<TagKey, usize>,
    members: Vec<Vec<usize>>,
    /// Cities with exits, per (network, country, state): for `city-ran`.
    pub(super) cities: AHashMap<(usize, String, String), Vec<String>>,
}

pub(super) type TagKey = (usize, Option<String>, Option<String>, Option<String>);

impl ExitIndex {
    pub fn build(exits: &[Exit]) -> ExitIndex {
        let mut ix = ExitIndex::default();
        for (i, e) in exits.iter().enumerate() {
            for mask in 0u8..8 {
                let pick = |bit: u8, v: &Option<String>| -> Option<Option<String>> {
                    if mask & bit == 0 {
                        Some(None)
                    } else {
                        v.as_ref().map(|s| Some(s.clone()))
                    }
                };
                let (Some(c), Some(s), Some(ci)) =
                    (pick(1, &e.country), pick(2, &e.state), pick(4, &e.city))
                else {
                    continue;
                };
                let key = (e.network, c, s, ci);
                let next = ix.members.len();
                let id = *ix.lists.entry(key).or_insert(next);
                if id == next {
                    ix.members.push(Vec::new());
                }
                ix.members[id].push(i);
            }
            if let (Some(c), Some(s), Some(ci)) = (&e.country, &e.state, &e.city) {
                let list = ix
                    .cities
                    .entry((e.network, c.clone(), s.clone()))
                    .or_default();
                if !list.contains(ci) {
                    list.push(ci.clone());
                }
            }
        }
        ix
    }

    pub(super) fn list(&self, key: &TagKey) -> Option<usize> {
        self.lists.get(key).copied()
    }

    /// Exits of a list (by id from [`super::Route::list`]).
    pub fn members(&self, list: usize) -> &[usize] {
        self.members.get(list).map_or(&[], |v| v.as_slice())
    }

    pub fn lists(&self) -> usize {
        self.members.len()
    }
}
