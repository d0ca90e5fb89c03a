// Fleet blocks in force: the address, when it ends, which agent's report set it (by which rule
// of which version), how many reports it collects; lifting one (after a confirmation) pushes
// `unblock` to every agent of the org.

import {api} from '../api.js';
import {h, replace, reconcile, empty, failure, field, notify, confirm, time} from '../dom.js';
import {count} from '../format.js';

export default function blocks() {
  let list = null;
  let hosts = new Map();
  const search = h('input', {type: 'search', id: 'blocks-search', placeholder: 'address or host', autocomplete: 'off'});
  const rows = h('tbody', {id: 'block-rows'});
  const table = h('table', {class: 'data', id: 'blocks-table'},
    h('thead', {}, h('tr', {}, ['Address', 'Ends', 'Reported by', 'Rule', 'Reports', 'Since', '']
      .map((name) => h('th', {scope: 'col', text: name})))),
    rows);
  const noMatch = empty('No block matches the search.');
  const summary = h('p', {class: 'summary'});
  const body = h('div', {class: 'table-wrap'}, h('p', {class: 'loading', text: 'Loading fleet blocks…'}));
  const node = h('section', {class: 'page blocks', 'aria-labelledby': 'blocks-title'},
    h('div', {class: 'page-head'}, h('h1', {id: 'blocks-title', text: 'Fleet blocks'}), summary),
    h('form', {class: 'filters', role: 'search'}, field('Search', search)),
    body);
  node.querySelector('form').addEventListener('submit', (e) => e.preventDefault());
  search.addEventListener('input', render);

  function row(block) {
    const hostname = hosts.get(block.agentId);
    const lift = h('button', {type: 'button', class: 'danger small lift', 'aria-label': `Lift the block on ${block.ip}`, text: 'Lift'});
    lift.addEventListener('click', async () => {
      const yes = await confirm({
        title: `Lift the block on ${block.ip}?`,
        body: ['Every agent of the org removes it from its firewall now.',
          'A rule may block the address again if it keeps misbehaving.'],
        confirmLabel: 'Lift block',
        danger: true,
      });
      if (!yes) {
        lift.focus();
        return;
      }
      lift.disabled = true;
      try {
        const answer = await api('DELETE', `/api/blocks/${encodeURIComponent(block.ip)}`);
        notify('ok', `Lifted the block on ${block.ip}; sent to ${count(answer.broadcastedTo, 'connected agent')}.`);
      } catch (error) {
        notify('error', `Could not lift the block on ${block.ip}: ${error.message}`);
        lift.disabled = false;
      }
      await load();
    });
    return h('tr', {},
      h('th', {scope: 'row', class: 'mono ip', text: block.ip}),
      h('td', {}, block.permanent ? h('strong', {text: 'never (permanent)'}) : time(block.expiresAt)),
      h('td', {}, h('span', {class: 'host', text: hostname || block.agentId}),
        hostname ? h('span', {class: 'mono muted', text: ` ${block.agentId}`}) : null),
      h('td', {}, block.rule === null || block.rule === undefined ? '—' : `#${block.rule} of ${block.policyVersion || '?'}`),
      h('td', {text: String(block.reports)}),
      h('td', {}, time(block.createdAt)),
      h('td', {class: 'actions'}, lift));
  }

  function render() {
    if (!list) return;
    replace(summary, list.length ? `${count(list.length, 'address', 'addresses')} blocked across the fleet` : '');
    if (list.length === 0) {
      replace(body, empty('No fleet blocks are in force.',
        'A block_ip rule with scope fleet blocks an address on every agent of the org.'));
      return;
    }
    const needle = search.value.trim().toLowerCase();
    const shown = list.filter((b) => !needle || b.ip.toLowerCase().includes(needle)
      || (hosts.get(b.agentId) || b.agentId).toLowerCase().includes(needle));
    if (!body.contains(table)) replace(body, table, noMatch);
    reconcile(rows, shown, (b) => b.ip, row);
    table.hidden = shown.length === 0;
    noMatch.hidden = shown.length > 0;
  }

  async function load() {
    try {
      const [blocksInForce, agents] = await Promise.all([api('GET', '/api/blocks'), api('GET', '/api/agents')]);
      hosts = new Map(agents.map((a) => [a.agentId, a.hostname]));
      list = blocksInForce;
      render();
    } catch (error) {
      list = null;
      replace(body, failure(error, load));
    }
  }

  return {node, topics: ['blocks'], minGap: 300, load};
}
