// Where a JSON path (`rules[1].config.minConfidence`, as the server's errors name them) is in
// the text of a document: the span of the member (key and value) or array element, so the
// editor can show each error at its place.

/** Every path of `text` with its span `{start, end}`; as much as parses when it does not. */
export function spans(text) {
  const map = new Map();
  let i = 0;
  const space = () => {
    while (i < text.length && ' \t\r\n'.includes(text[i])) i++;
  };
  const fail = () => {
    throw new SyntaxError(`unexpected input at ${i}`);
  };
  const string = () => {
    if (text[i] !== '"') fail();
    const start = i++;
    while (i < text.length && text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
    if (i >= text.length) fail();
    i++;
    return JSON.parse(text.slice(start, i));
  };
  const value = (path) => {
    space();
    const start = i;
    const c = text[i];
    if (c === '{') {
      i++;
      space();
      if (text[i] === '}') {
        i++;
      } else {
        for (;;) {
          space();
          const keyStart = i;
          const key = string();
          space();
          if (text[i] !== ':') fail();
          i++;
          const child = path ? `${path}.${key}` : key;
          const inner = value(child);
          map.set(child, {start: keyStart, end: inner.end});
          space();
          if (text[i] === ',') {
            i++;
            continue;
          }
          if (text[i] !== '}') fail();
          i++;
          break;
        }
      }
    } else if (c === '[') {
      i++;
      space();
      if (text[i] === ']') {
        i++;
      } else {
        for (let index = 0; ; index++) {
          const child = `${path}[${index}]`;
          const inner = value(child);
          space();
          if (text[i] === ',') {
            i++;
            continue;
          }
          if (text[i] !== ']') fail();
          i++;
          break;
        }
      }
    } else if (c === '"') {
      string();
    } else {
      while (i < text.length && !',]} \t\r\n'.includes(text[i])) i++;
      if (i === start) fail();
    }
    const span = {start, end: i};
    if (!map.has(path)) map.set(path, span);
    return span;
  };
  try {
    value('');
  } catch {
    // A syntax error: the paths read so far are still right.
  }
  return map;
}

/** The path without its last step: `a.b[2]` -> `a.b`, `a.b` -> `a`, `a` -> ``. */
export function parent(path) {
  const cut = Math.max(path.lastIndexOf('.'), path.lastIndexOf('['));
  return cut < 0 ? '' : path.slice(0, cut);
}

/**
 * The span of `path` in `text` (`exact: false` when only an enclosing value exists, e.g. for a
 * missing field), or `null`.
 */
export function locate(text, path, map = spans(text)) {
  let at = path;
  for (;;) {
    const span = map.get(at);
    if (span) return {start: span.start, end: span.end, exact: at === path};
    if (at === '') return null;
    at = parent(at);
  }
}

/** 1-based line and column of `offset` in `text`. */
export function lineColumn(text, offset) {
  let line = 1;
  let last = -1;
  for (let i = 0; i < offset && i < text.length; i++) {
    if (text[i] === '\n') {
      line++;
      last = i;
    }
  }
  return {line, column: offset - last};
}

/** The offset of 1-based `line` and `column` in `text`. */
export function offsetOf(text, line, column) {
  let offset = 0;
  for (let l = 1; l < line; l++) {
    const next = text.indexOf('\n', offset);
    if (next < 0) return text.length;
    offset = next + 1;
  }
  return Math.min(text.length, offset + Math.max(0, column - 1));
}
