// Words for what the server sends: times relative to now, actions as sentences, rules as
// their type and key settings.

/** `3 min ago`, `in 58 min`, `just now`. */
export function ago(iso, now = Date.now()) {
  const ms = new Date(iso).getTime() - now;
  if (Number.isNaN(ms)) return String(iso);
  const future = ms > 0;
  const s = Math.abs(ms) / 1000;
  if (s < 5) return 'just now';
  const [n, unit] = s < 60 ? [s, 's'] : s < 3600 ? [s / 60, 'min'] : s < 86400 ? [s / 3600, 'h'] : [s / 86400, 'd'];
  const text = `${Math.floor(n)} ${unit}`;
  return future ? `in ${text}` : `${text} ago`;
}

/** The exact local time with the zone, for tooltips and tables. */
export function exact(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toLocaleString(undefined, {
    year: 'numeric', month: 'short', day: 'numeric',
    hour: '2-digit', minute: '2-digit', second: '2-digit', timeZoneName: 'short',
  });
}

/** What an action record does, as a short sentence. */
export function describeAction(action) {
  if (!action || typeof action !== 'object') return 'unknown action';
  switch (action.action) {
    case 'kill_process':
      return `Kill process ${action.pid}${action.process ? ` (${action.process})` : ''}`;
    case 'quarantine_file':
      return `Quarantine file ${action.path}`;
    case 'block_ip':
      return `Block ${action.ip} for ${action.duration} (${action.scope} scope)`;
    case 'isolate_host':
      return `Isolate host${action.host ? ` ${action.host}` : ''} from the network`;
    case 'alert':
      return `Alert (${action.severity}, ${action.count} events) to ${(action.channels || []).join(', ')}`;
    case 'approval_request':
      return `Approval for: ${describeAction(action.request)}`;
    case 'custom':
      return `Custom action ${action.name}`;
    default:
      return String(action.action);
  }
}

/** The target of an action: what it will touch. */
export function actionTarget(action) {
  switch (action && action.action) {
    case 'kill_process': return `PID ${action.pid}${action.process ? ` (${action.process})` : ''}`;
    case 'quarantine_file': return action.path;
    case 'block_ip': return action.ip;
    case 'isolate_host': return action.host || 'the agent\'s own host';
    default: return '';
  }
}

/** A rule's settings as one line: `trigger malware, action kill_process`. */
export function describeConfig(config) {
  return Object.entries(config || {})
    .map(([k, v]) => `${k} ${typeof v === 'object' ? JSON.stringify(v) : v}`)
    .join(', ');
}

/** A rule as one line: its type and settings. */
export function describeRule(rule) {
  if (!rule) return '';
  const settings = describeConfig(rule.config);
  return `${rule.type}${settings ? `: ${settings}` : ''}${rule.enabled === false ? ' (disabled)' : ''}`;
}

/** `1 agent`, `3 agents`. */
export function count(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}
