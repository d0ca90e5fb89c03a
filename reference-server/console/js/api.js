// The API client: the session (the bearer token, kept in this tab's sessionStorage and never
// in a URL or a cookie; who it is; the org a global admin picked) and one `api()` call that
// sends the token as a header and unwraps the JSON envelope.

const TOKEN_KEY = 'policy-console.token';
const ORG_KEY = 'policy-console.org';

/** An error answer: `status`, `code`, `message`, `path` and every validation error. */
export class ApiError extends Error {
  constructor(status, code, message, path = null, errors = []) {
    super(message);
    this.status = status;
    this.code = code;
    this.path = path;
    this.errors = errors;
  }
}

/** The signed-in admin. */
export const session = {
  token: sessionStorage.getItem(TOKEN_KEY),
  /** `{actor, global, orgId}` from `GET /api/admin/me`. */
  identity: null,
  /** The org every call acts on. */
  org: null,
  /** Called once when the server answers 401 (the token was revoked or the server reset). */
  onUnauthorized: () => {},

  signIn(token) {
    this.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
  },

  signOut() {
    this.token = null;
    this.identity = null;
    this.org = null;
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(ORG_KEY);
  },

  /** Sets who the token is; an org admin is bound to its org, a global admin keeps its pick. */
  setIdentity(identity) {
    this.identity = identity;
    this.org = identity.global ? (sessionStorage.getItem(ORG_KEY) || 'default') : identity.orgId;
  },

  pickOrg(org) {
    this.org = org;
    sessionStorage.setItem(ORG_KEY, org);
  },
};

/**
 * The URL of `path` with `params` (empty values left out) and, for a global admin, the org it
 * picked (an org admin's token already says its org).
 */
export function url(path, params = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') query.set(name, String(value));
  }
  if (session.identity && session.identity.global && session.org) query.set('org_id', session.org);
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/**
 * Calls the API: `api('GET', '/api/agents')`, `api('POST', '/api/policy', {raw: text})`,
 * `api('POST', path, {body: {reason}})`. Resolves to the envelope's `data`; rejects with an
 * `ApiError`.
 */
export async function api(method, path, {params, body, raw} = {}) {
  const headers = {Accept: 'application/json'};
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  let payload;
  if (raw !== undefined) {
    payload = raw;
    headers['Content-Type'] = 'application/json';
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers['Content-Type'] = 'application/json';
  }
  let response;
  try {
    response = await fetch(url(path, params), {
      method, headers, body: payload,
      cache: 'no-store', credentials: 'omit', redirect: 'error', referrerPolicy: 'no-referrer',
    });
  } catch (error) {
    throw new ApiError(0, 'network', `cannot reach the server (${error.message})`);
  }
  let envelope;
  try {
    envelope = await response.json();
  } catch {
    throw new ApiError(response.status, 'bad_answer', `the server answered ${response.status} without JSON`);
  }
  if (envelope && envelope.ok === true) return envelope.data;
  const error = (envelope && envelope.error) || {};
  const failure = new ApiError(response.status, error.code || 'unknown',
    error.message || `the server answered ${response.status}`, error.path || null, error.errors || []);
  if (response.status === 401) session.onUnauthorized(failure);
  throw failure;
}

/** A version's document is immutable: each is fetched once per org. */
const versions = new Map();

/** `GET /api/policy/versions/:version` of the current org, cached. */
export function policyVersion(version) {
  const key = `${session.org}/${version}`;
  if (!versions.has(key)) {
    const loading = api('GET', `/api/policy/versions/${encodeURIComponent(version)}`);
    loading.catch(() => versions.delete(key));
    versions.set(key, loading);
  }
  return versions.get(key);
}
