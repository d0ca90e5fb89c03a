// A line diff (Myers' O(ND) algorithm, after stripping the common head and tail) for comparing
// two policy versions as pretty-printed JSON.

/**
 * The lines of `a` and `b` as `{kind: 'same'|'add'|'del', text, a, b}` (line numbers, 1-based,
 * of the side(s) the line is on). `null` when they differ in more than `limit` lines (then
 * there is nothing useful to show line by line).
 */
export function diffLines(a, b, limit = 3000) {
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) head++;
  let endA = a.length;
  let endB = b.length;
  while (endA > head && endB > head && a[endA - 1] === b[endB - 1]) {
    endA--;
    endB--;
  }
  const middle = myers(a.slice(head, endA), b.slice(head, endB), limit);
  if (!middle) return null;
  const ops = [
    ...a.slice(0, head).map((text) => ({kind: 'same', text})),
    ...middle,
    ...a.slice(endA).map((text) => ({kind: 'same', text})),
  ];
  let lineA = 0;
  let lineB = 0;
  for (const op of ops) {
    if (op.kind !== 'add') op.a = ++lineA;
    if (op.kind !== 'del') op.b = ++lineB;
  }
  return ops;
}

function myers(a, b, limit) {
  const n = a.length;
  const m = b.length;
  const max = n + m;
  if (max === 0) return [];
  const off = max + 1;
  const v = new Int32Array(2 * max + 3);
  // trace[d] holds v[k] for k in -d-1..d+1 as it was before round d.
  const trace = [];
  for (let d = 0; d <= max; d++) {
    if (d > limit) return null;
    trace.push(v.slice(off - d - 1, off + d + 2));
    for (let k = -d; k <= d; k += 2) {
      let x = (k === -d || (k !== d && v[off + k - 1] < v[off + k + 1])) ? v[off + k + 1] : v[off + k - 1] + 1;
      let y = x - k;
      while (x < n && y < m && a[x] === b[y]) {
        x++;
        y++;
      }
      v[off + k] = x;
      if (x >= n && y >= m) return backtrack(trace, a, b);
    }
  }
  return null;
}

function backtrack(trace, a, b) {
  const ops = [];
  let x = a.length;
  let y = b.length;
  for (let d = trace.length - 1; d >= 0; d--) {
    const saved = trace[d];
    const at = (k) => saved[k + d + 1];
    const k = x - y;
    const prevK = (k === -d || (k !== d && at(k - 1) < at(k + 1))) ? k + 1 : k - 1;
    const prevX = at(prevK);
    const prevY = prevX - prevK;
    while (x > prevX && y > prevY) {
      ops.push({kind: 'same', text: a[x - 1]});
      x--;
      y--;
    }
    if (d > 0) {
      if (x === prevX) ops.push({kind: 'add', text: b[y - 1]});
      else ops.push({kind: 'del', text: a[x - 1]});
    }
    x = prevX;
    y = prevY;
  }
  return ops.reverse();
}
