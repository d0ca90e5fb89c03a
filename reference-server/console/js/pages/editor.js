// The policy editor: the document as JSON text, checked by the server as you type
// (`POST /api/policy/validate`: the same checks as publishing, nothing stored), every error
// listed with its path and marked at its place in the text; Publish posts exactly the text
// that was last found valid.

import {api} from '../api.js';
import {h, replace, notify} from '../dom.js';
import {count} from '../format.js';
import {locate, lineColumn, offsetOf, spans} from '../jsonpath.js';

const TEMPLATE = `{
  "name": "Block brute force sources",
  "description": "Block an address after repeated SSH failures",
  "rules": [
    {
      "type": "block_ip",
      "config": {"trigger": "brute_force", "threshold": 50, "duration": "24h", "scope": "host"},
      "enabled": true
    }
  ]
}
`;

/** How long typing must pause before the text is checked. */
const PAUSE_MS = 600;

let draft = null;

/** Opens the editor next with `text` (e.g. a copy of a version); `origin` says what it is. */
export function setDraft(text, origin) {
  draft = {text, origin};
}

export default function editor() {
  let started = false;
  let validated = null;
  let sequence = 0;
  let timer = null;
  const text = h('textarea', {
    id: 'policy-text', class: 'code', spellcheck: 'false', wrap: 'off', autocomplete: 'off',
    autocapitalize: 'off', rows: 24, 'aria-describedby': 'editor-result editor-help',
  });
  const backdrop = h('pre', {class: 'backdrop code', 'aria-hidden': 'true'});
  const area = h('div', {class: 'editor-area'}, backdrop, text);
  const validate = h('button', {type: 'button', class: 'secondary', id: 'validate', text: 'Check now'});
  const format = h('button', {type: 'button', class: 'secondary', id: 'format', text: 'Format'});
  const publish = h('button', {type: 'button', class: 'primary', id: 'publish', disabled: true, text: 'Publish'});
  const result = h('div', {id: 'editor-result', class: 'editor-result', 'aria-live': 'polite'});
  const origin = h('p', {class: 'meta', id: 'editor-origin'});
  const node = h('section', {class: 'page editor', 'aria-labelledby': 'editor-title'},
    h('div', {class: 'page-head'}, h('h1', {id: 'editor-title', text: 'Policy editor'}),
      h('p', {class: 'summary', id: 'editor-help', text:
        'Checked by the server as you type (Ctrl+Enter: at once). A valid text can be published: it becomes the org\'s next version and goes to every connected agent.'})),
    origin,
    h('label', {for: 'policy-text', class: 'sr-only', text: 'Policy document (JSON)'}),
    area,
    h('div', {class: 'toolbar'}, validate, format, publish),
    result);

  text.addEventListener('input', () => {
    paint([]);
    publish.disabled = true;
    clearTimeout(timer);
    timer = setTimeout(check, PAUSE_MS);
  });
  text.addEventListener('scroll', () => {
    backdrop.scrollTop = text.scrollTop;
    backdrop.scrollLeft = text.scrollLeft;
  });
  text.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      check();
    }
  });
  validate.addEventListener('click', check);
  format.addEventListener('click', () => {
    try {
      text.value = `${JSON.stringify(JSON.parse(text.value), null, 2)}\n`;
      text.dispatchEvent(new Event('input'));
    } catch (error) {
      notify('error', `Cannot format: the text is not JSON (${error.message})`);
    }
  });
  publish.addEventListener('click', async () => {
    const body = text.value;
    if (body !== validated) return;
    publish.disabled = true;
    try {
      const created = await api('POST', '/api/policy', {raw: body});
      replace(result, h('div', {class: 'result ok', role: 'status', id: 'publish-result'},
        h('p', {}, h('strong', {text: `Published ${created.version}`}),
          ` (${created.name}), sent to ${count(created.broadcastedTo, 'connected agent')}. `,
          h('a', {href: `#/policies/${created.version}`, text: `See ${created.version}`}))));
      notify('ok', `Published ${created.version}`);
      validated = null;
    } catch (error) {
      showError(error);
    }
  });

  async function check() {
    clearTimeout(timer);
    const body = text.value;
    const mine = ++sequence;
    replace(result, h('p', {class: 'muted', text: 'Checking…'}));
    try {
      const answer = await api('POST', '/api/policy/validate', {raw: body});
      if (mine !== sequence || text.value !== body) return;
      validated = body;
      publish.disabled = false;
      paint([]);
      const enabled = answer.rules.filter((r) => r.enabled).length;
      replace(result, h('div', {class: 'result ok', role: 'status', id: 'validation-ok'},
        h('p', {}, h('strong', {text: 'Valid.'}),
          ` “${answer.name}”: ${count(answer.rules.length, 'rule')}, ${enabled} enabled, for org ${answer.orgId}.`)));
    } catch (error) {
      if (mine !== sequence || text.value !== body) return;
      validated = null;
      publish.disabled = true;
      showError(error);
    }
  }

  /** Lists the errors of an answer, each with its path, line and column, and marks them. */
  function showError(error) {
    const body = text.value;
    let items = error.errors && error.errors.length ? error.errors : [{path: error.path || '', message: error.message}];
    const found = error.code === 'malformed_json' ? /line (\d+) column (\d+)/.exec(error.message) : null;
    const map = spans(body);
    items = items.map((item) => {
      if (found) {
        const at = offsetOf(body, Number(found[1]), Number(found[2]));
        return {...item, span: {start: at, end: Math.min(body.length, at + 1), exact: true}};
      }
      return {...item, span: item.path ? locate(body, item.path, map) : null};
    });
    const title = error.status === 422 ? `${count(items.length, 'error')}: nothing was stored`
      : error.status === 400 ? 'The text is not valid JSON'
        : `The server refused the document (${error.status || 'no answer'})`;
    replace(result, h('div', {class: 'result bad', role: 'alert', id: 'validation-errors'},
      h('p', {}, h('strong', {text: title})),
      h('ol', {class: 'errors', id: 'editor-errors'}, items.map((item) => {
        const where = item.span ? lineColumn(body, item.span.start) : null;
        const go = h('button', {type: 'button', class: 'error-path link', title: 'Show in the text'},
          h('code', {text: item.path || (found ? `line ${found[1]}` : 'document')}));
        go.addEventListener('click', () => {
          if (!item.span) return;
          text.focus();
          text.setSelectionRange(item.span.start, item.span.end);
        });
        return h('li', {data: {path: item.path || ''}}, go, ' ', h('span', {class: 'message', text: item.message}),
          where ? h('span', {class: 'where', text: ` (line ${where.line}, column ${where.column}${item.span.exact ? '' : ', in the enclosing value'})`}) : null);
      }))));
    paint(items.map((i) => i.span).filter(Boolean));
  }

  /** Draws the text behind the textarea with the error spans marked. */
  function paint(marks) {
    const body = text.value;
    const ranges = marks.map((m) => [m.start, Math.max(m.end, m.start + 1)]).sort((a, b) => a[0] - b[0]);
    const merged = [];
    for (const [start, end] of ranges) {
      const last = merged[merged.length - 1];
      if (last && start <= last[1]) last[1] = Math.max(last[1], end);
      else merged.push([start, end]);
    }
    const parts = [];
    let at = 0;
    for (const [start, end] of merged) {
      parts.push(body.slice(at, start), h('mark', {text: body.slice(start, end)}));
      at = end;
    }
    // A trailing newline keeps the last line's height equal to the textarea's.
    parts.push(`${body.slice(at)}\n`);
    replace(backdrop, ...parts);
  }

  async function load() {
    if (started) return;
    started = true;
    if (draft) {
      text.value = draft.text;
      replace(origin, `Starting from ${draft.origin}.`);
      draft = null;
    } else {
      try {
        const active = await api('GET', '/api/policy/active');
        const doc = {name: active.name};
        if (active.description) doc.description = active.description;
        doc.rules = active.rules;
        text.value = `${JSON.stringify(doc, null, 2)}\n`;
        replace(origin, `Starting from the active policy, ${active.version}.`);
      } catch (error) {
        text.value = TEMPLATE;
        replace(origin, error.status === 404 ? 'No policy in this org yet: starting from an example.' : `Starting from an example (${error.message}).`);
      }
    }
    paint([]);
    check();
  }

  return {node, topics: [], load, destroy: () => clearTimeout(timer)};
}
