//! Betti matching (Stucki et al. 2023), the selection behind `std::topology::betti_matching`: for each
//! image of a prediction `p` and a ground truth `g`, which pixel values the loss compares.
//!
//! As `BettiMatching.py` at nstucki/Betti-matching@3e7eca2 computes it with the loss's defaults
//! (V-construction, `relative = False`, `comparison = 'union'`, `valid = 'positive'`, image persistence by
//! union-find): the cubical complexes of p, g and the comparison image c = max(p, g) (superlevel; min for
//! sublevel) number their cells in filtration order exactly as `CubicalPersistence.set_CubeMap` does (pixel
//! values from the last to enter to the first, tied pixels in row-major order; per value its squares, then
//! its edges, then its vertices), which decides every tie. Bars of dimension 0 come from union-find over the
//! edges that kill no dual component, bars of dimension 1 from union-find over the dual graph; the image
//! persistence of p → c and g → c, the induced matchings and the Betti matching (p-bar ↔ g-bar through a
//! common c-bar) follow the original's loops and list orders.
//!
//! Output: the loss's terms, each `weight · (u - v)²` where `u`, `v` are a pixel of p, a pixel of g or a
//! constant (an infinite death: 0 superlevel, 1 sublevel). A matched pair gives two terms of weight 2
//! (births, deaths), an unmatched bar one of weight 1; unused rows have weight 0.

use super::{ExternOp, OptionValue, Options};
use crate::data::{Data, Tensor};

/// The Betti matching selection (`extern fn betti_matching` in `stdlib/topology.lx`).
pub struct BettiMatching;

/// Where a term's value is read.
const FROM_P: i64 = 0;
const FROM_G: i64 = 1;
const CONSTANT: i64 = 2;

/// A bar: the cells (indices in filtration order) of its birth and death; `INF` for no death.
type Bar = (usize, usize);
const INF: usize = usize::MAX;

struct UnionFind {
    parent: Vec<usize>,
    rank: Vec<u32>,
    birth: Vec<usize>,
    /// Merged components keep the larger birth (the dual graph), else the smaller.
    dual: bool,
}

impl UnionFind {
    fn new(n: usize, dual: bool) -> UnionFind {
        UnionFind {
            parent: (0..n).collect(),
            rank: vec![0; n],
            birth: (0..n).collect(),
            dual,
        }
    }
    fn find(&mut self, x: usize) -> usize {
        let mut root = x;
        while self.parent[root] != root {
            root = self.parent[root];
        }
        let mut y = x;
        while self.parent[y] != root {
            let next = self.parent[y];
            self.parent[y] = root;
            y = next;
        }
        root
    }
    fn birth(&mut self, x: usize) -> usize {
        let r = self.find(x);
        self.birth[r]
    }
    fn union(&mut self, x: usize, y: usize) {
        let (x, y) = (self.find(x), self.find(y));
        if x == y {
            return;
        }
        let merged = if self.dual {
            self.birth[x].max(self.birth[y])
        } else {
            self.birth[x].min(self.birth[y])
        };
        if self.rank[x] > self.rank[y] {
            self.parent[y] = x;
            self.birth[x] = merged;
        } else {
            self.parent[x] = y;
            self.birth[y] = merged;
            if self.rank[x] == self.rank[y] {
                self.rank[y] += 1;
            }
        }
    }
}

/// The V-construction cubical complex of one image and its persistence.
struct Cubical {
    /// Grid extents (2m - 1, 2n - 1).
    big_m: usize,
    big_n: usize,
    /// The cell at each grid position.
    index: Vec<usize>,
    /// Each cell's grid position.
    coords: Vec<(usize, usize)>,
    /// Each cell's generating pixel (flat), whose value it has.
    pixel: Vec<usize>,
    /// The edges in increasing filtration order.
    edges: Vec<usize>,
    /// Edges that merge two dual components, in the order found (decreasing).
    critical: Vec<usize>,
    /// The other edges, increasing (the ones dimension 0 reduces).
    columns: Vec<usize>,
    bars: [Vec<Bar>; 2],
    values: Vec<f64>,
    sublevel: bool,
}

impl Cubical {
    fn new(values: &[f64], m: usize, n: usize, sublevel: bool) -> Cubical {
        let (big_m, big_n) = (2 * m - 1, 2 * n - 1);
        let cubes = big_m * big_n;
        let mut c = Cubical {
            big_m,
            big_n,
            index: vec![usize::MAX; cubes],
            coords: vec![(0, 0); cubes],
            pixel: vec![0; cubes],
            edges: Vec::new(),
            critical: Vec::new(),
            columns: Vec::new(),
            bars: [Vec::new(), Vec::new()],
            values: values.to_vec(),
            sublevel,
        };
        c.number_cells(m, n);
        c.dim1();
        c.dim0();
        c
    }

    /// `set_CubeMap` (V): pixel values from the last to enter down to the first; per value, the tied
    /// pixels in row-major order give their squares, then their edges, then their vertices the next
    /// indices counting down.
    fn number_cells(&mut self, m: usize, n: usize) {
        let sublevel = self.sublevel;
        let key = move |v: f64| if sublevel { v } else { -v };
        let values = self.values.clone();
        let mut order: Vec<usize> = (0..m * n).collect();
        // NaN is refused before: the values are ordered. Tied pixels (`==`, so -0 and 0 too) stay row-major.
        order.sort_by(|&a, &b| {
            key(values[b])
                .partial_cmp(&key(values[a]))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b))
        });
        let mut counter = self.index.len();
        let mut edges_rev = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let level = key(values[order[start]]);
            let mut end = start;
            while end < order.len() && key(values[order[end]]) == level {
                end += 1;
            }
            let tied = &order[start..end];
            let mut assign = |c: &mut Cubical, x: isize, y: isize, p: usize, edge: bool| {
                if x < 0 || y < 0 || x as usize >= c.big_m || y as usize >= c.big_n {
                    return;
                }
                let at = x as usize * c.big_n + y as usize;
                if c.index[at] == usize::MAX {
                    counter -= 1;
                    c.index[at] = counter;
                    c.coords[counter] = (x as usize, y as usize);
                    c.pixel[counter] = p;
                    if edge {
                        edges_rev.push(counter);
                    }
                }
            };
            for &p in tied {
                let (i, j) = ((p / n) as isize, (p % n) as isize);
                for k in [-1, 1] {
                    for l in [-1, 1] {
                        assign(self, 2 * i + k, 2 * j + l, p, false);
                    }
                }
            }
            for &p in tied {
                let (i, j) = ((p / n) as isize, (p % n) as isize);
                for k in [-1, 1] {
                    assign(self, 2 * i + k, 2 * j, p, true);
                    assign(self, 2 * i, 2 * j + k, p, true);
                }
            }
            for &p in tied {
                let (i, j) = ((p / n) as isize, (p % n) as isize);
                assign(self, 2 * i, 2 * j, p, false);
            }
            start = end;
        }
        edges_rev.reverse();
        self.edges = edges_rev;
    }

    fn at(&self, x: usize, y: usize) -> usize {
        self.index[x * self.big_n + y]
    }

    /// The value of a cell (`INF`: the infinite death, ±∞).
    fn value(&self, cell: usize) -> f64 {
        match cell {
            INF if self.sublevel => f64::INFINITY,
            INF => f64::NEG_INFINITY,
            c => self.values[self.pixel[c]],
        }
    }

    /// Whether the bar has positive length (`valid = 'positive'`).
    fn positive(&self, birth: usize, death: usize) -> bool {
        if self.sublevel {
            self.value(birth) < self.value(death)
        } else {
            self.value(birth) > self.value(death)
        }
    }

    /// The two vertices of an edge, as cells of `of`.
    fn boundary(&self, edge: usize, of: &Cubical) -> [usize; 2] {
        let (x, y) = self.coords[edge];
        if x % 2 == 1 {
            [of.at(x - 1, y), of.at(x + 1, y)]
        } else {
            [of.at(x, y - 1), of.at(x, y + 1)]
        }
    }

    /// The two squares beside an edge, as cells of `of` (the outside: `of`'s cell count).
    fn dual_boundary(&self, edge: usize, of: &Cubical) -> [usize; 2] {
        let (x, y) = self.coords[edge];
        let outside = of.index.len();
        let side = |a: usize, last: usize, at: &dyn Fn(usize) -> usize| {
            if a == 0 {
                [outside, at(a + 1)]
            } else if a == last {
                [outside, at(a - 1)]
            } else {
                [at(a - 1), at(a + 1)]
            }
        };
        if x % 2 == 0 {
            side(x, self.big_m - 1, &|a| of.at(a, y))
        } else {
            side(y, self.big_n - 1, &|b| of.at(x, b))
        }
    }

    fn dim1(&mut self) {
        let mut uf = UnionFind::new(self.index.len() + 1, true);
        for k in (0..self.edges.len()).rev() {
            let edge = self.edges[k];
            let [a, b] = self.dual_boundary(edge, self);
            let (x, y) = (uf.find(a), uf.find(b));
            if x == y {
                self.columns.push(edge);
                continue;
            }
            self.critical.push(edge);
            let birth = uf.birth(x).min(uf.birth(y));
            if self.positive(edge, birth) {
                self.bars[1].push((edge, birth));
            }
            uf.union(x, y);
        }
        self.columns.reverse();
    }

    fn dim0(&mut self) {
        self.bars[0] = vec![(0, INF)];
        let mut uf = UnionFind::new(self.index.len(), false);
        for k in 0..self.columns.len() {
            let edge = self.columns[k];
            let [a, b] = self.boundary(edge, self);
            let (x, y) = (uf.find(a), uf.find(b));
            if x == y {
                continue;
            }
            let birth = uf.birth(x).max(uf.birth(y));
            if self.positive(birth, edge) {
                self.bars[0].push((birth, edge));
            }
            uf.union(x, y);
        }
    }
}

/// The image persistence of `picture` → `comp` (`ImagePersistence.compute_persistence_UF`, `valid = 'all'`):
/// bars born in the picture's numbering and dying in the comparison's.
fn image_bars(picture: &Cubical, comp: &Cubical) -> [Vec<Bar>; 2] {
    let mut dim0 = vec![(0, INF)];
    let mut uf = UnionFind::new(picture.index.len(), false);
    for &edge in &comp.columns {
        let [a, b] = comp.boundary(edge, picture);
        let (x, y) = (uf.find(a), uf.find(b));
        if x == y {
            continue;
        }
        dim0.push((uf.birth(x).max(uf.birth(y)), edge));
        uf.union(x, y);
    }
    let mut dim1 = Vec::new();
    let mut uf = UnionFind::new(comp.index.len() + 1, true);
    for &edge in &picture.critical {
        let [a, b] = picture.dual_boundary(edge, comp);
        let (x, y) = (uf.find(a), uf.find(b));
        if x == y {
            continue;
        }
        dim1.push((edge, uf.birth(x).min(uf.birth(y))));
        uf.union(x, y);
    }
    [dim0, dim1]
}

/// Removes the first element equal to `x` (Python's `list.remove`).
fn remove(v: &mut Vec<Bar>, x: Bar) {
    if let Some(k) = v.iter().position(|b| *b == x) {
        v.remove(k);
    }
}

/// `InducedMatching.match`: (picture bar, comparison bar) pairs per dimension, in the image bars' order.
fn induced(picture: &Cubical, comp: &Cubical, image: &[Vec<Bar>; 2]) -> [Vec<(Bar, Bar)>; 2] {
    let mut out = [Vec::new(), Vec::new()];
    for dim in 0..2 {
        let mut left = picture.bars[dim].clone();
        let mut right = comp.bars[dim].clone();
        for &(a, b) in &image[dim] {
            let Some(m0) = left.iter().copied().find(|x| x.0 == a) else {
                continue;
            };
            let Some(m1) = right.iter().copied().find(|x| x.1 == b) else {
                continue;
            };
            out[dim].push((m0, m1));
            remove(&mut left, m0);
            remove(&mut right, m1);
        }
    }
    out
}

/// One term of the loss: weight and the two values compared, each (where, pixel, constant).
type Term = (f64, [(i64, usize, f64); 2]);

/// The terms of one image pair (`BettiMatching.loss`, dimensions 0 and 1).
fn terms(p: &[f64], g: &[f64], m: usize, n: usize, sublevel: bool) -> Vec<Term> {
    let comp: Vec<f64> = (p.iter().zip(g))
        .map(|(a, b)| if sublevel { a.min(*b) } else { a.max(*b) })
        .collect();
    let cp = Cubical::new(p, m, n, sublevel);
    let cg = Cubical::new(g, m, n, sublevel);
    let cc = Cubical::new(&comp, m, n, sublevel);
    let im_p = induced(&cp, &cc, &image_bars(&cp, &cc));
    let im_g = induced(&cg, &cc, &image_bars(&cg, &cc));
    let infinite = if sublevel { 1.0 } else { 0.0 };
    let at = |c: &Cubical, from: i64, cell: usize| {
        if cell == INF {
            (CONSTANT, 0, infinite)
        } else {
            (from, c.pixel[cell], 0.0)
        }
    };
    let mut out = Vec::new();
    for dim in 0..2 {
        let mut unmatched_p = cp.bars[dim].clone();
        let mut unmatched_g = cg.bars[dim].clone();
        let mut matched_g = im_g[dim].clone();
        for &(bp, bc) in &im_p[dim] {
            let Some(k) = matched_g.iter().position(|(_, c)| *c == bc) else {
                continue;
            };
            let (bg, _) = matched_g.remove(k);
            out.push((2.0, [at(&cp, FROM_P, bp.0), at(&cg, FROM_G, bg.0)]));
            out.push((2.0, [at(&cp, FROM_P, bp.1), at(&cg, FROM_G, bg.1)]));
            remove(&mut unmatched_p, bp);
            remove(&mut unmatched_g, bg);
        }
        for (c, from, bars) in [(&cp, FROM_P, unmatched_p), (&cg, FROM_G, unmatched_g)] {
            for (b, d) in bars {
                out.push((1.0, [at(c, from, b), at(c, from, d)]));
            }
        }
    }
    out
}

fn floats(t: &Tensor) -> Result<&[f64], String> {
    match &t.data {
        Data::Float(v) => Ok(v),
        Data::Int(_) => Err("expects float images".into()),
    }
}

impl ExternOp for BettiMatching {
    fn forward(&self, args: &[&Tensor], options: &Options, outputs: &mut [Tensor]) -> Result<(), String> {
        let sublevel = match options.get("filtration") {
            Some(OptionValue::Str(s)) if s == "superlevel" => false,
            Some(OptionValue::Str(s)) if s == "sublevel" => true,
            other => {
                return Err(format!(
                    "filtration must be \"superlevel\" or \"sublevel\", not {other:?}"
                ));
            }
        };
        let (p, g) = (floats(args[0])?, floats(args[1])?);
        let [b, m, n] = args[0].shape[..] else {
            return Err("expects images of shape [B, H, W]".into());
        };
        if let Some(x) = p.iter().chain(g).find(|x| x.is_nan()) {
            return Err(format!("an image holds {x}"));
        }
        let t = outputs[0].shape[1];
        let [from, row, col, constant, weight] = outputs else {
            return Err("expects five outputs".into());
        };
        let (Data::Int(from), Data::Int(row), Data::Int(col), Data::Float(constant), Data::Float(weight)) = (
            &mut from.data,
            &mut row.data,
            &mut col.data,
            &mut constant.data,
            &mut weight.data,
        ) else {
            return Err("its outputs have other element types than declared".into());
        };
        for image in 0..b {
            let range = image * m * n..(image + 1) * m * n;
            if m == 0 || n == 0 {
                continue;
            }
            let all = terms(&p[range.clone()], &g[range], m, n, sublevel);
            if all.len() > t {
                return Err(format!(
                    "image {image} has {} terms, more than the {t} rows declared",
                    all.len()
                ));
            }
            for (k, (w, sides)) in all.into_iter().enumerate() {
                let at = image * t + k;
                weight[at] = w;
                for (s, (f, px, c)) in sides.into_iter().enumerate() {
                    from[2 * at + s] = f;
                    row[2 * at + s] = (px / n) as i64;
                    col[2 * at + s] = (px % n) as i64;
                    constant[2 * at + s] = c;
                }
            }
        }
        for at in 0..b * t {
            if weight[at] == 0.0 {
                from[2 * at] = CONSTANT;
                from[2 * at + 1] = CONSTANT;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ground truth of two blobs against a prediction of one: one component bar of g is unmatched.
    #[test]
    fn a_missing_component_is_an_unmatched_bar() {
        let g = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        let p = [0.9, 0.2, 0.1, 0.8, 0.3, 0.2, 0.1, 0.1, 0.1];
        let all = terms(&p, &g, 3, 3, false);
        // g: components born at 1 dying at 0 (one infinite, one finite); p: one component.
        let unmatched_g: Vec<_> = all.iter().filter(|(w, s)| *w == 1.0 && s[0].0 == FROM_G).collect();
        assert_eq!(unmatched_g.len(), 1);
        let cg = Cubical::new(&g, 3, 3, false);
        assert_eq!(cg.bars[0].len(), 2);
    }
}
