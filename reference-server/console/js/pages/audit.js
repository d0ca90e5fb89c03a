// The audit trail: the API's filters (agent, address, action, from, to) kept in the page's
// address (`#/audit?action=unblock`), newest first, paged with the server's cursor. On the
// first page new entries appear as they are written; on older pages a note offers them.

import {api} from '../api.js';
import {h, replace, empty, failure, field, time} from '../dom.js';
import {describeAction, exact} from '../format.js';

const ACTIONS = ['block_ip', 'kill_process', 'quarantine_file', 'isolate_host', 'alert', 'custom',
  'approval_request', 'approval_approved', 'approval_denied', 'approval_expired', 'unblock',
  'policy_created', 'overrides_set', 'notify'];

export default function audit({query, navigate}) {
  const cursors = [];
  let hosts = new Map();
  const input = (name, attrs = {}) => h('input', {id: `audit-${name}`, name, autocomplete: 'off', value: query.get(name) || '', ...attrs});
  const agent = input('agent', {placeholder: 'agent id'});
  const ip = input('ip', {placeholder: '203.0.113.7', inputmode: 'decimal'});
  const action = input('action', {list: 'audit-actions', placeholder: 'any'});
  const from = h('input', {type: 'datetime-local', id: 'audit-from', step: 1, value: local(query.get('from'))});
  const to = h('input', {type: 'datetime-local', id: 'audit-to', step: 1, value: local(query.get('to'))});
  const limit = h('select', {id: 'audit-limit'}, ['25', '50', '100', '500'].map((n) => h('option', {value: n}, n)));
  limit.value = query.get('limit') || '50';
  const form = h('form', {class: 'filters audit-filters', id: 'audit-form', role: 'search'},
    field('Agent', agent), field('Address', ip), field('Action', action),
    h('datalist', {id: 'audit-actions'}, ACTIONS.map((a) => h('option', {value: a}))),
    field('From', from), field('To', to), field('Per page', limit),
    h('div', {class: 'filter-buttons'},
      h('button', {type: 'submit', class: 'primary', id: 'audit-apply', text: 'Apply'}),
      h('a', {class: 'button secondary', href: '#/audit', text: 'Clear'})));
  const rows = h('tbody', {id: 'audit-rows'});
  const newer = h('button', {type: 'button', class: 'secondary small', id: 'audit-newer', text: 'Newest'});
  const older = h('button', {type: 'button', class: 'secondary small', id: 'audit-older', text: 'Older'});
  const pageInfo = h('span', {class: 'meta', id: 'audit-page'});
  const notice = h('p', {class: 'notice', hidden: true},
    'New entries were written. ', h('button', {type: 'button', class: 'link', id: 'audit-show-new', text: 'Show the newest'}));
  const body = h('div', {class: 'table-wrap'}, h('p', {class: 'loading', text: 'Loading the audit trail…'}));
  const node = h('section', {class: 'page audit', 'aria-labelledby': 'audit-title'},
    h('div', {class: 'page-head'}, h('h1', {id: 'audit-title', text: 'Audit'}),
      h('p', {class: 'summary', text: 'Every decision: agent reports, policy changes, approvals, unblocks, notifications. Newest first.'})),
    form, notice, body,
    h('div', {class: 'pager'}, newer, pageInfo, older));

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    const set = (name, value) => {
      if (value) params.set(name, value);
    };
    set('agent', agent.value.trim());
    set('ip', ip.value.trim());
    set('action', action.value.trim());
    set('from', from.value ? new Date(from.value).toISOString() : '');
    set('to', to.value ? new Date(to.value).toISOString() : '');
    if (limit.value !== '50') set('limit', limit.value);
    const next = `#/audit${params.toString() ? `?${params}` : ''}`;
    if (location.hash === next) show();
    else navigate(next);
  });
  newer.addEventListener('click', () => {
    cursors.length = 0;
    show();
  });
  notice.querySelector('button').addEventListener('click', () => {
    cursors.length = 0;
    show();
  });
  older.addEventListener('click', () => {
    if (older.dataset.cursor) {
      cursors.push(older.dataset.cursor);
      show();
    }
  });

  async function show() {
    notice.hidden = true;
    const params = {limit: query.get('limit') || '50'};
    for (const name of ['agent', 'ip', 'action', 'from', 'to']) {
      if (query.get(name)) params[name] = query.get(name);
    }
    if (cursors.length) params.cursor = cursors[cursors.length - 1];
    let page;
    try {
      const [answer, agents] = await Promise.all([api('GET', '/api/audit', {params}), api('GET', '/api/agents')]);
      page = answer;
      hosts = new Map(agents.map((a) => [a.agentId, a.hostname]));
    } catch (error) {
      replace(body, failure(error, show));
      return;
    }
    newer.disabled = cursors.length === 0;
    older.disabled = page.nextCursor === null || page.nextCursor === undefined;
    older.dataset.cursor = older.disabled ? '' : String(page.nextCursor);
    replace(pageInfo, cursors.length ? `page ${cursors.length + 1}` : 'newest entries');
    if (page.entries.length === 0) {
      replace(body, empty(cursors.length ? 'No older entries.' : 'No audit entry matches these filters.'));
      return;
    }
    replace(rows, page.entries.map(row));
    replace(body, h('table', {class: 'data', id: 'audit-table'},
      h('thead', {}, h('tr', {}, ['Time', 'Actor', 'Action', 'Outcome', 'Agent', 'Address', 'Rule', 'Detail']
        .map((name) => h('th', {scope: 'col', text: name})))), rows));
  }

  function row(entry) {
    const hostname = entry.agentId ? hosts.get(entry.agentId) : null;
    return h('tr', {data: {entry: entry.id}},
      h('td', {class: 'nowrap'}, h('time', {datetime: entry.time, title: entry.time, text: exact(entry.time)})),
      h('td', {class: 'mono', text: entry.actor}),
      h('td', {class: 'mono action', text: entry.action}),
      h('td', {}, h('span', {class: ['badge', 'outcome', entry.outcome], text: entry.outcome})),
      h('td', {}, entry.agentId ? [h('span', {class: 'host', text: hostname || entry.agentId}),
        hostname ? h('span', {class: 'mono muted', text: ` ${entry.agentId}`}) : null] : h('span', {class: 'muted', text: '—'})),
      h('td', {class: 'mono', text: entry.ip || ''}),
      h('td', {class: 'mono', text: entry.rule === null || entry.rule === undefined ? '' : `#${entry.rule} ${entry.policyVersion || ''}`}),
      h('td', {class: 'detail'}, entry.detail ? h('details', {},
        h('summary', {text: preview(entry.detail)}),
        h('pre', {class: 'json', text: JSON.stringify(entry.detail, null, 2)})) : ''));
  }

  return {
    node,
    topics: ['audit'],
    minGap: 1000,
    async load() {
      if (cursors.length && node.querySelector('#audit-table')) {
        notice.hidden = false;
        return;
      }
      await show();
    },
  };
}

/** One line about an entry's detail. */
function preview(detail) {
  if (detail.reason) return `reason: ${detail.reason}`;
  if (detail.record) return describeAction(detail.record);
  if (detail.name) return String(detail.name);
  if (detail.channel) return `channel ${detail.channel}`;
  const text = JSON.stringify(detail);
  return text.length > 80 ? `${text.slice(0, 77)}…` : text;
}

/** An RFC 3339 time as the value of a `datetime-local` input (local time). */
function local(iso) {
  if (!iso) return '';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return '';
  const pad = (n) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}
