// The change feed in the browser: EventSource cannot send a bearer token, so the stream is read
// with fetch() and parsed here (docs/feed.md). Reconnects with Last-Event-ID after any drop.

import { authHeaders } from './api.js';
import { sleep } from './dom.js';

const RETRY_MS = 3000;

/**
 * Follows `url` until `signal` aborts: `onEvent({event, id, data})` for each event (data parsed
 * as JSON when it is), `onStatus('live'|'offline', detail)` as the connection comes and goes.
 */
export async function follow(url, { onEvent, onStatus, signal }) {
  let lastId = null;
  while (!signal.aborted) {
    try {
      const headers = authHeaders({ Accept: 'text/event-stream' });
      if (lastId) headers['Last-Event-ID'] = lastId;
      const response = await fetch(url, { headers, cache: 'no-store', signal });
      if (!response.ok || !response.body) {
        onStatus('offline', `HTTP ${response.status}`);
      } else {
        onStatus('live');
        for await (const event of events(response.body, signal)) {
          if (event.id) lastId = event.id;
          onEvent(event);
        }
        onStatus('offline', 'the stream ended');
      }
    } catch (error) {
      if (signal.aborted) return;
      onStatus('offline', error.message);
    }
    await sleep(RETRY_MS, signal);
  }
}

/** Server-sent events out of a byte stream: blocks split on blank lines. */
async function* events(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  signal.addEventListener('abort', () => reader.cancel().catch(() => {}), { once: true });
  let buffer = '';
  let carriage = ''; // a chunk ending in \r: its \n may start the next chunk
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    let text = carriage + value;
    carriage = text.endsWith('\r') ? '\r' : '';
    if (carriage) text = text.slice(0, -1);
    buffer += text.replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = parse(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (event) yield event;
    }
  }
}

export function parse(block) {
  const event = { event: 'message', id: null, data: '' };
  const data = [];
  for (const line of block.split('\n')) {
    if (line === '' || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event.event = value;
    else if (field === 'id') event.id = value;
    else if (field === 'data') data.push(value);
  }
  if (data.length === 0 && event.event === 'message') return null;
  event.data = data.join('\n');
  try { event.data = JSON.parse(event.data); } catch { /* plain text data */ }
  return event;
}
