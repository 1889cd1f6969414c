//! The order in which dead valid paths are sent to store-db, and how they are cut into batches.
//!
//! store-db refuses a path while something that keeps it alive (an incoming edge of
//! [`Graph::incoming`]) is still valid outside the batch. So every path must come after
//! everything that keeps it alive, or in the same batch: a topological order of the incoming
//! edges, whose cycles (outputs that refer to each other; a derivation and its output when
//! both keep rules are on) are strongly connected components that no batch boundary may cut.
//! Tarjan's algorithm, followed along incoming edges, emits each component after every
//! component it can reach, i.e. keepers first; starting it from the entries in a shuffled
//! order keeps the C++ collector's randomness (which matters with `--max-freed`). Batches are
//! runs of whole components ([`next_batch`]).

use guix_ipc::gc::KeepRules;

use crate::graph::Graph;

/// Strongly connected components of the subgraph of `member` nodes, over incoming edges,
/// reached from `starts` in that order; each component after those that keep it alive.
pub fn components(g: &Graph, keep: KeepRules, starts: &[u32], member: &dyn Fn(u32) -> bool) -> Vec<Vec<u32>> {
    let mut t = Tarjan {
        g,
        keep,
        member,
        index: vec![UNSEEN; g.len()],
        low: vec![0; g.len()],
        on_stack: vec![false; g.len()],
        stack: Vec::new(),
        frames: Vec::new(),
        counter: 0,
        out: Vec::new(),
    };
    for &s in starts {
        if t.index[s as usize] == UNSEEN && member(s) {
            t.run(s);
        }
    }
    t.out
}

const UNSEEN: u32 = u32::MAX;

struct Tarjan<'a> {
    g: &'a Graph,
    keep: KeepRules,
    member: &'a dyn Fn(u32) -> bool,
    index: Vec<u32>,
    low: Vec<u32>,
    on_stack: Vec<bool>,
    stack: Vec<u32>,
    /// The explicit call stack: (node, its incoming member nodes, next position).
    frames: Vec<(u32, Vec<u32>, usize)>,
    counter: u32,
    out: Vec<Vec<u32>>,
}

impl Tarjan<'_> {
    fn visit(&mut self, v: u32) {
        self.index[v as usize] = self.counter;
        self.low[v as usize] = self.counter;
        self.counter += 1;
        self.stack.push(v);
        self.on_stack[v as usize] = true;
        let mut inc = Vec::new();
        self.g.incoming(v, self.keep, &mut inc);
        inc.retain(|&w| (self.member)(w));
        self.frames.push((v, inc, 0));
    }

    fn run(&mut self, s: u32) {
        self.visit(s);
        while let Some(top) = self.frames.last_mut() {
            let v = top.0;
            if top.2 < top.1.len() {
                let w = top.1[top.2];
                top.2 += 1;
                if self.index[w as usize] == UNSEEN {
                    self.visit(w);
                } else if self.on_stack[w as usize] {
                    self.low[v as usize] = self.low[v as usize].min(self.index[w as usize]);
                }
                continue;
            }
            self.frames.pop();
            if let Some(parent) = self.frames.last() {
                let p = parent.0 as usize;
                self.low[p] = self.low[p].min(self.low[v as usize]);
            }
            if self.low[v as usize] == self.index[v as usize] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack[w as usize] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                self.out.push(comp);
            }
        }
    }
}

/// How many of `groups` (components: a group is never split) the next batch takes: whole
/// groups while they fit in `size` entries, and at least one.
pub fn next_batch<T>(groups: &[Vec<T>], size: usize) -> usize {
    let (mut n, mut count) = (0, 0);
    while n < groups.len() && (count == 0 || count + groups[n].len() <= size) {
        count += groups[n].len();
        n += 1;
    }
    n
}

/// A random permutation (Fisher–Yates over a xorshift generator seeded from the clock and
/// the pid; C++ seeds from `std::random_device`).
pub fn shuffle<T>(v: &mut [T]) {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut s = (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32) | 1;
    for i in (1..v.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.swap(i, (s % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::tests::graph;

    /// Every node comes after (or in the same component as) each node that keeps it alive.
    fn check_order(g: &Graph, keep: KeepRules, comps: &[Vec<u32>]) {
        let mut pos = vec![usize::MAX; g.len()];
        for (i, c) in comps.iter().enumerate() {
            for &n in c {
                assert_eq!(pos[n as usize], usize::MAX, "node twice");
                pos[n as usize] = i;
            }
        }
        let mut inc = Vec::new();
        for c in comps {
            for &n in c {
                g.incoming(n, keep, &mut inc);
                for &k in &inc {
                    assert!(
                        pos[k as usize] <= pos[n as usize],
                        "{} before its keeper {}",
                        g.names[n as usize],
                        g.names[k as usize]
                    );
                }
            }
        }
    }

    #[test]
    fn keepers_first_and_cycles_together() {
        let g = graph(
            &[("lib", &[]), ("app", &["lib"]), ("src", &[]), ("x.drv", &["src"]), ("out", &["dev"]), ("dev", &["out"])],
            &[("x.drv", "out"), ("x.drv", "dev")],
        );
        let all: Vec<u32> = (0..g.len() as u32).collect();
        for keep in [KeepRules::default(), KeepRules { outputs: true, derivations: true }] {
            let comps = components(&g, keep, &all, &|_| true);
            check_order(&g, keep, &comps);
            assert_eq!(comps.iter().map(Vec::len).sum::<usize>(), g.len());
        }
        // Both keep rules: x.drv, out and dev are one component.
        let both = KeepRules { outputs: true, derivations: true };
        let comps = components(&g, both, &all, &|_| true);
        let drv = g.id("x.drv").unwrap();
        let c = comps.iter().find(|c| c.contains(&drv)).unwrap();
        assert_eq!(c.len(), 3);
        // Without: out and dev (which refer to each other) only.
        let comps = components(&g, KeepRules::default(), &all, &|_| true);
        assert!(comps.iter().any(|c| c.len() == 2));
        // A batch never cuts a component: one of two entries, even when batches are of one.
        let mut rest = &comps[..];
        let mut sizes = Vec::new();
        while !rest.is_empty() {
            let n = next_batch(rest, 1);
            sizes.push(rest[..n].iter().map(Vec::len).sum::<usize>());
            rest = &rest[n..];
        }
        assert!(sizes.contains(&2));
        assert_eq!(sizes.iter().sum::<usize>(), g.len());
    }

    #[test]
    fn long_chains_do_not_overflow_and_stay_ordered() {
        let n = 200_000;
        let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
        let rows = names.iter().map(|s| crate::graph::Row { name: s.clone(), deriver: None, nar_size: 0 }).collect();
        let refs: Vec<(String, String)> = (1..n).map(|i| (names[i].clone(), names[i - 1].clone())).collect();
        let g = Graph::build(rows, &refs, &[]);
        let mut starts: Vec<u32> = (0..n as u32).collect();
        shuffle(&mut starts);
        let comps = components(&g, KeepRules::default(), &starts, &|_| true);
        assert_eq!(comps.len(), n);
        check_order(&g, KeepRules::default(), &comps);
    }

    #[test]
    fn batches_respect_size_and_shuffles_permute() {
        let groups: Vec<Vec<u32>> = vec![vec![1], vec![2, 3], vec![4], vec![5], vec![6]];
        assert_eq!(next_batch(&groups, 2), 1);
        assert_eq!(next_batch(&groups[1..], 2), 1);
        assert_eq!(next_batch(&groups[1..], 1), 1);
        assert_eq!(next_batch(&groups[2..], 2), 2);
        assert_eq!(next_batch(&groups, 100), 5);
        let mut v: Vec<u32> = (0..100).collect();
        shuffle(&mut v);
        let mut s = v.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_ne!(v, s);
    }
}
