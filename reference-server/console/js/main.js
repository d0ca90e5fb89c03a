// The console's entry point: the sign-in screen, the shell (navigation, org, live status),
// the hash router (`#/fleet`, `#/policies/v3`, `#/audit?action=unblock`: no token ever goes
// into a URL) and the refresh of the open page when the admin event stream says its topics
// changed, throttled, with a slow poll as a backstop.

import {api, ApiError, session} from './api.js';
import {h, replace, notify} from './dom.js';
import {Live} from './live.js';
import {ago} from './format.js';
import fleet from './pages/fleet.js';
import approvals from './pages/approvals.js';
import blocks from './pages/blocks.js';
import policies from './pages/policies.js';
import editor from './pages/editor.js';
import audit from './pages/audit.js';

const PAGES = [
  {route: 'fleet', label: 'Fleet', page: fleet},
  {route: 'approvals', label: 'Approvals', page: approvals},
  {route: 'blocks', label: 'Blocks', page: blocks},
  {route: 'policies', label: 'Policies', page: policies},
  {route: 'editor', label: 'Editor', page: editor},
  {route: 'audit', label: 'Audit', page: audit},
];

/** The backstop: every page refetches this often even when the stream says nothing. */
const POLL_MS = 30000;

const app = document.getElementById('app');
let current = null;
let live = null;
let poll = null;
let pending = 0;

// Relative times ("2 min ago") move on between refreshes.
setInterval(() => {
  for (const el of document.querySelectorAll('time.rel')) el.textContent = ago(el.getAttribute('datetime'));
}, 15000);

session.onUnauthorized = () => {
  // Only a signed-in session is ended here; a refused sign-in says so on its own form.
  if (!session.identity) return;
  signOut('The server no longer accepts this token. Sign in again.');
};

start();

async function start() {
  if (!session.token) {
    signInScreen();
    return;
  }
  try {
    session.setIdentity(await api('GET', '/api/admin/me'));
    await shell();
  } catch (error) {
    session.signOut();
    signInScreen(error instanceof ApiError && error.status === 0 ? error.message : null);
  }
}

function signInScreen(message) {
  stopLive();
  document.title = 'Sign in · Policy console';
  const input = h('input', {
    type: 'password', id: 'token', name: 'token', autocomplete: 'off', spellcheck: 'false',
    required: true, 'aria-describedby': 'token-help',
  });
  const error = h('p', {class: 'form-error', id: 'signin-error', role: 'alert'}, message || '');
  const form = h('form', {class: 'signin', 'aria-labelledby': 'signin-title'},
    h('h1', {id: 'signin-title', text: 'Policy console'}),
    h('label', {for: 'token', text: 'Admin token'}),
    input,
    h('p', {class: 'hint', id: 'token-help', text:
      'The token the server printed on its first start, or an org admin token from POST /api/tokens. ' +
      'It stays in this browser tab (sessionStorage) and is sent only as a bearer header; closing the tab forgets it.'}),
    h('button', {type: 'submit', class: 'primary', text: 'Sign in'}),
    error);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    replace(error);
    session.signIn(token);
    try {
      session.setIdentity(await api('GET', '/api/admin/me'));
      input.value = '';
      await shell();
    } catch (failure) {
      session.signOut();
      const text = failure.status === 401 ? 'The server does not know this token.'
        : failure.status === 403 ? 'This is an agent token; the console needs an admin token.'
          : failure.message;
      replace(error, text);
      input.focus();
    }
  });
  replace(app, h('main', {class: 'signin-page', id: 'main'}, form));
  input.focus();
}

function signOut(message) {
  session.signOut();
  if (current) current.destroy();
  current = null;
  signInScreen(message);
}

async function shell() {
  const nav = h('nav', {'aria-label': 'Pages'}, h('ul', {},
    PAGES.map(({route, label}) => h('li', {},
      h('a', {href: `#/${route}`, id: `nav-${route}`, data: {route}}, label,
        route === 'approvals' ? h('span', {class: 'badge count', id: 'pending-count', hidden: true}) : null)))));
  const main = h('main', {id: 'main', tabindex: '-1'});
  const skip = h('a', {class: 'skip', href: '#main', text: 'Skip to content'});
  skip.addEventListener('click', (event) => {
    event.preventDefault();
    main.focus();
  });
  const signOutButton = h('button', {type: 'button', class: 'secondary', id: 'sign-out', text: 'Sign out'});
  signOutButton.addEventListener('click', () => signOut());
  const header = h('header', {class: 'top'},
    skip,
    h('a', {class: 'brand', href: '#/fleet'}, h('img', {src: '/console/favicon.svg', alt: '', width: 22, height: 22}), 'Policy console'),
    nav,
    h('div', {class: 'session'},
      await orgControl(),
      h('span', {class: 'live', id: 'live-status', role: 'status', text: 'connecting'}),
      h('span', {class: 'actor', title: 'Who the audit records for your actions', text: session.identity.actor}),
      signOutButton));
  replace(app, header, h('div', {id: 'status-line', class: 'status-line', role: 'status', 'aria-live': 'polite'}), main);
  window.onhashchange = () => route();
  startLive();
  route();
}

/** The org: a picker for the global admin (known orgs, or type another), a label otherwise. */
async function orgControl() {
  if (!session.identity.global) {
    return h('span', {class: 'org', id: 'org-label', title: 'This token is confined to one org'}, 'Org ', h('strong', {text: session.org}));
  }
  let orgs = [];
  try {
    orgs = await api('GET', '/api/admin/orgs');
  } catch {
    orgs = [session.org];
  }
  const list = h('datalist', {id: 'org-list'}, orgs.map((org) => h('option', {value: org})));
  const input = h('input', {
    id: 'org', list: 'org-list', value: session.org, size: 12, spellcheck: 'false',
    autocomplete: 'off', 'aria-describedby': 'org-help',
  });
  const form = h('form', {class: 'org'},
    h('label', {for: 'org', text: 'Org'}), input, list,
    h('span', {id: 'org-help', class: 'sr-only', text: 'Pick or type an org and press Enter'}));
  const apply = () => {
    const org = input.value.trim();
    if (!org || org === session.org) return;
    session.pickOrg(org);
    startLive();
    route();
    notify('ok', `Now showing org ${org}`);
  };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    apply();
  });
  input.addEventListener('change', apply);
  return form;
}

function parseHash() {
  const hash = location.hash.replace(/^#\/?/, '');
  const [path, query = ''] = hash.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return {parts, query: new URLSearchParams(query)};
}

function route() {
  const {parts, query} = parseHash();
  const entry = PAGES.find((p) => p.route === parts[0]);
  if (!entry) {
    location.replace('#/fleet');
    return;
  }
  for (const link of document.querySelectorAll('nav a')) {
    if (link.dataset.route === entry.route) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (current) current.destroy();
  const main = document.getElementById('main');
  const status = document.getElementById('status-line');
  if (status) replace(status);
  const context = {params: parts.slice(1), query, navigate: (hash) => { location.hash = hash; }};
  current = new Mounted(entry, context, main);
  document.title = `${entry.label} · Policy console`;
  refreshPending();
}

/** The open page, refreshed when its topics change: at once, then at most every `gap`. */
class Mounted {
  constructor(entry, context, main) {
    this.entry = entry;
    this.instance = entry.page(context);
    this.timer = null;
    this.running = false;
    this.queued = false;
    this.last = 0;
    this.duration = 0;
    this.gone = false;
    replace(main, this.instance.node);
    const heading = this.instance.node.querySelector('h1');
    if (heading) heading.setAttribute('tabindex', '-1');
    this.refresh();
    this.poll = setInterval(() => this.refresh(), POLL_MS);
  }

  /** The page's own minimum gap between refreshes, longer when fetching takes long. */
  gap() {
    return Math.max(this.instance.minGap || 500, 4 * this.duration);
  }

  changed(topics) {
    if (topics.some((t) => this.instance.topics.includes(t))) this.refresh();
  }

  refresh() {
    if (this.gone) return;
    if (this.running) {
      this.queued = true;
      return;
    }
    const wait = this.last + this.gap() - Date.now();
    if (wait > 0) {
      if (!this.timer) {
        this.timer = setTimeout(() => {
          this.timer = null;
          this.refresh();
        }, wait);
      }
      return;
    }
    this.running = true;
    const started = Date.now();
    Promise.resolve(this.instance.load())
      .catch(() => {})
      .finally(() => {
        this.running = false;
        this.last = Date.now();
        this.duration = this.last - started;
        if (this.queued) {
          this.queued = false;
          this.refresh();
        }
      });
  }

  destroy() {
    this.gone = true;
    clearTimeout(this.timer);
    clearInterval(this.poll);
    if (this.instance.destroy) this.instance.destroy();
  }
}

function startLive() {
  stopLive();
  live = new Live({
    onReady: () => {
      if (current) current.refresh();
      refreshPending();
    },
    onChanged: (topics) => {
      if (current) current.changed(topics);
      if (topics.includes('approvals')) refreshPending();
    },
    onStatus: (state, detail) => {
      const el = document.getElementById('live-status');
      if (!el) return;
      el.dataset.state = state;
      el.textContent = state === 'live' ? 'live'
        : state === 'retrying' ? `offline, retrying in ${detail} s`
          : state === 'stopped' ? 'stopped' : 'connecting';
      el.title = state === 'live' ? 'Changes appear as they happen' : 'Pages still refresh every 30 s';
    },
  });
  live.start();
  clearInterval(poll);
  poll = setInterval(refreshPending, POLL_MS);
}

function stopLive() {
  if (live) live.stop();
  live = null;
  clearInterval(poll);
}

/** The number of pending approvals, on the navigation and in the tab's title. */
async function refreshPending() {
  let list;
  try {
    list = await api('GET', '/api/approvals', {params: {status: 'pending', limit: 1000}});
  } catch {
    return;
  }
  pending = list.length;
  const badge = document.getElementById('pending-count');
  if (!badge) return;
  badge.hidden = pending === 0;
  badge.textContent = String(pending);
  badge.setAttribute('aria-label', `${pending} pending`);
  const label = current ? current.entry.label : 'Policy console';
  document.title = `${pending ? `(${pending}) ` : ''}${label} · Policy console`;
}
