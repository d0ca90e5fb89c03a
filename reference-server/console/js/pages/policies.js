// Policies: the org's versions (newest first, paged; signed ones marked with their key id),
// one version's signature, rules and JSON, its staged rollout (state, stages, where each agent
// stands; pause, resume, advance, abort), and a line diff between any two versions. The page is a list beside a detail made of sections
// (`sections(version)`), so later views of a version (its rollout and stages) are one more
// section, and the routes (`#/policies/v3`, `#/policies/diff/v1/v3`) one more case.

import {api, policyVersion} from '../api.js';
import {h, replace, empty, failure, field, notify, confirm, time} from '../dom.js';
import {count, describeConfig, exact} from '../format.js';
import {diffLines} from '../diff.js';
import {setDraft} from './editor.js';

const PAGE = 50;

export default function policies({params, navigate}) {
  let versions = [];
  let cursor = null;
  let latest = null;
  let shown = null;
  const list = h('ol', {class: 'versions', id: 'version-list', reversed: true});
  const more = h('button', {type: 'button', class: 'secondary small', id: 'older-versions', hidden: true, text: 'Older versions'});
  const from = h('select', {id: 'diff-from'});
  const to = h('select', {id: 'diff-to'});
  const compare = h('form', {class: 'compare', id: 'compare-form', 'aria-label': 'Compare two versions'},
    h('h2', {text: 'Compare'}), field('From', from), field('To', to),
    h('button', {type: 'submit', class: 'primary small', id: 'compare', text: 'Show diff'}));
  // The rollout of the version shown: redrawn on every load (a rollout moves; versions do not).
  const rolloutBox = h('section', {class: 'rollout', id: 'rollout', 'aria-labelledby': 'rollout-title', hidden: true});
  let rollouts = [];
  const detail = h('div', {class: 'detail', id: 'policy-detail'}, h('p', {class: 'loading', text: 'Loading versions…'}));
  const aside = h('aside', {class: 'side', 'aria-label': 'Versions'}, h('h2', {text: 'Versions'}), list, more, compare);
  const node = h('section', {class: 'page policies', 'aria-labelledby': 'policies-title'},
    h('div', {class: 'page-head'}, h('h1', {id: 'policies-title', text: 'Policies'}),
      h('p', {class: 'summary', id: 'policies-summary'})),
    h('div', {class: 'split'}, aside, detail));

  compare.addEventListener('submit', (event) => {
    event.preventDefault();
    if (from.value && to.value) navigate(`#/policies/diff/${from.value}/${to.value}`);
  });
  more.addEventListener('click', async () => {
    more.disabled = true;
    try {
      await page(cursor);
    } finally {
      more.disabled = false;
    }
  });

  async function page(before) {
    const answer = await api('GET', '/api/policy/versions', {params: {limit: PAGE, cursor: before}});
    versions = before ? versions.concat(answer.versions) : answer.versions;
    cursor = answer.nextCursor;
    if (!before) latest = versions[0] || null;
    renderList();
  }

  function selected() {
    if (params[0] === 'diff') return params.slice(1, 3);
    return [params[0] || (latest && latest.version)];
  }

  function renderList() {
    const [a, b] = selected();
    replace(list, versions.map((v) => h('li', {},
      h('a', {href: `#/policies/${v.version}`, 'aria-current': v.version === a || v.version === b ? 'page' : null},
        h('span', {class: 'version', text: v.version}), ' ',
        h('span', {class: 'name', text: v.name}),
        v === latest ? h('span', {class: 'badge ok', text: 'active'}) : null,
        v.keyId ? h('span', {class: 'badge signed', title: `Signed by operator key ${v.keyId}`, text: 'signed'}) : null,
        h('span', {class: 'meta'}, `${count(v.ruleCount, 'rule')} · `, time(v.createdAt))))));
    more.hidden = cursor === null || cursor === undefined;
    const options = () => versions.map((v) => h('option', {value: v.version}, `${v.version} · ${v.name}`));
    const keepFrom = from.value;
    const keepTo = to.value;
    replace(from, options());
    replace(to, options());
    from.value = params[0] === 'diff' ? params[1] : keepFrom || (versions[1] || versions[0] || {}).version || '';
    to.value = params[0] === 'diff' ? params[2] : keepTo || (versions[0] || {}).version || '';
    compare.hidden = versions.length < 2;
    replace(node.querySelector('#policies-summary'), versions.length
      ? `${latest.version} is active · ${count(versions.length, 'version')}${cursor ? '+' : ''} in this org`
      : '');
  }

  async function showVersion(version) {
    const policy = await policyVersion(version);
    const isLatest = latest && latest.version === policy.version;
    const enabled = policy.rules.filter((r) => r.enabled !== false).length;
    const previous = `v${Number(policy.version.slice(1)) - 1}`;
    const edit = h('button', {type: 'button', class: 'secondary', id: 'edit-copy', text: 'Edit as a new version'});
    edit.addEventListener('click', () => {
      setDraft(JSON.stringify(documentOf(policy), null, 2), `a copy of ${policy.version}`);
      navigate('#/editor');
    });
    replace(detail,
      h('div', {class: 'detail-head'},
        h('h2', {id: 'version-title'}, h('span', {class: 'version', text: policy.version}), ' ', policy.name,
          isLatest ? h('span', {class: 'badge ok', text: 'active'}) : null),
        h('div', {class: 'actions'},
          policy.version !== 'v1' ? h('a', {class: 'button secondary', href: `#/policies/diff/${previous}/${policy.version}`, text: `Diff with ${previous}`}) : null,
          edit)),
      policy.description ? h('p', {class: 'description', text: policy.description}) : null,
      h('p', {class: 'meta'}, `Created ${exact(policy.createdAt)} · ${count(policy.rules.length, 'rule')}, ${enabled} enabled · `,
        h('span', {class: 'mono', text: policy.id})),
      signatureLine(policy),
      rolloutBox,
      ...sections(policy));
    renderRollout(policy.version);
  }

  /** The sections of a version's detail, in order. */
  function sections(policy) {
    return [
      h('section', {'aria-labelledby': 'rules-title'},
        h('h3', {id: 'rules-title', text: 'Rules'}),
        h('table', {class: 'data rules'},
          h('thead', {}, h('tr', {}, ['#', 'Type', 'State', 'Settings'].map((name) => h('th', {scope: 'col', text: name})))),
          h('tbody', {}, policy.rules.map((rule, index) => h('tr', {class: rule.enabled === false ? 'disabled' : ''},
            h('td', {class: 'mono', text: String(index)}),
            h('td', {class: 'mono', text: rule.type}),
            h('td', {}, rule.enabled === false ? h('span', {class: 'badge off', text: 'disabled'}) : h('span', {class: 'badge ok', text: 'enabled'})),
            h('td', {}, h('code', {text: describeConfig(rule.config)}))))))),
      h('section', {'aria-labelledby': 'document-title'},
        h('h3', {id: 'document-title', text: 'Document'}),
        h('pre', {class: 'json', id: 'policy-json', tabindex: '0', text: JSON.stringify(documentOf(policy), null, 2)})),
    ];
  }

  /** The newest rollout of `version`, if any, with its stages, agents and operations. */
  function renderRollout(version) {
    const rollout = rollouts.find((r) => r.version === version);
    rolloutBox.hidden = !rollout;
    if (!rollout) {
      replace(rolloutBox);
      return;
    }
    const active = rollout.state === 'running' || rollout.state === 'paused';
    const stateClass = {running: 'ok', paused: 'warn', completed: 'ok', rolled_back: 'refused', aborted: 'off'}[rollout.state] || 'off';
    const operations = active ? (rollout.state === 'running' ? ['pause', 'advance', 'abort'] : ['resume', 'advance', 'abort']) : [];
    const buttons = operations.map((operation) => {
      const button = h('button', {type: 'button', class: operation === 'abort' ? 'danger small' : 'secondary small',
        id: `rollout-${operation}`, text: operation[0].toUpperCase() + operation.slice(1)});
      button.addEventListener('click', () => operate(rollout, operation, button));
      return button;
    });
    const stages = rollout.stages.map((stage, index) => h('li', {class: index === rollout.stage && active ? 'current' : index < rollout.stage ? 'done' : ''},
      `Stage ${index + 1}: `,
      stage.percent ? `${stage.percent} % of the agents` : null,
      stage.percent && stage.agents && stage.agents.length ? ' and ' : null,
      stage.agents && stage.agents.length ? h('span', {class: 'mono', text: stage.agents.join(', ')}) : null,
      stage.soakSecs ? ` · soaks ${stage.soakSecs} s` : null,
      index === rollout.stage && active ? h('span', {class: 'badge ok', text: 'in force'}) : null));
    replace(rolloutBox,
      h('h3', {id: 'rollout-title'}, 'Rollout ', h('span', {class: 'mono', text: rollout.id})),
      h('p', {class: 'meta'},
        h('span', {class: `badge ${stateClass}`, id: 'rollout-state', text: rollout.state.replace('_', ' ')}),
        ` from ${rollout.previous} · stage ${Math.min(rollout.stage + 1, rollout.stages.length)} of ${rollout.stages.length}`,
        ` · gate: at most ${count(rollout.gate.maxFailures, 'refusal')}, ${count(rollout.gate.maxSilent, 'silent agent')} (silent after ${rollout.gate.silentAfterSecs} s)`),
      rollout.reason ? h('p', {class: 'error-text', id: 'rollout-reason', text: rollout.reason}) : null,
      h('ol', {class: 'stages'}, stages),
      buttons.length ? h('div', {class: 'actions'}, buttons) : null);
  }

  async function operate(rollout, operation, button) {
    if (operation === 'abort') {
      const yes = await confirm({
        title: `Abort the rollout of ${rollout.version}?`,
        body: [`The agents of its stage are sent ${rollout.previous} again now.`, 'An aborted rollout cannot be resumed.'],
        confirmLabel: 'Abort rollout',
        danger: true,
      });
      if (!yes) {
        button.focus();
        return;
      }
    }
    button.disabled = true;
    try {
      const answer = await api('POST', `/api/rollouts/${encodeURIComponent(rollout.id)}/${operation}`);
      notify('ok', `Rollout of ${answer.version}: ${answer.state.replace('_', ' ')}.`);
    } catch (error) {
      notify('error', `Could not ${operation} the rollout of ${rollout.version}: ${error.message}`);
    }
    await load();
  }

  async function showDiff(a, b) {
    const [left, right] = await Promise.all([policyVersion(a), policyVersion(b)]);
    const ops = diffLines(JSON.stringify(documentOf(left), null, 2).split('\n'),
      JSON.stringify(documentOf(right), null, 2).split('\n'));
    const head = h('div', {class: 'detail-head'}, h('h2', {id: 'diff-title'}, 'Changes from ',
      h('span', {class: 'version', text: left.version}), ' to ', h('span', {class: 'version', text: right.version})));
    if (!ops) {
      replace(detail, head, empty('These versions differ in too many lines to show side by side.'));
      return;
    }
    const added = ops.filter((o) => o.kind === 'add').length;
    const removed = ops.filter((o) => o.kind === 'del').length;
    if (added === 0 && removed === 0) {
      replace(detail, head, empty('The two documents are identical.'));
      return;
    }
    const sign = {same: ' ', add: '+', del: '−'};
    replace(detail, head,
      h('p', {class: 'meta', id: 'diff-summary'}, `${count(added, 'line')} added, ${count(removed, 'line')} removed · `,
        `${left.name} → ${right.name}`),
      h('div', {class: 'diff-wrap', tabindex: '0', 'aria-label': 'Line diff'},
        h('table', {class: 'diff', id: 'diff'},
          h('thead', {class: 'sr-only'}, h('tr', {}, ['Old line', 'New line', 'Change', 'Text'].map((name) => h('th', {scope: 'col', text: name})))),
          h('tbody', {}, ops.map((op) => h('tr', {class: op.kind},
            h('td', {class: 'ln', text: op.a || ''}),
            h('td', {class: 'ln', text: op.b || ''}),
            h('td', {class: 'sign', 'aria-label': op.kind === 'add' ? 'added' : op.kind === 'del' ? 'removed' : 'unchanged', text: sign[op.kind]}),
            h('td', {class: 'text'}, h('code', {text: op.text}))))))));
  }

  async function load() {
    try {
      [, rollouts] = await Promise.all([page(null),
        api('GET', '/api/rollouts', {params: {limit: 20}}).then((answer) => answer.rollouts)]);
      if (versions.length === 0) {
        replace(detail, empty('No policy has been published in this org yet.', 'Write one in the Editor: it is checked by the server before you publish it.'));
        return;
      }
      // Versions never change: the detail is redrawn only when what it shows is another one
      // (a new latest version), so a refresh keeps the reader's place and focus.
      const key = params[0] === 'diff' ? `diff/${params[1]}/${params[2]}` : params[0] || latest.version;
      if (key === shown) {
        if (params[0] !== 'diff') renderRollout(params[0] || latest.version);
        return;
      }
      if (params[0] === 'diff') await showDiff(params[1], params[2]);
      else await showVersion(params[0] || latest.version);
      shown = key;
    } catch (error) {
      shown = null;
      replace(detail, failure(error, load));
    }
  }

  return {node, topics: ['policies'], minGap: 500, load};
}

/**
 * Whether a version is signed, by which operator key, under which rollout terms: agents pinned
 * to a key (`--policy-key`) run only versions that key signed.
 */
function signatureLine(policy) {
  const signature = policy.signature;
  if (!signature) {
    return h('p', {class: 'signature unsigned', id: 'signature'},
      h('span', {class: 'badge off', text: 'unsigned'}),
      ' Agents pinned to an operator key (--policy-key) refuse this version.');
  }
  const fallback = signature.rollout && signature.rollout.fallback;
  return h('p', {class: 'signature', id: 'signature'},
    h('span', {class: 'badge signed', text: 'signed'}),
    ` ${signature.algorithm} by operator key `, h('code', {class: 'key-id', text: signature.keyId}),
    fallback ? `; the signed terms let agents fall back from it to ${fallback}.` : '.');
}

/** The document of a stored version, as it would be posted again. */
function documentOf(policy) {
  const doc = {name: policy.name};
  if (policy.description) doc.description = policy.description;
  doc.rules = policy.rules;
  return doc;
}
