// #/transfers/<id>: a transfer and its steps, followed until it completes or fails.

import { api, all, enc, claims } from './api.js';
import { h, fill, money, when, sleep } from './dom.js';

const FINAL = new Set(['completed', 'failed']);
/** The steps a transfer goes through, by the status it reached (docs/transfers.md). */
const PATHS = {
  requested: ['requested'],
  debited: ['requested', 'debited'],
  credited: ['requested', 'debited', 'credited'],
  completed: ['requested', 'debited', 'credited', 'completed'],
  refunding: ['requested', 'debited', 'refunding'],
  failed: ['requested', 'failed'],
};

export async function transferView(view, id, signal) {
  fill(view, h('p', { class: 'muted' }, 'loading…'));
  let transfer = await api(`/v1/transfers/${enc(id)}`, { signal });
  const steps = h('ol', { id: 'transfer-steps', class: 'steps' });
  const facts = h('dl', { class: 'facts' });
  const root = h('section', { id: 'transfer', class: 'card' }, h('h1', {}, `Transfer ${transfer.transfer_id}`), facts, h('h2', {}, 'Steps'), steps);
  fill(view, root);
  for (;;) {
    root.dataset.status = transfer.status;
    renderFacts(facts, transfer);
    await renderSteps(steps, transfer, signal);
    if (FINAL.has(transfer.status) || signal.aborted) return;
    await sleep(1500, signal);
    if (signal.aborted) return;
    transfer = await api(`/v1/transfers/${enc(id)}`, { signal });
  }
}

function renderFacts(facts, t) {
  const fact = (k, v) => [h('dt', {}, k), h('dd', {}, v)];
  fill(facts,
    fact('status', h('span', { class: `status status-${t.status}` }, t.status)),
    fact('from', h('a', { href: `#/accounts/${enc(t.from_account)}` }, t.from_account)),
    fact('to', h('a', { href: `#/accounts/${enc(t.to_account)}` }, t.to_account)),
    fact('amount', money(t.amount, t.currency)),
    fact('reference', t.reference),
    fact('requested', when(t.requested_at)),
    fact('settled', when(t.settled_at) || '—'),
    t.failure_code ? fact('failure', `${t.failure_code}: ${t.failure_reason || ''}`) : null);
}

/** One step per stored event when the token may read the audit trail; else by status. */
async function renderSteps(steps, t, signal) {
  if (claims()?.audit) {
    try {
      const events = await all(`/v1/audit/transfer/${enc(t.transfer_id)}/events`, { signal });
      fill(steps, events.map((e) => h('li', { dataset: { sequence: e.sequence, step: e.event_type } },
        h('strong', {}, e.event_type), ` ${when(e.recorded_at)}`, e.actor ? ` by ${e.actor}` : '')));
      return;
    } catch {
      // Not in the audit store yet (settled at once, or still being written): by status.
    }
  }
  const path = PATHS[t.status] || [t.status];
  fill(steps, path.map((step) => h('li', { dataset: { step } }, h('strong', {}, step),
    step === t.status ? ` ${when(t.updated_at)}` : '')));
}
