"""A layered (Sugiyama-style) SVG drawing of a layer graph, for machines without graphviz.

Deliberately small and deterministic: longest-path layering, dummy nodes on edges that skip
ranks, a few barycenter sweeps (kept only when they lower the crossing count) that keep each
cluster contiguous within a rank, and a left-to-right placement pulled towards the neighbours'
centres. Good enough to read ResNet-50 (about 170 layers) top to bottom; ``dot`` does better
where it is installed (see ``tracecap.picture``).
"""
from __future__ import annotations

from html import escape

FONT = 11            # px, layer name; the type line is 9 px
CHAR_W = 0.62 * FONT  # average advance of a sans-serif character, for box widths
BOX_H = 32
GAP_X = 14           # between neighbours of one rank
GAP_Y = 26           # between ranks, before room for cluster borders
PAD = 7              # cluster border around its members, per nesting level
LABEL_H = 12         # room for a cluster's label above its members
DUMMY_W = 6
MARGIN = 16
SWEEPS = 8


def box_width(name, kind):
    return max(len(name) * CHAR_W, len(kind) * CHAR_W * 0.85) + 18


class _Item:
    """A real box or a dummy point of a long edge, in one rank."""

    __slots__ = ("index", "rank", "width", "path", "order", "x", "ups", "downs", "dummy")

    def __init__(self, index, rank, width, path, order, dummy=False):
        self.index, self.rank, self.width, self.path, self.order = index, rank, width, path, order
        self.x = 0.0
        self.ups, self.downs = [], []  # neighbours in the rank above / below
        self.dummy = dummy


def _ranks(n, edges):
    rank = [0] * n
    for u, v in sorted(edges, key=lambda e: e[1]):
        rank[v] = max(rank[v], rank[u] + 1)
    return rank


def _common(a, b):
    k = 0
    while k < len(a) and k < len(b) and a[k] == b[k]:
        k += 1
    return k


def _build(boxes, edges, paths):
    """Items per rank, plus each edge's chain of items (source, dummies..., target)."""
    rank = _ranks(len(boxes), edges)
    items = [_Item(i, rank[i], box_width(b[0], b[1]), paths[i], float(i)) for i, b in enumerate(boxes)]
    chains = []
    for u, v in edges:
        chain = [items[u]]
        shared = paths[u][:_common(paths[u], paths[v])]
        for k, r in enumerate(range(rank[u] + 1, rank[v])):
            dummy = _Item(-1, r, DUMMY_W, shared, u + (k + 1) / (rank[v] - rank[u] + 1), dummy=True)
            items.append(dummy)
            chain.append(dummy)
        chain.append(items[v])
        for a, b in zip(chain, chain[1:]):
            a.downs.append(b)
            b.ups.append(a)
        chains.append(chain)
    rows = [[] for _ in range(max(rank, default=0) + 1)]
    for it in items:
        rows[it.rank].append(it)
    for row in rows:
        row.sort(key=lambda it: it.order)
        _renumber(row)
    return rows, chains


def _renumber(row):
    for k, it in enumerate(row):
        it.order = float(k)


def _grouped(row, key, depth=0):
    """``row`` sorted by ``key`` with every cluster's members kept together, recursively."""
    groups = {}
    for it in row:
        gid = it.path[depth] if len(it.path) > depth else ("item", id(it))
        groups.setdefault(gid, []).append(it)
    ranked = []
    for gid, members in groups.items():
        mean = sum(key(m) for m in members) / len(members)
        inner = _grouped(members, key, depth + 1) if gid[0] != "item" else members
        ranked.append((mean, min(m.order for m in members), inner))
    ranked.sort(key=lambda g: (g[0], g[1]))
    return [m for _, _, inner in ranked for m in inner]


def _crossings(rows):
    total = 0
    for row in rows[:-1]:
        ends = [(a.order, b.order) for a in row for b in a.downs]
        for i, (a1, b1) in enumerate(ends):
            for a2, b2 in ends[i + 1:]:
                if (a1 - a2) * (b1 - b2) < 0:
                    total += 1
    return total


def _sweep(rows):
    """Barycenter ordering, down then up, keeping the best order seen."""
    best, best_orders = _crossings(rows), [[it for it in row] for row in rows]
    for sweep in range(SWEEPS):
        down = sweep % 2 == 0
        for row in (rows[1:] if down else rows[-2::-1]):
            def bary(it, down=down):
                near = it.ups if down else it.downs
                return sum(n.order for n in near) / len(near) if near else it.order
            row[:] = _grouped(row, bary)
            _renumber(row)
        count = _crossings(rows)
        if count < best:
            best, best_orders = count, [[it for it in row] for row in rows]
    for row, order in zip(rows, best_orders):
        row[:] = order
        _renumber(row)


def _gap(a, b):
    k = _common(a.path, b.path)
    return GAP_X + PAD * ((len(a.path) - k) + (len(b.path) - k))


def _place_row(row, want):
    """x centres in row order: as near ``want`` as the spacing allows (forward pass, then the row is
    shifted so that on average it sits where its neighbours want it)."""
    if not row:
        return
    xs = [want[0]]
    for prev, it, w in zip(row, row[1:], want[1:]):
        xs.append(max(w, xs[-1] + prev.width / 2 + _gap(prev, it) + it.width / 2))
    shift = sum(x - w for x, w in zip(xs, want)) / len(xs)
    for it, x in zip(row, xs):
        it.x = x - shift


def _place(rows):
    for row in rows:
        _place_row(row, [0.0] * len(row))
    for sweep in range(4):
        down = sweep % 2 == 0
        for row in (rows[1:] if down else rows[-2::-1]):
            want = []
            for it in row:
                near = sorted(n.x for n in (it.ups if down else it.downs))
                want.append((near[(len(near) - 1) // 2] + near[len(near) // 2]) / 2 if near else it.x)
            _place_row(row, want)


def _extents(rows):
    """cluster id -> [left, right] of its border at the current positions."""
    ext = {}
    for row in rows:
        for it in row:
            if it.dummy:
                continue
            for depth, cid in enumerate(it.path):
                grow = PAD * (len(it.path) - depth)
                lo, hi = it.x - it.width / 2 - grow, it.x + it.width / 2 + grow
                old = ext.get(cid)
                ext[cid] = [lo, hi] if old is None else [min(old[0], lo), max(old[1], hi)]
    return ext


def _separate_clusters(rows, moves=3000):
    """Push clusters apart where one's border (wide from another rank) reaches over a neighbour.

    For neighbours a < b in a rank, the outermost cluster holding one but not the other must end
    before the other begins; a violation moves b's side - its whole cluster, in every rank, with all
    that lies right of it there - to the right. Only rightward moves, so it settles (or stops after
    ``moves`` when clusters swap sides between ranks)."""
    for _ in range(moves):
        found = _first_violation(rows, _extents(rows))
        if found is None:
            return
        _shift_right_of(rows, *found)


def _first_violation(rows, ext):
    for row in rows:
        real = [it for it in row if not it.dummy]
        for a, b in zip(real, real[1:]):
            k = _common(a.path, b.path)
            right = ext[a.path[k]][1] if len(a.path) > k else a.x + a.width / 2
            left = ext[b.path[k]][0] if len(b.path) > k else b.x - b.width / 2
            need = right + GAP_X - left
            if need > 0.5:
                return (b.path[k] if len(b.path) > k else b), need
    return None


def _shift_right_of(rows, what, d):
    """Move ``what`` (an item, or every member of a cluster id) and all right of it in its ranks by d."""
    for row in rows:
        start = next((k for k, it in enumerate(row)
                      if (it is what if isinstance(what, _Item) else (what in it.path and not it.dummy))), None)
        if start is not None:
            for it in row[start:]:
                it.x += d


def _rank_tops(rows, spans):
    """y of each rank's box tops, leaving room for the cluster borders that end or begin between ranks."""
    y, tops = MARGIN, []
    for r, row in enumerate(rows):
        if r:
            ending = max((sum(1 for c in it.path if spans[c][1] == r - 1) for it in rows[r - 1]), default=0)
            starting = max((sum(1 for c in it.path if spans[c][0] == r) for it in row), default=0)
            y += GAP_Y + PAD * ending + (PAD + LABEL_H) * starting
        else:
            y += (PAD + LABEL_H) * max((len(it.path) for it in row), default=0)
        tops.append(y)
        y += BOX_H
    return tops


def layout_svg(boxes, edges, paths, clusters, title=""):
    """The SVG text.

    ``boxes``: (name, type, status class, fill, stroke, stroke width) per layer; ``edges``: (u, v, label)
    with u before v; ``paths``: per box, the cluster ids enclosing it, outermost first; ``clusters``:
    id -> label.
    """
    rows, chains = _build(boxes, [(u, v) for u, v, _ in edges], paths)
    _sweep(rows)
    _place(rows)
    _separate_clusters(rows)
    spans = {}
    for row in rows:
        for it in row:
            if not it.dummy:
                for c in it.path:
                    lo, hi = spans.get(c, (it.rank, it.rank))
                    spans[c] = (min(lo, it.rank), max(hi, it.rank))
    tops = _rank_tops(rows, spans)
    real = sorted((it for row in rows for it in row if not it.dummy), key=lambda it: it.index)
    left = min((it.x - it.width / 2 - PAD * len(it.path) for row in rows for it in row), default=0.0)
    dx = MARGIN - left
    rects = _cluster_rects(real, tops, dx)
    width = max((r[2] for r in rects.values()), default=0.0)
    width = max([width] + [it.x + dx + it.width / 2 for row in rows for it in row]) + MARGIN
    height = (tops[-1] + BOX_H if tops else 0) + PAD * max((len(p) for p in paths), default=0) + MARGIN
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif" class="tracecap-graph">',
           f"<title>{escape(title)}</title>",
           '<defs><marker id="tc-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#7a7a7a"/></marker></defs>',
           f'<rect x="0" y="0" width="{width:.0f}" height="{height:.0f}" fill="white"/>']
    for cid in sorted(rects, key=lambda c: (rects[c][4], c)):
        x0, y0, x1, y1, _ = rects[cid]
        out.append(f'<g class="cluster scope" id="scope-{cid}"><title>{escape(clusters[cid])}</title>'
                   f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" rx="6" '
                   f'fill="#5b7aa3" fill-opacity="0.06" stroke="#8fa3bf"/>'
                   f'<text x="{x0 + 5:.1f}" y="{y0 + LABEL_H - 2:.1f}" font-size="9" fill="#4a5d78">'
                   f"{escape(clusters[cid])}</text></g>")
    for (u, v, label), chain in zip(edges, chains):
        out.append(_edge(chain, label, tops, dx, boxes[u][0], boxes[v][0]))
    for it in real:
        out.append(_box(it, boxes[it.index], tops[it.rank], dx))
    out.append("</svg>")
    return "\n".join(out)


def _cluster_rects(real, tops, dx):
    """id -> (x0, y0, x1, y1, depth): the members' boxes, grown by PAD per level (and the label on top)."""
    rects = {}
    for it in real:
        x0, x1 = it.x + dx - it.width / 2, it.x + dx + it.width / 2
        y0, y1 = tops[it.rank], tops[it.rank] + BOX_H
        for depth in range(len(it.path) - 1, -1, -1):
            grow = len(it.path) - depth
            box = (x0 - PAD * grow, y0 - (PAD + LABEL_H) * grow, x1 + PAD * grow, y1 + PAD * grow)
            cid = it.path[depth]
            old = rects.get(cid)
            if old is not None:
                box = (min(old[0], box[0]), min(old[1], box[1]), max(old[2], box[2]), max(old[3], box[3]))
            rects[cid] = box + (depth,)
    return rects


def _edge(chain, label, tops, dx, src, dst):
    pts = []
    for k, it in enumerate(chain):
        y = tops[it.rank] + (BOX_H if k == 0 else 0 if k == len(chain) - 1 else BOX_H / 2)
        pts.append((it.x + dx, y))
    d = [f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        h = (y1 - y0) / 2
        d.append(f"C{x0:.1f},{y0 + h:.1f} {x1:.1f},{y1 - h:.1f} {x1:.1f},{y1:.1f}")
    text = ""
    if label:
        (x0, y0), (x1, y1) = pts[0], pts[1]
        text = (f'<text x="{(x0 + x1) / 2 + 4:.1f}" y="{(y0 + y1) / 2 + 3:.1f}" font-size="8" fill="#666">'
                f"{escape(label)}</text>")
    name = f"{src} -> {dst}" + (f" ({label})" if label else "")
    return (f'<g class="edge"><title>{escape(name)}</title><path d="{" ".join(d)}" fill="none" stroke="#9a9a9a" '
            f'stroke-width="1.1" marker-end="url(#tc-arrow)"/>{text}</g>')


def _box(it, box, top, dx):
    name, kind, status, fill, stroke, stroke_w = box
    x = it.x + dx - it.width / 2
    cx = it.x + dx
    cls = "node layer" + (f" st-{status}" if status else "")
    return (f'<g class="{cls}" id="layer-{it.index}"><title>{escape(name)}</title>'
            f'<rect x="{x:.1f}" y="{top:.1f}" width="{it.width:.1f}" height="{BOX_H}" rx="4" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="{stroke_w}"/>'
            f'<text x="{cx:.1f}" y="{top + 14:.1f}" text-anchor="middle" font-size="{FONT}">{escape(name)}</text>'
            f'<text x="{cx:.1f}" y="{top + 26:.1f}" text-anchor="middle" font-size="9" fill="#555">'
            f"{escape(kind)}</text></g>")
