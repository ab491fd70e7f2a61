//! The KV cache of many sequences at once: fixed-size blocks from one pool under a byte
//! budget, and a prefix cache over the blocks that finished sequences leave behind.
//!
//! Why blocks: sequences of a batch grow at different rates and end at different times; with
//! one contiguous buffer per sequence the budget would have to hold every sequence's worst
//! case at full context. A block holds [`BLOCK`] positions of every layer, so a sequence costs
//! what it uses, rounded up to one block.
//!
//! Why the prefix cache is exact: a cached block is keyed by its parent block and the tokens
//! it holds, so a hit means the same tokens at the same positions after the same prefix; its
//! keys and values are bit for bit what a prefill would write. Only full blocks are shared,
//! and a sequence only writes past the blocks it shares, so no block is ever copied on write.
//! Eviction takes the least recently used block that no sequence holds and no cached block
//! continues (a leaf): evicting an inner block first would strand its descendants.

use std::collections::HashMap;

use crate::InferError;

/// Positions per block.
pub const BLOCK: usize = 16;

/// Which block of the pool.
pub type BlockId = usize;

struct Block {
    /// `[K or V][layer][position in block][kv dim]`, allocated on first use and kept.
    data: Vec<f32>,
    /// Sequences holding it.
    refs: u32,
    /// Its key in the prefix cache, once a finished sequence left it there.
    key: Option<Key>,
    /// Cached blocks whose parent it is; only a block without any is evicted.
    children: u32,
    last_used: u64,
}

/// A full block's identity: the block before it (none for the first) and its tokens.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    parent: Option<BlockId>,
    tokens: [u32; BLOCK],
}

/// What the pool holds now, for `/health` and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub budget_bytes: u64,
    pub block_bytes: u64,
    /// Blocks the pool may hold.
    pub capacity_blocks: usize,
    /// Blocks held or promised to running sequences.
    pub committed_blocks: usize,
    /// Blocks kept for prefix reuse that no sequence holds (evictable).
    pub cached_blocks: usize,
    pub prefix_hits: u64,
    pub evictions: u64,
}

/// The pool of one model's KV blocks.
pub struct KvPool {
    layers: usize,
    kvd: usize,
    blocks: Vec<Block>,
    free: Vec<BlockId>,
    capacity: usize,
    /// Blocks held by sequences plus blocks promised to them and not yet taken.
    committed: usize,
    cache: HashMap<Key, BlockId>,
    clock: u64,
    hits: u64,
    evictions: u64,
    budget_bytes: u64,
}

/// One sequence's place in the pool: its block table and the tokens fed so far.
#[derive(Default)]
pub struct Sequence {
    blocks: Vec<BlockId>,
    tokens: Vec<u32>,
    /// Blocks promised at admission and not taken yet.
    reserved: usize,
    /// The leading blocks that came from the prefix cache.
    shared: usize,
}

impl Sequence {
    /// Positions in the cache.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Prompt tokens whose keys and values came from the prefix cache.
    pub fn cached_tokens(&self) -> usize {
        self.shared * BLOCK
    }
}

impl KvPool {
    /// A pool of at most `budget_bytes` for a model of `layers` layers whose keys (and
    /// values) are `kvd` floats per position.
    pub fn new(layers: usize, kvd: usize, budget_bytes: u64) -> Self {
        let block_bytes = Self::block_bytes_for(layers, kvd);
        Self {
            layers,
            kvd,
            blocks: Vec::new(),
            free: Vec::new(),
            capacity: (budget_bytes / block_bytes) as usize,
            committed: 0,
            cache: HashMap::new(),
            clock: 0,
            hits: 0,
            evictions: 0,
            budget_bytes,
        }
    }

    /// Bytes of one block of a model with these dimensions.
    pub fn block_bytes_for(layers: usize, kvd: usize) -> u64 {
        (2 * layers * BLOCK * kvd * std::mem::size_of::<f32>()) as u64
    }

    /// Blocks that `positions` positions occupy.
    pub fn blocks_for(positions: usize) -> usize {
        positions.div_ceil(BLOCK)
    }

    pub fn usage(&self) -> Usage {
        Usage {
            budget_bytes: self.budget_bytes,
            block_bytes: Self::block_bytes_for(self.layers, self.kvd),
            capacity_blocks: self.capacity,
            committed_blocks: self.committed,
            cached_blocks: self
                .blocks
                .iter()
                .filter(|b| b.refs == 0 && b.key.is_some())
                .count(),
            prefix_hits: self.hits,
            evictions: self.evictions,
        }
    }

    /// Whether a sequence of `positions` could ever fit, with the pool otherwise empty.
    pub fn could_hold(&self, positions: usize) -> bool {
        Self::blocks_for(positions) <= self.capacity
    }

    /// Starts a sequence for `prompt` that may grow to `positions` positions, reusing the
    /// longest cached prefix of whole blocks (leaving at least the prompt's last token to be
    /// fed, whose logits the caller needs). `None` when the pool cannot promise the blocks
    /// now; the caller waits for a sequence to finish and asks again.
    pub fn admit(&mut self, prompt: &[u32], positions: usize) -> Option<Sequence> {
        let mut shared = Vec::new();
        let mut parent = None;
        for chunk in prompt[..prompt.len().saturating_sub(1)].chunks_exact(BLOCK) {
            let key = Key {
                parent,
                tokens: chunk.try_into().expect("a whole block"),
            };
            match self.cache.get(&key) {
                Some(&id) => {
                    shared.push(id);
                    parent = Some(id);
                }
                None => break,
            }
        }
        let total = Self::blocks_for(positions.max(prompt.len()));
        let idle_shared = shared.iter().filter(|&&b| self.blocks[b].refs == 0).count();
        let fresh = total - shared.len();
        if self.committed + idle_shared + fresh > self.capacity {
            return None;
        }
        self.clock += 1;
        // The last block of the chain gets the oldest stamp, so among blocks used together
        // the leaf goes first.
        for (i, &b) in shared.iter().rev().enumerate() {
            let block = &mut self.blocks[b];
            block.refs += 1;
            block.last_used = self.clock + i as u64;
        }
        self.clock += shared.len() as u64;
        self.committed += idle_shared + fresh;
        if !shared.is_empty() {
            self.hits += 1;
        }
        let n = shared.len();
        Some(Sequence {
            tokens: prompt[..n * BLOCK].to_vec(),
            blocks: shared,
            reserved: fresh,
            shared: n,
        })
    }

    /// Makes room for `n` more positions of `seq` and records their tokens; returns the
    /// first new position. The blocks were promised at admission, so this fails only when a
    /// sequence outgrows what it asked for.
    pub fn extend(&mut self, seq: &mut Sequence, tokens: &[u32]) -> Result<usize, InferError> {
        let pos = seq.tokens.len();
        let need = Self::blocks_for(pos + tokens.len()).saturating_sub(seq.blocks.len());
        if need > seq.reserved {
            return Err(InferError::Input(format!(
                "the sequence grew past the {} positions it was admitted for",
                (seq.blocks.len() + seq.reserved) * BLOCK
            )));
        }
        for _ in 0..need {
            let id = self.take();
            seq.blocks.push(id);
            seq.reserved -= 1;
        }
        seq.tokens.extend_from_slice(tokens);
        Ok(pos)
    }

    /// A block for a sequence: a free one, a new one, or the least recently used idle leaf.
    fn take(&mut self) -> BlockId {
        let id = if let Some(id) = self.free.pop() {
            id
        } else if self.blocks.len() < self.capacity {
            self.blocks.push(Block {
                data: vec![0.0; 2 * self.layers * BLOCK * self.kvd],
                refs: 0,
                key: None,
                children: 0,
                last_used: 0,
            });
            self.blocks.len() - 1
        } else {
            // Admission promised no more than the capacity less the held blocks, so an idle
            // cached block exists; an idle block's descendants are idle too, so a leaf does.
            let id = (0..self.blocks.len())
                .filter(|&b| {
                    let b = &self.blocks[b];
                    b.refs == 0 && b.children == 0 && b.key.is_some()
                })
                .min_by_key(|&b| self.blocks[b].last_used)
                .expect("admission leaves an evictable block");
            self.evict(id);
            id
        };
        self.blocks[id].refs = 1;
        id
    }

    fn evict(&mut self, id: BlockId) {
        if let Some(key) = self.blocks[id].key.take() {
            self.cache.remove(&key);
            if let Some(p) = key.parent {
                self.blocks[p].children -= 1;
            }
            self.evictions += 1;
        }
    }

    /// Ends a sequence: its whole blocks stay behind in the prefix cache (unless the same
    /// content is cached already), the rest return to the pool, and its promise is released.
    pub fn release(&mut self, seq: Sequence) {
        self.committed -= seq.reserved;
        let full = seq.tokens.len() / BLOCK;
        let mut parent = None;
        self.clock += 1;
        let stamp = self.clock + seq.blocks.len() as u64;
        for (i, &id) in seq.blocks.iter().enumerate() {
            let block = &mut self.blocks[id];
            block.refs -= 1;
            block.last_used = stamp - i as u64;
            if block.refs == 0 {
                self.committed -= 1;
            }
            if i >= full {
                if block.refs == 0 && block.key.is_none() {
                    self.free.push(id);
                }
                continue;
            }
            if block.key.is_some() {
                parent = Some(id);
                continue;
            }
            let key = Key {
                parent,
                tokens: seq.tokens[i * BLOCK..(i + 1) * BLOCK]
                    .try_into()
                    .expect("a whole block"),
            };
            match self.cache.get(&key) {
                // The same tokens after the same prefix are cached already (another sequence
                // got there first): the copy is not needed.
                Some(&existing) => {
                    self.free.push(id);
                    parent = Some(existing);
                }
                None => {
                    self.cache.insert(key.clone(), id);
                    if let Some(p) = key.parent {
                        self.blocks[p].children += 1;
                    }
                    self.blocks[id].key = Some(key);
                    parent = Some(id);
                }
            }
        }
        self.clock = stamp;
    }

    /// Where layer `layer`'s key (`value` false) or value of position `pos` lives.
    #[inline]
    fn offset(&self, layer: usize, pos: usize, value: bool) -> usize {
        ((usize::from(value) * self.layers + layer) * BLOCK + pos % BLOCK) * self.kvd
    }

    /// Writes the keys and values of positions `pos..pos + n` of `layer`.
    pub(crate) fn write(
        &mut self,
        seq: &Sequence,
        layer: usize,
        pos: usize,
        keys: &[f32],
        values: &[f32],
    ) {
        let kvd = self.kvd;
        for (i, (k, v)) in keys
            .chunks_exact(kvd)
            .zip(values.chunks_exact(kvd))
            .enumerate()
        {
            let p = pos + i;
            let (ko, vo) = (self.offset(layer, p, false), self.offset(layer, p, true));
            let data = &mut self.blocks[seq.blocks[p / BLOCK]].data;
            data[ko..ko + kvd].copy_from_slice(k);
            data[vo..vo + kvd].copy_from_slice(v);
        }
    }

    /// Layer `layer`'s keys and values in block `b` of `seq`: [`BLOCK`] rows of `kvd` floats
    /// each, of which the positions the sequence has reached are meaningful.
    #[inline]
    pub(crate) fn block(&self, seq: &Sequence, layer: usize, b: usize) -> (&[f32], &[f32]) {
        let data = &self.blocks[seq.blocks[b]].data;
        let (ko, vo) = (self.offset(layer, 0, false), self.offset(layer, 0, true));
        let n = BLOCK * self.kvd;
        (&data[ko..ko + n], &data[vo..vo + n])
    }

    /// Whether `seq` may grow by `n` positions within what it was admitted for.
    pub fn can_extend(&self, seq: &Sequence, n: usize) -> bool {
        Self::blocks_for(seq.len() + n).saturating_sub(seq.blocks.len()) <= seq.reserved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|t| t * 7 + salt).collect()
    }

    #[test]
    fn a_finished_prefix_is_reused_and_a_different_one_is_not() {
        let mut pool = KvPool::new(2, 4, 64 * KvPool::block_bytes_for(2, 4));
        let prompt = tokens(40, 1);
        let mut seq = pool.admit(&prompt, 50).unwrap();
        assert_eq!(seq.cached_tokens(), 0);
        pool.extend(&mut seq, &prompt).unwrap();
        pool.release(seq);
        assert_eq!(pool.usage().committed_blocks, 0);
        assert_eq!(
            pool.usage().cached_blocks,
            2,
            "two whole blocks of 40 tokens"
        );

        let mut longer = prompt.clone();
        longer.extend(tokens(10, 99));
        let seq = pool.admit(&longer, 60).unwrap();
        assert_eq!(seq.cached_tokens(), 32);
        assert_eq!(seq.len(), 32);
        pool.release(seq);

        let mut other = prompt.clone();
        other[3] += 1;
        let seq = pool.admit(&other, 60).unwrap();
        assert_eq!(
            seq.cached_tokens(),
            0,
            "a different first block shares nothing"
        );
        pool.release(seq);
        assert_eq!(pool.usage().prefix_hits, 1);
    }

    #[test]
    fn the_last_prompt_token_is_always_fed() {
        let mut pool = KvPool::new(1, 2, 64 * KvPool::block_bytes_for(1, 2));
        let prompt = tokens(32, 3);
        let mut seq = pool.admit(&prompt, 33).unwrap();
        pool.extend(&mut seq, &prompt).unwrap();
        pool.release(seq);
        let seq = pool.admit(&prompt, 33).unwrap();
        assert_eq!(
            seq.cached_tokens(),
            16,
            "the second block holds the last token"
        );
    }

    #[test]
    fn admission_waits_for_room_and_a_release_makes_it() {
        let mut pool = KvPool::new(1, 2, 4 * KvPool::block_bytes_for(1, 2));
        let a = pool.admit(&tokens(10, 0), 48).unwrap();
        assert!(pool.admit(&tokens(10, 1), 32).is_none(), "3 + 2 blocks > 4");
        assert!(!pool.could_hold(80));
        pool.release(a);
        assert!(pool.admit(&tokens(10, 1), 32).is_some());
    }

    #[test]
    fn eviction_takes_the_least_recently_used_leaf_first() {
        let block = KvPool::block_bytes_for(1, 2);
        let mut pool = KvPool::new(1, 2, 3 * block);
        let old = tokens(33, 5);
        let mut seq = pool.admit(&old, 33).unwrap();
        pool.extend(&mut seq, &old).unwrap();
        pool.release(seq);
        assert_eq!(pool.usage().cached_blocks, 2);
        // Needs all three blocks: the cached ones go, the leaf (second) first.
        let new = tokens(40, 9);
        let mut seq = pool.admit(&new, 48).unwrap();
        pool.extend(&mut seq, &new[..20]).unwrap();
        assert_eq!(pool.usage().evictions, 1);
        assert_eq!(
            pool.usage().cached_blocks,
            1,
            "the first block is still cached"
        );
        pool.extend(&mut seq, &new[20..]).unwrap();
        assert_eq!(pool.usage().evictions, 2);
        assert!(
            pool.extend(&mut seq, &tokens(9, 0)).is_err(),
            "past its promise"
        );
        pool.release(seq);
    }

    #[test]
    fn positions_are_written_and_read_back_across_blocks() {
        let mut pool = KvPool::new(2, 3, 8 * KvPool::block_bytes_for(2, 3));
        let prompt = tokens(20, 0);
        let mut seq = pool.admit(&prompt, 20).unwrap();
        let pos = pool.extend(&mut seq, &prompt).unwrap();
        let keys: Vec<f32> = (0..60).map(|v| v as f32).collect();
        let values: Vec<f32> = (0..60).map(|v| -(v as f32)).collect();
        pool.write(&seq, 1, pos, &keys, &values);
        let (k, v) = pool.block(&seq, 1, 1);
        assert_eq!(
            &k[3..6],
            &keys[51..54],
            "position 17 is the second block's second row"
        );
        assert_eq!(&v[3..6], &values[51..54]);
        pool.release(seq);
    }
}
