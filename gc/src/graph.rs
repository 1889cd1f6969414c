//! The store's reference graph in memory, from one read of the database, and liveness over it.
//!
//! One read-only connection, one read transaction (a snapshot), three table scans
//! (`ValidPaths`, `Refs`, `DerivationOutputs`): no query per path, so 100,000 paths load in
//! well under a second. Nodes are numbered by their position in [`Graph::names`]; edges are kept
//! in compressed rows ([`Rows`]).
//!
//! # Liveness (C++ `canReachRoot`)
//! A path is alive when a root can be reached from it over *incoming* edges: its referrers,
//! with `keep.derivations` (for a `.drv`) its valid outputs whose deriver it is, with
//! `keep.outputs` its valid derivers (derivations listing it as an output). The C++ depth-first
//! search with its `visited`, `alive` and `dead` sets computes exactly this reachability, one
//! entry at a time; here it is one breadth-first pass from the roots over the reversed edges.
//! Roots may be invalid (a build output in progress): they are alive themselves and keep
//! nothing else alive, since an invalid path is nobody's referrer, output or deriver here.

use std::collections::HashMap;
use std::path::Path;

use guix_formats::StoreDir;
use guix_ipc::gc::KeepRules;

use crate::error::{Error, Result};

/// Adjacency lists in one allocation: the neighbours of `n` are `items[start[n]..start[n + 1]]`.
#[derive(Debug, Default, Clone)]
pub struct Rows {
    start: Vec<u32>,
    items: Vec<u32>,
}

impl Rows {
    /// From `(from, to)` pairs over `n` nodes.
    pub fn from_pairs(n: usize, pairs: &[(u32, u32)]) -> Rows {
        let mut count = vec![0u32; n + 1];
        for &(a, _) in pairs {
            count[a as usize + 1] += 1;
        }
        for i in 0..n {
            count[i + 1] += count[i];
        }
        let mut fill = count.clone();
        let mut items = vec![0u32; pairs.len()];
        for &(a, b) in pairs {
            items[fill[a as usize] as usize] = b;
            fill[a as usize] += 1;
        }
        Rows { start: count, items }
    }

    pub fn of(&self, n: u32) -> &[u32] {
        let (a, b) = (self.start[n as usize] as usize, self.start[n as usize + 1] as usize);
        &self.items[a..b]
    }
}

/// The valid paths and their edges.
#[derive(Debug, Default, Clone)]
pub struct Graph {
    /// Base names (`<hash>-<name>`), by node.
    pub names: Vec<String>,
    pub index: HashMap<String, u32>,
    pub nar_size: Vec<u64>,
    /// Who refers to the node (self-references left out).
    referrers: Rows,
    /// What the node refers to (self-references left out).
    references: Rows,
    /// The node's deriver, when it is a valid path.
    deriver: Vec<Option<u32>>,
    /// A derivation's valid outputs (`DerivationOutputs` rows whose path is valid).
    outputs: Rows,
    /// The valid derivations listing the node as an output (`queryValidDerivers`).
    derivers: Rows,
}

/// A `ValidPaths` row, for [`Graph::build`].
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub deriver: Option<String>,
    pub nar_size: u64,
}

impl Graph {
    /// From rows and edges by base name: `refs` are (referrer, reference), `drv_outputs`
    /// (derivation, output path). Edges naming a path that is not a row are dropped.
    pub fn build(rows: Vec<Row>, refs: &[(String, String)], drv_outputs: &[(String, String)]) -> Graph {
        let index: HashMap<String, u32> = rows.iter().enumerate().map(|(i, r)| (r.name.clone(), i as u32)).collect();
        let id = |s: &str| index.get(s).copied();
        let pairs = |edges: &[(String, String)]| -> Vec<(u32, u32)> {
            edges.iter().filter_map(|(a, b)| Some((id(a)?, id(b)?))).collect()
        };
        let refs = pairs(refs);
        let outs = pairs(drv_outputs);
        Graph::from_ids(rows, index, &refs, &outs)
    }

    fn from_ids(rows: Vec<Row>, index: HashMap<String, u32>, refs: &[(u32, u32)], outs: &[(u32, u32)]) -> Graph {
        let n = rows.len();
        let deriver = rows.iter().map(|r| r.deriver.as_deref().and_then(|d| index.get(d).copied())).collect();
        let refs: Vec<(u32, u32)> = refs.iter().copied().filter(|(a, b)| a != b).collect();
        let rev: Vec<(u32, u32)> = refs.iter().map(|&(a, b)| (b, a)).collect();
        let outs_rev: Vec<(u32, u32)> = outs.iter().map(|&(d, o)| (o, d)).collect();
        Graph {
            nar_size: rows.iter().map(|r| r.nar_size).collect(),
            names: rows.into_iter().map(|r| r.name).collect(),
            index,
            references: Rows::from_pairs(n, &refs),
            referrers: Rows::from_pairs(n, &rev),
            deriver,
            outputs: Rows::from_pairs(n, outs),
            derivers: Rows::from_pairs(n, &outs_rev),
        }
    }

    /// Reads the database under `db_dir` in one read transaction.
    pub fn load(db_dir: &Path, store: &StoreDir) -> Result<Graph> {
        let mut reader = guix_store::DbReader::open(db_dir, store.clone())?;
        let (conn, _) = reader.parts_mut();
        let prefix = format!("{}/", store.as_str());
        let base = |p: String| -> String {
            match p.strip_prefix(&prefix) {
                Some(b) => b.to_owned(),
                None => p,
            }
        };
        let sql = |e: rusqlite::Error| Error::Db(e.to_string());
        let tx = conn.transaction().map_err(sql)?;
        let mut rows = Vec::new();
        let mut by_id: HashMap<i64, u32> = HashMap::new();
        {
            let mut st = tx.prepare("select id, path, deriver, narSize from ValidPaths").map_err(sql)?;
            let mut q = st.query([]).map_err(sql)?;
            while let Some(r) = q.next().map_err(sql)? {
                let id: i64 = r.get(0).map_err(sql)?;
                let path: String = r.get(1).map_err(sql)?;
                let deriver: Option<String> = r.get(2).map_err(sql)?;
                let nar: Option<i64> = r.get(3).map_err(sql)?;
                by_id.insert(id, rows.len() as u32);
                rows.push(Row {
                    name: base(path),
                    deriver: deriver.filter(|d| !d.is_empty()).map(base),
                    nar_size: nar.unwrap_or(0).max(0) as u64,
                });
            }
        }
        let mut refs = Vec::new();
        {
            let mut st = tx.prepare("select referrer, reference from Refs").map_err(sql)?;
            let mut q = st.query([]).map_err(sql)?;
            while let Some(r) = q.next().map_err(sql)? {
                let (a, b): (i64, i64) = (r.get(0).map_err(sql)?, r.get(1).map_err(sql)?);
                if let (Some(&a), Some(&b)) = (by_id.get(&a), by_id.get(&b)) {
                    refs.push((a, b));
                }
            }
        }
        let index: HashMap<String, u32> = rows.iter().enumerate().map(|(i, r)| (r.name.clone(), i as u32)).collect();
        let mut outs = Vec::new();
        {
            let mut st = tx.prepare("select drv, path from DerivationOutputs").map_err(sql)?;
            let mut q = st.query([]).map_err(sql)?;
            while let Some(r) = q.next().map_err(sql)? {
                let drv: i64 = r.get(0).map_err(sql)?;
                let path: String = r.get(1).map_err(sql)?;
                if let (Some(&d), Some(&o)) = (by_id.get(&drv), index.get(&base(path))) {
                    outs.push((d, o));
                }
            }
        }
        tx.commit().map_err(sql)?;
        Ok(Graph::from_ids(rows, index, &refs, &outs))
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn id(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    pub fn is_derivation(&self, n: u32) -> bool {
        self.names[n as usize].ends_with(".drv")
    }

    /// The nodes whose liveness makes `n` alive (C++ `incoming` in `canReachRoot`).
    pub fn incoming(&self, n: u32, keep: KeepRules, out: &mut Vec<u32>) {
        out.clear();
        out.extend_from_slice(self.referrers.of(n));
        if keep.derivations && self.is_derivation(n) {
            out.extend(self.outputs.of(n).iter().copied().filter(|&o| self.deriver[o as usize] == Some(n)));
        }
        if keep.outputs {
            out.extend_from_slice(self.derivers.of(n));
        }
        out.retain(|&i| i != n);
    }

    /// The nodes `n`'s liveness makes alive: the reverse of [`Graph::incoming`].
    fn outgoing(&self, n: u32, keep: KeepRules, out: &mut Vec<u32>) {
        out.clear();
        out.extend_from_slice(self.references.of(n));
        if keep.derivations {
            if let Some(d) = self.deriver[n as usize] {
                if self.is_derivation(d) && self.outputs.of(d).contains(&n) {
                    out.push(d);
                }
            }
        }
        if keep.outputs {
            out.extend_from_slice(self.outputs.of(n));
        }
    }

    /// Which nodes are alive, given the valid roots.
    pub fn alive(&self, roots: impl IntoIterator<Item = u32>, keep: KeepRules) -> Vec<bool> {
        let mut alive = vec![false; self.len()];
        let mut queue: Vec<u32> = Vec::new();
        for r in roots {
            if !alive[r as usize] {
                alive[r as usize] = true;
                queue.push(r);
            }
        }
        let mut next = Vec::new();
        while let Some(n) = queue.pop() {
            self.outgoing(n, keep, &mut next);
            for &m in &next {
                if !alive[m as usize] {
                    alive[m as usize] = true;
                    queue.push(m);
                }
            }
        }
        alive
    }

    /// The referrers of `n` (what C++ `deletePathRecursive` deletes first).
    pub fn referrers_of(&self, n: u32) -> &[u32] {
        self.referrers.of(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A graph from `name -> [references]` lines and `(drv, output)` pairs, outputs' derivers
    /// set to their derivation.
    pub(crate) fn graph(nodes: &[(&str, &[&str])], outputs: &[(&str, &str)]) -> Graph {
        let deriver: HashMap<&str, &str> = outputs.iter().map(|&(d, o)| (o, d)).collect();
        let rows = nodes
            .iter()
            .map(|(n, _)| Row { name: n.to_string(), deriver: deriver.get(n).map(|d| d.to_string()), nar_size: 1 })
            .collect();
        let refs: Vec<(String, String)> =
            nodes.iter().flat_map(|(n, rs)| rs.iter().map(move |r| (n.to_string(), r.to_string()))).collect();
        let outs: Vec<(String, String)> = outputs.iter().map(|(d, o)| (d.to_string(), o.to_string())).collect();
        Graph::build(rows, &refs, &outs)
    }

    pub(crate) fn alive_names(g: &Graph, roots: &[&str], keep: KeepRules) -> Vec<String> {
        let a = g.alive(roots.iter().filter_map(|r| g.id(r)), keep);
        let mut v: Vec<String> = (0..g.len()).filter(|&i| a[i]).map(|i| g.names[i].clone()).collect();
        v.sort();
        v
    }

    /// C++ `canReachRoot`, transcribed (depth-first, with its visited/alive/dead sets), to
    /// compare the breadth-first pass against.
    fn can_reach_root(g: &Graph, roots: &[u32], keep: KeepRules, n: u32) -> bool {
        fn go(g: &Graph, roots: &[u32], keep: KeepRules, visited: &mut Vec<bool>, n: u32) -> bool {
            if visited[n as usize] {
                return false;
            }
            if roots.contains(&n) {
                return true;
            }
            visited[n as usize] = true;
            let mut inc = Vec::new();
            g.incoming(n, keep, &mut inc);
            inc.into_iter().any(|i| go(g, roots, keep, visited, i))
        }
        go(g, roots, keep, &mut vec![false; g.len()], n)
    }

    const ALL_KEEPS: [KeepRules; 4] = [
        KeepRules { outputs: false, derivations: false },
        KeepRules { outputs: true, derivations: false },
        KeepRules { outputs: false, derivations: true },
        KeepRules { outputs: true, derivations: true },
    ];

    /// lib ← app; drv (outputs out, dev; out refers to dev and back); src is drv's input.
    fn sample() -> Graph {
        graph(
            &[
                ("lib", &[]),
                ("app", &["lib"]),
                ("src", &[]),
                ("x.drv", &["src"]),
                ("out", &["dev"]),
                ("dev", &["out"]),
                ("other", &[]),
            ],
            &[("x.drv", "out"), ("x.drv", "dev")],
        )
    }

    #[test]
    fn keep_rules() {
        let g = sample();
        let none = KeepRules::default();
        assert_eq!(alive_names(&g, &["app"], none), ["app", "lib"]);
        // An output alone: its sibling (a reference) but not its derivation...
        assert_eq!(alive_names(&g, &["out"], none), ["dev", "out"]);
        // ... unless keep-derivations: then the derivation and its inputs.
        let kd = KeepRules { derivations: true, outputs: false };
        assert_eq!(alive_names(&g, &["out"], kd), ["dev", "out", "src", "x.drv"]);
        // A derivation alone keeps its outputs only with keep-outputs.
        assert_eq!(alive_names(&g, &["x.drv"], none), ["src", "x.drv"]);
        let ko = KeepRules { outputs: true, derivations: false };
        assert_eq!(alive_names(&g, &["x.drv"], ko), ["dev", "out", "src", "x.drv"]);
        // Both: the D <-> O cycle.
        let both = KeepRules { outputs: true, derivations: true };
        assert_eq!(alive_names(&g, &["dev"], both), ["dev", "out", "src", "x.drv"]);
        assert_eq!(alive_names(&g, &[], both), Vec::<String>::new());
    }

    /// keep-derivations only counts outputs whose recorded deriver is that derivation.
    #[test]
    fn keep_derivations_needs_the_deriver() {
        let rows = vec![
            Row { name: "a.drv".into(), deriver: None, nar_size: 1 },
            Row { name: "b.drv".into(), deriver: None, nar_size: 1 },
            Row { name: "o".into(), deriver: Some("b.drv".into()), nar_size: 1 },
        ];
        let outs = [("a.drv".to_owned(), "o".to_owned()), ("b.drv".to_owned(), "o".to_owned())];
        let g = Graph::build(rows, &[], &outs);
        let kd = KeepRules { derivations: true, outputs: false };
        assert_eq!(alive_names(&g, &["o"], kd), ["b.drv", "o"]);
        let ko = KeepRules { derivations: false, outputs: true };
        assert_eq!(alive_names(&g, &["a.drv"], ko), ["a.drv", "o"]);
    }

    /// The breadth-first pass agrees with the C++ search on random graphs, for every keep rule.
    #[test]
    fn same_as_can_reach_root() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let n = 2 + rnd(12) as usize;
            let names: Vec<String> =
                (0..n).map(|i| if i % 3 == 0 { format!("{i}.drv") } else { i.to_string() }).collect();
            let mut refs = Vec::new();
            let mut outs = Vec::new();
            for _ in 0..rnd(2 * n as u64) {
                let (a, b) = (rnd(n as u64) as usize, rnd(n as u64) as usize);
                refs.push((names[a].clone(), names[b].clone()));
            }
            let mut deriver = HashMap::new();
            for _ in 0..rnd(n as u64) {
                let (d, o) = (3 * rnd(n.div_ceil(3) as u64) as usize, rnd(n as u64) as usize);
                outs.push((names[d].clone(), names[o].clone()));
                if rnd(3) > 0 {
                    deriver.insert(o, names[d].clone());
                }
            }
            let rows = (0..n)
                .map(|i| Row { name: names[i].clone(), deriver: deriver.get(&i).cloned(), nar_size: 0 })
                .collect();
            let g = Graph::build(rows, &refs, &outs);
            let roots: Vec<u32> = (0..rnd(3)).map(|_| rnd(n as u64) as u32).collect();
            for keep in ALL_KEEPS {
                let a = g.alive(roots.iter().copied(), keep);
                for i in 0..n as u32 {
                    assert_eq!(a[i as usize], can_reach_root(&g, &roots, keep, i), "{i} {keep:?} {refs:?} {outs:?}");
                }
            }
        }
    }

    /// 100,000 paths, 400,000 references: liveness in memory is a matter of milliseconds.
    #[test]
    fn scales() {
        let n = 100_000u32;
        let rows: Vec<Row> = (0..n).map(|i| Row { name: format!("p{i}"), deriver: None, nar_size: 1 }).collect();
        let index = rows.iter().enumerate().map(|(i, r)| (r.name.clone(), i as u32)).collect();
        let refs: Vec<(u32, u32)> = (1..n).flat_map(|i| (0..4).map(move |k| (i, (i * 7 + k * 13) % i))).collect();
        let g = Graph::from_ids(rows, index, &refs, &[]);
        let t = std::time::Instant::now();
        let a = g.alive((n / 2..n).step_by(1000), KeepRules { outputs: true, derivations: true });
        assert!(a.iter().any(|x| !x) && a.iter().any(|x| *x));
        assert!(t.elapsed() < std::time::Duration::from_secs(1), "{:?}", t.elapsed());
    }
}
