// Building the page: elements from data with textContent only (never HTML from strings: the
// server's Content-Security-Policy enforces Trusted Types with no policy, so an HTML sink
// would throw), keyed lists that keep unchanged rows (and the focus and input in them), empty
// and error states, and a modal confirmation dialog.

import {ago, exact} from './format.js';

/**
 * An element: `h('td', {class: 'ip'}, text, child, ...)`.
 * Attributes: `class`, `text`, `on: {click: fn}`, `data: {key: value}`, booleans (`disabled`,
 * `hidden`, `open`...) and any other attribute by name (set as a string, never parsed).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') {
      el.className = Array.isArray(value) ? value.filter(Boolean).join(' ') : value;
    } else if (name === 'text') {
      el.textContent = String(value);
    } else if (name === 'on') {
      for (const [event, handler] of Object.entries(value)) el.addEventListener(event, handler);
    } else if (name === 'data') {
      for (const [key, v] of Object.entries(value)) el.dataset[key] = String(v);
    } else if (name === 'value') {
      el.value = value;
    } else if (name.startsWith('on') || name === 'style' || name === 'srcdoc') {
      throw new Error(`h(): attribute \`${name}\` is not allowed; use \`on\` or a class`);
    } else if (value === true) {
      el.setAttribute(name, '');
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const signatures = new WeakMap();

/**
 * Renders `items` into `container` by key: a child whose item is unchanged is kept as it is
 * (with the focus and any text typed into it), changed ones are rebuilt, gone ones removed,
 * and the order follows `items`. `render(item)` makes the element of one item.
 */
export function reconcile(container, items, key, render) {
  const existing = new Map();
  for (const child of [...container.children]) {
    if (child.dataset.key !== undefined) existing.set(child.dataset.key, child);
    else child.remove();
  }
  let previous = null;
  for (const item of items) {
    const k = String(key(item));
    const signature = JSON.stringify(item);
    let node = existing.get(k);
    if (node && signatures.get(node) === signature) {
      existing.delete(k);
    } else {
      const fresh = render(item);
      fresh.dataset.key = k;
      signatures.set(fresh, signature);
      if (node) {
        const hadFocus = node.contains(document.activeElement);
        node.replaceWith(fresh);
        existing.delete(k);
        if (hadFocus) fresh.focus();
      }
      node = fresh;
    }
    const expected = previous ? previous.nextSibling : container.firstChild;
    if (node !== expected) container.insertBefore(node, expected);
    previous = node;
  }
  for (const gone of existing.values()) gone.remove();
}

/** A message for a list with nothing in it. */
export function empty(text, hint) {
  return h('div', {class: 'empty', role: 'status'}, h('p', {text}), hint ? h('p', {class: 'hint', text: hint}) : null);
}

/** A failed load, with what the server said and a way to try again. */
export function failure(error, retry) {
  return h('div', {class: 'error-state', role: 'alert'},
    h('p', {class: 'error-title', text: 'Could not load this page'}),
    h('p', {text: error.message || String(error)}),
    retry ? h('button', {type: 'button', on: {click: retry}, text: 'Try again'}) : null);
}

/** A short-lived message in the page's status line (`kind`: `ok` or `error`). */
export function notify(kind, text) {
  const line = document.getElementById('status-line');
  if (!line) return;
  replace(line, h('span', {class: ['status-message', kind], text}));
  line.dataset.kind = kind;
}

/** A labelled form control: `<label>text <control></label>`. */
export function field(label, control, hint) {
  return h('label', {class: 'field'}, h('span', {class: 'field-label', text: label}), control,
    hint ? h('span', {class: 'hint', text: hint}) : null);
}

/**
 * Asks for confirmation in a modal dialog (Escape or Cancel: no). The dialog's buttons are
 * focusable in order; `confirmLabel` names what happens.
 */
export function confirm({title, body, confirmLabel, danger = false}) {
  return new Promise((resolve) => {
    const cancel = h('button', {type: 'button', class: 'secondary', text: 'Cancel'});
    const ok = h('button', {type: 'button', class: danger ? 'danger' : 'primary', text: confirmLabel});
    const dialog = h('dialog', {class: 'confirm', 'aria-labelledby': 'confirm-title'},
      h('h2', {id: 'confirm-title', text: title}),
      ...[].concat(body).map((line) => h('p', {text: line})),
      h('div', {class: 'actions'}, cancel, ok));
    const done = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    cancel.addEventListener('click', () => done(false));
    ok.addEventListener('click', () => done(true));
    dialog.addEventListener('cancel', (event) => {
      event.preventDefault();
      done(false);
    });
    document.body.appendChild(dialog);
    dialog.showModal();
    cancel.focus();
  });
}

/** A `<time>` showing `iso` relative to now, the exact time in its tooltip. */
export function time(iso, never = 'never') {
  if (!iso) return h('span', {class: 'muted', text: never});
  return h('time', {class: 'rel', datetime: iso, title: exact(iso)}, ago(iso));
}
