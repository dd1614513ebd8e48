// #/accounts: find accounts by exact id or by owner.

import { api, enc, claims } from './api.js';
import { h, fill, showError, clearError, money } from './dom.js';

export function searchView(view, signal) {
  const input = h('input', { id: 'search', type: 'search', placeholder: 'account id or owner', autocomplete: 'off' });
  const results = h('ul', { id: 'results', class: 'results' });
  const go = () => search(input.value.trim(), results, signal);
  input.addEventListener('keydown', (e) => { if (e.key === 'Enter') go(); });
  fill(view, h('section', { class: 'card' },
    h('h1', {}, 'Accounts'),
    h('div', { class: 'row' }, input, h('button', { id: 'search-go', type: 'button', on: { click: go } }, 'Search')),
    results));
  input.focus();
  // A token bound to an owner sees only that owner's accounts: list them at once.
  if (claims()?.owner) search('', results, signal);
}

async function search(query, results, signal) {
  clearError();
  fill(results, h('li', { class: 'muted' }, 'searching…'));
  const found = new Map();
  const errors = [];
  const byId = query
    ? api(`/v1/accounts/${enc(query)}`, { signal }).then((a) => found.set(a.account_id, a))
    : Promise.resolve();
  const path = query ? `/v1/accounts?owner=${enc(query)}&limit=100` : '/v1/accounts?limit=100';
  const byOwner = api(path, { signal }).then((page) => page.items.forEach((a) => found.set(a.account_id, a)));
  for (const outcome of await Promise.allSettled([byId, byOwner])) {
    // A missing id is an ordinary miss when searching; anything else is worth showing.
    if (outcome.status === 'rejected' && outcome.reason.status !== 404) errors.push(outcome.reason);
  }
  if (signal.aborted) return;
  if (errors.length && found.size === 0) {
    fill(results);
    showError(errors[0]);
    return;
  }
  if (found.size === 0) {
    fill(results, h('li', { class: 'muted', id: 'no-results' }, `No account with id or owner “${query}”.`));
    return;
  }
  fill(results, [...found.values()].map((a) => h('li', {},
    h('a', { class: 'account-link', href: `#/accounts/${enc(a.account_id)}`, dataset: { accountId: a.account_id } }, a.account_id),
    h('span', { class: 'muted' }, ` ${a.owner} · ${money(a.balance, a.currency)} · ${a.status}`))));
}
