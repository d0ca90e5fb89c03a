// Live updates: the admin event stream (`GET /api/admin/events`), read with fetch because an
// EventSource cannot send the bearer header (and the token must not go into the URL). `ready`
// means "fetch what you show now", `changed` names the topics to fetch again. On a broken
// stream it reconnects with backoff (1 s doubling to 30 s); the page also polls slowly as a
// backstop (see main.js), so a console behind a proxy that buffers streams still updates.

import {session, url} from './api.js';

export class Live {
  /**
   * `onReady()` after each (re)connect, `onChanged(topics)` per `changed` event,
   * `onStatus(state, detail)` with `connecting`, `live`, `retrying` or `stopped`.
   */
  constructor({onReady, onChanged, onStatus}) {
    this.onReady = onReady;
    this.onChanged = onChanged;
    this.onStatus = onStatus;
    this.abort = null;
    this.generation = 0;
  }

  /** (Re)starts the stream for the session's org. */
  start() {
    this.stop();
    const generation = ++this.generation;
    this.run(generation);
  }

  stop() {
    this.generation++;
    if (this.abort) this.abort.abort();
    this.abort = null;
  }

  async run(generation) {
    let delay = 1000;
    while (generation === this.generation) {
      this.onStatus('connecting');
      const abort = new AbortController();
      this.abort = abort;
      let unauthorized = false;
      try {
        const response = await fetch(url('/api/admin/events'), {
          headers: {Authorization: `Bearer ${session.token}`, Accept: 'text/event-stream'},
          cache: 'no-store', credentials: 'omit', redirect: 'error', referrerPolicy: 'no-referrer',
          signal: abort.signal,
        });
        if (response.status === 401) {
          unauthorized = true;
        } else if (response.ok && response.body) {
          await this.read(response.body, generation, () => {
            delay = 1000;
          });
        }
      } catch {
        // A network error or the abort of stop(): decided below.
      }
      if (generation !== this.generation) return;
      if (unauthorized) {
        this.onStatus('stopped', 'the token is no longer accepted');
        session.onUnauthorized();
        return;
      }
      this.onStatus('retrying', Math.round(delay / 1000));
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 30000);
    }
  }

  /** Reads server-sent events until the stream ends. */
  async read(body, generation, connected) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const {value, done} = await reader.read();
      if (done || generation !== this.generation) return;
      buffer += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = parseEvent(block);
        if (!event) continue;
        if (event.name === 'ready') {
          connected();
          this.onStatus('live');
          this.onReady();
        } else if (event.name === 'changed') {
          try {
            this.onChanged(JSON.parse(event.data).topics || []);
          } catch {
            this.onChanged(['agents', 'policies', 'approvals', 'blocks', 'audit']);
          }
        }
      }
    }
  }
}

/** One event block: its `event:` name and `data:` lines; `null` for a comment (keep-alive). */
export function parseEvent(block) {
  let name = 'message';
  const data = [];
  let any = false;
  for (const line of block.split('\n')) {
    if (line === '' || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') name = value;
    else if (field === 'data') data.push(value);
    else continue;
    any = true;
  }
  return any ? {name, data: data.join('\n')} : null;
}
