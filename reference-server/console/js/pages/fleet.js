// The fleet: every agent of the org with whether it is online, when it was last seen, the
// policy version it runs, whether that is outdated (against the version the server assigns
// it: the org's latest, or a rollout's stage), a version it refused, and its last error; filtered by state and
// searched by host, id, version or error (`/` focuses the search).

import {api} from '../api.js';
import {h, replace, reconcile, empty, failure, field, time} from '../dom.js';
import {count} from '../format.js';

const FILTERS = [
  ['all', 'All agents'],
  ['online', 'Online'],
  ['offline', 'Offline'],
  ['outdated', 'Outdated'],
  ['errors', 'Reporting an error'],
];

/** What the agent said of the last version offered, when it did not run it. */
function ackBadge(agent) {
  const ack = agent.ack;
  if (!ack || ack.status === 'applied') return null;
  return h('span', {class: 'badge refused', title: ack.error || null, text: `${ack.status} ${ack.version}`});
}

export default function fleet() {
  let agents = null;
  let active = null;
  const search = h('input', {type: 'search', id: 'fleet-search', placeholder: 'host, agent id, version, error', autocomplete: 'off'});
  const state = h('select', {id: 'fleet-filter'}, FILTERS.map(([value, label]) => h('option', {value}, label)));
  const summary = h('p', {class: 'summary', id: 'fleet-summary'});
  const rows = h('tbody', {id: 'fleet-rows'});
  const table = h('table', {class: 'data', id: 'fleet-table'},
    h('caption', {class: 'sr-only', text: 'Agents of the org'}),
    h('thead', {}, h('tr', {}, ['Host', 'Agent', 'Status', 'Last seen', 'Policy', 'Last error', 'Enrolled']
      .map((name) => h('th', {scope: 'col', text: name})))),
    rows);
  const noMatch = empty('No agent matches the search and filter.');
  noMatch.id = 'fleet-none';
  const body = h('div', {class: 'table-wrap'}, h('p', {class: 'loading', text: 'Loading agents…'}));
  const node = h('section', {class: 'page fleet', 'aria-labelledby': 'fleet-title'},
    h('div', {class: 'page-head'}, h('h1', {id: 'fleet-title', text: 'Fleet'}), summary),
    h('form', {class: 'filters', role: 'search'},
      field('Search', search), field('Show', state)),
    body);
  node.querySelector('form').addEventListener('submit', (e) => e.preventDefault());
  search.addEventListener('input', render);
  state.addEventListener('change', render);
  const slash = (event) => {
    if (event.key === '/' && !/^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName)) {
      event.preventDefault();
      search.focus();
    }
  };
  document.addEventListener('keydown', slash);

  function matches(agent) {
    switch (state.value) {
      case 'online': if (!agent.online) return false; break;
      case 'offline': if (agent.online) return false; break;
      case 'outdated': if (!agent.outdated) return false; break;
      case 'errors': if (!agent.lastError) return false; break;
      default: break;
    }
    const needle = search.value.trim().toLowerCase();
    if (!needle) return true;
    return [agent.hostname, agent.agentId, agent.policyVersion, agent.lastError]
      .some((v) => v && String(v).toLowerCase().includes(needle));
  }

  function render() {
    if (!agents) return;
    const online = agents.filter((a) => a.online).length;
    const outdated = agents.filter((a) => a.outdated).length;
    const errors = agents.filter((a) => a.lastError).length;
    replace(summary, `${count(agents.length, 'agent')} · ${online} online · ${outdated} outdated · ${errors} reporting an error`,
      active ? ` · active policy ${active.version} (${active.name})` : ' · no policy published yet');
    if (agents.length === 0) {
      replace(body, empty('No agents are enrolled in this org yet.',
        'Enroll one with the agent\'s --enroll flag or POST /api/agents/enroll; it appears here as soon as it connects.'));
      return;
    }
    const shown = agents.filter(matches);
    if (!body.contains(table)) replace(body, table, noMatch);
    reconcile(rows, shown, (a) => a.agentId, row);
    table.hidden = shown.length === 0;
    noMatch.hidden = shown.length > 0;
  }

  function row(agent) {
    return h('tr', {class: agent.online ? 'online' : 'offline'},
      h('th', {scope: 'row', class: 'host', text: agent.hostname}),
      h('td', {class: 'mono', text: agent.agentId}),
      h('td', {}, agent.online
        ? h('span', {class: 'badge ok', text: 'online'})
        : h('span', {class: 'badge off', text: 'offline'})),
      h('td', {}, time(agent.lastSeen)),
      h('td', {}, agent.policyVersion ? h('span', {class: 'mono', text: agent.policyVersion}) : h('span', {class: 'muted', text: 'none'}),
        agent.outdated ? h('span', {class: 'badge warn', title: agent.assignedVersion ? `should run ${agent.assignedVersion}` : null, text: 'outdated'}) : null,
        ackBadge(agent),
        agent.assignment && agent.assignment !== "the org's latest version"
          ? h('span', {class: 'assignment muted', text: ` ${agent.assignedVersion}: ${agent.assignment}`}) : null),
      h('td', {class: 'error-text'}, agent.lastError ? agent.lastError : h('span', {class: 'muted', text: '—'})),
      h('td', {}, time(agent.enrolledAt)));
  }

  return {
    node,
    topics: ['agents', 'policies'],
    // Heartbeats change the list all the time: at most one refetch every 2 s.
    minGap: 2000,
    async load() {
      try {
        const [list, policy] = await Promise.all([
          api('GET', '/api/agents'),
          api('GET', '/api/policy/active').catch((e) => (e.status === 404 ? null : Promise.reject(e))),
        ]);
        agents = list.sort((a, b) => a.hostname.localeCompare(b.hostname) || a.agentId.localeCompare(b.agentId));
        active = policy;
        render();
      } catch (error) {
        agents = null;
        replace(body, failure(error, () => this.load()));
      }
    },
    destroy() {
      document.removeEventListener('keydown', slash);
    },
  };
}
