// Approvals: each pending request with its whole context (what will be done, to what, on
// which host, by which rule of which policy version, when it expires) and Approve / Deny with
// a reason; below, the decisions already made. New requests appear as they arrive (the admin
// event stream); a card being typed into is kept as it is.

import {api, policyVersion} from '../api.js';
import {h, replace, reconcile, empty, failure, notify, time} from '../dom.js';
import {actionTarget, describeAction, describeRule, exact} from '../format.js';

export default function approvals() {
  let hosts = new Map();
  const cards = h('div', {class: 'cards', id: 'approval-cards'});
  const pendingBody = h('div', {id: 'pending'}, h('p', {class: 'loading', text: 'Loading approval requests…'}));
  const historyRows = h('tbody', {id: 'history-rows'});
  const historyBody = h('div', {class: 'table-wrap', id: 'history'});
  const node = h('section', {class: 'page approvals', 'aria-labelledby': 'approvals-title'},
    h('div', {class: 'page-head'}, h('h1', {id: 'approvals-title', text: 'Approvals'}),
      h('p', {class: 'summary', text: 'Actions a rule asked a person to approve before the agent runs them.'})),
    h('h2', {text: 'Pending'}),
    pendingBody,
    h('h2', {text: 'Recent decisions'}),
    historyBody);

  function host(agentId) {
    const agent = hosts.get(agentId);
    return agent ? agent.hostname : null;
  }

  function card(approval) {
    const action = approval.action;
    const hostname = host(approval.agentId);
    const agent = hosts.get(approval.agentId);
    const expired = new Date(approval.expiresAt).getTime() <= Date.now();
    const rule = h('dd', {class: 'rule'}, `Rule ${action.rule} of policy ${action.policyVersion}`);
    policyVersion(action.policyVersion).then((policy) => {
      const found = policy.rules[action.rule];
      rule.appendChild(h('span', {class: 'rule-detail'}, ` (${policy.name}): `,
        h('code', {text: found ? describeRule(found) : 'this rule is not in that version'})));
    }, () => {
      rule.appendChild(h('span', {class: 'muted', text: ' (that version cannot be read)'}));
    });
    const reasonId = `reason-${approval.id}`;
    const reason = h('input', {type: 'text', id: reasonId, class: 'reason', maxlength: 2000, autocomplete: 'off',
      placeholder: 'why (recorded in the audit)'});
    const message = h('p', {class: 'card-error', role: 'alert'});
    const approve = h('button', {type: 'button', class: 'primary approve', disabled: expired,
      text: 'Approve'});
    const deny = h('button', {type: 'button', class: 'danger deny', disabled: expired, text: 'Deny'});
    const decide = async (yes) => {
      approve.disabled = true;
      deny.disabled = true;
      replace(message);
      const what = `${describeAction(action)} on ${hostname || approval.agentId}`;
      try {
        const text = reason.value.trim();
        await api('POST', `/api/approvals/${encodeURIComponent(approval.id)}/${yes ? 'approve' : 'deny'}`,
          {body: text ? {reason: text} : {}});
        notify('ok', `${yes ? 'Approved' : 'Denied'}: ${what}`);
        await load();
      } catch (error) {
        replace(message, error.message);
        approve.disabled = false;
        deny.disabled = false;
        if (error.status === 409) load();
      }
    };
    approve.addEventListener('click', () => decide(true));
    deny.addEventListener('click', () => decide(false));
    const titleId = `title-${approval.id}`;
    return h('article', {class: ['card', expired && 'expired'], 'aria-labelledby': titleId, data: {approval: approval.id}},
      h('h3', {id: titleId, class: 'card-title'}, describeAction(action),
        h('span', {class: 'on-host'}, ' on ', h('strong', {class: 'host', text: hostname || 'unknown host'}))),
      h('dl', {class: 'facts'},
        h('dt', {text: 'Target'}), h('dd', {class: 'target'}, h('code', {text: actionTarget(action) || action.action})),
        h('dt', {text: 'Host'}), h('dd', {}, h('span', {class: 'host', text: hostname || '?'}), ' ',
          h('span', {class: 'mono muted', text: approval.agentId}), ' ',
          agent ? h('span', {class: ['badge', agent.online ? 'ok' : 'off'], text: agent.online ? 'online' : 'offline'}) : null),
        h('dt', {text: 'Why'}), rule,
        h('dt', {text: 'Event'}), h('dd', {class: 'mono'}, action.eventId || h('span', {class: 'muted', text: 'not given'})),
        h('dt', {text: 'Requested'}), h('dd', {}, time(approval.createdAt)),
        h('dt', {text: 'Expires'}), h('dd', {}, expired ? h('strong', {class: 'bad', text: 'expired'}) : time(approval.expiresAt),
          h('span', {class: 'muted', text: ` (${exact(approval.expiresAt)})`}))),
      h('details', {}, h('summary', {text: 'Request as sent'}), h('pre', {class: 'json', text: JSON.stringify(action, null, 2)})),
      h('div', {class: 'decide'},
        h('label', {for: reasonId, text: 'Reason'}), reason, approve, deny),
      message);
  }

  function historyRow(approval) {
    return h('tr', {},
      h('td', {}, h('span', {class: ['badge', approval.status], text: approval.status})),
      h('td', {text: describeAction(approval.action)}),
      h('td', {class: 'host', text: host(approval.agentId) || approval.agentId}),
      h('td', {class: 'mono', text: approval.decidedBy || '—'}),
      h('td', {text: approval.reason || ''}),
      h('td', {}, time(approval.decidedAt || approval.createdAt)));
  }

  async function load() {
    let waiting;
    let recent;
    let agents;
    try {
      [waiting, recent, agents] = await Promise.all([
        api('GET', '/api/approvals', {params: {status: 'pending', limit: 1000}}),
        api('GET', '/api/approvals', {params: {status: 'all', limit: 60}}),
        api('GET', '/api/agents'),
      ]);
    } catch (error) {
      replace(pendingBody, failure(error, load));
      return;
    }
    hosts = new Map(agents.map((a) => [a.agentId, a]));
    // Oldest first: the one closest to its expiry is on top.
    const pending = waiting.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
    if (pending.length === 0) {
      replace(pendingBody, empty('No approval requests are waiting.',
        'Rules with requireApproval ask here before an agent kills, quarantines, blocks or isolates.'));
    } else {
      if (!pendingBody.contains(cards)) replace(pendingBody, cards);
      reconcile(cards, pending, (a) => a.id, card);
    }
    const decided = recent.filter((a) => a.status !== 'pending').slice(0, 50);
    if (decided.length === 0) {
      replace(historyBody, empty('No decisions yet.'));
    } else {
      if (!historyBody.contains(historyRows)) {
        replace(historyBody, h('table', {class: 'data', id: 'history-table'},
          h('thead', {}, h('tr', {}, ['Status', 'Action', 'Host', 'Decided by', 'Reason', 'When']
            .map((name) => h('th', {scope: 'col', text: name})))), historyRows));
      }
      reconcile(historyRows, decided, (a) => a.id, historyRow);
    }
  }

  return {node, topics: ['approvals'], minGap: 300, load};
}
