// #/accounts/<id>: balances, a chart of the balance, entries, the live feed, the audit history
// and a chain check. The feed keeps the figures, entries and chart current without a reload.

import { api, all, enc, claims } from './api.js';
import { h, fill, showError, money, when } from './dom.js';
import { lineChart } from './chart.js';
import { follow } from './feed.js';

const ENTRY_ROWS = 200;
const FEED_ROWS = 100;

export async function accountView(view, id, signal) {
  fill(view, h('p', { class: 'muted' }, 'loading…'));
  const account = await api(`/v1/accounts/${enc(id)}`, { signal });
  const entries = await all(`/v1/accounts/${enc(id)}/entries`, { signal }).catch((error) => {
    if (!signal.aborted) showError(error);
    return [];
  });
  if (signal.aborted) return;
  const state = { account, entries: new Map(entries.map((e) => [e.sequence, e])) };
  const ui = skeleton(account);
  fill(view, ui.root);
  renderFigures(ui, state.account);
  renderEntries(ui, state);
  const who = claims();
  const history = who?.audit ? historyLoader(ui, id, signal) : null;
  if (history) history(); else unavailable(ui, 'The audit history needs a token with audit:read that is bound to no owner.');
  if (who?.audit) ui.verifySlot.append(verifyButton(id, signal));
  follow(`/v1/accounts/${enc(id)}/feed`, {
    signal,
    onStatus: (status, detail) => {
      ui.feedStatus.textContent = status;
      ui.feedStatus.dataset.status = status;
      ui.feedStatus.title = detail || '';
    },
    onEvent: (event) => onFeedEvent(event, ui, state, history),
  });
}

function skeleton(account) {
  const figure = (id, label) => h('div', { class: 'figure' }, h('dt', {}, label), h('dd', { id }));
  const ui = {
    feedStatus: h('span', { id: 'feed-status', class: 'feed-status', dataset: { status: 'offline' } }, 'offline'),
    feedLog: h('ul', { id: 'feed-log', class: 'feed-log' }),
    chart: document.createElementNS('http://www.w3.org/2000/svg', 'svg'),
    entriesBody: h('tbody'),
    historySlot: h('div', { class: 'history' }),
    verifySlot: h('div', { class: 'verify' }),
    header: h('p', { class: 'muted' }),
  };
  ui.chart.id = 'balance-chart';
  ui.chart.classList.add('chart');
  ui.root = h('section', { id: 'account', class: 'card', dataset: { accountId: account.account_id } },
    h('h1', {}, `Account ${account.account_id}`),
    ui.header,
    h('dl', { class: 'figures' }, figure('balance', 'Balance'), figure('available', 'Available'), figure('held', 'Held')),
    h('h2', {}, 'Balance over time'), ui.chart,
    h('h2', {}, 'Live feed ', ui.feedStatus), ui.feedLog,
    h('h2', {}, 'Entries'),
    h('table', { id: 'entries', class: 'table' },
      h('thead', {}, h('tr', {}, ['#', 'recorded', 'direction', 'amount', 'balance after', 'reference', 'transfer'].map((c) => h('th', {}, c)))),
      ui.entriesBody),
    h('h2', {}, 'Audit history'), ui.verifySlot, ui.historySlot);
  return ui;
}

function renderFigures(ui, a) {
  for (const key of ['balance', 'available', 'held']) {
    const el = ui.root.querySelector(`#${key}`);
    el.dataset.value = String(a[key]);
    el.textContent = money(a[key], a.currency);
  }
  ui.header.textContent = `owner ${a.owner} · ${a.currency} · ${a.status} · version ${a.version}`;
}

function renderEntries(ui, state) {
  const { currency } = state.account;
  const sorted = [...state.entries.values()].sort((x, y) => x.sequence - y.sequence);
  const points = sorted.map((e) => [Date.parse(e.recorded_at), e.balance_after]);
  const sameDay = points.length > 0 && points[points.length - 1][0] - points[0][0] < 86_400_000;
  lineChart(ui.chart, [{ name: 'balance', points }], {
    label: (v) => money(Math.round(v), currency),
    xLabel: (t) => (sameDay ? new Date(t).toLocaleTimeString() : new Date(t).toLocaleDateString()),
  });
  fill(ui.entriesBody, sorted.slice(-ENTRY_ROWS).reverse().map((e) => h('tr', { dataset: { sequence: e.sequence } },
    h('td', {}, e.sequence),
    h('td', {}, when(e.recorded_at)),
    h('td', { class: e.direction }, e.direction),
    h('td', { class: 'num' }, money(e.amount, currency)),
    h('td', { class: 'num' }, money(e.balance_after, currency)),
    h('td', {}, e.reference),
    h('td', {}, e.transfer_id ? h('a', { href: `#/transfers/${enc(e.transfer_id)}` }, e.transfer_id.slice(0, 8)) : ''))));
}

function onFeedEvent(event, ui, state, history) {
  const c = event.data;
  if (event.event !== 'change' || !c || c.account_id !== state.account.account_id) {
    if (event.event === 'reset' || event.event === 'end') {
      ui.feedStatus.title = `${event.event}: ${c && (c.reason || '')} ${c && c.detail ? c.detail : ''}`;
    }
    return;
  }
  if (c.account) {
    Object.assign(state.account, c.account);
  } else if (c.version >= state.account.version) {
    state.account.balance = c.balance;
    state.account.available = c.balance - state.account.held;
    state.account.version = c.version;
  }
  if (c.entry) state.entries.set(c.entry.sequence, c.entry);
  renderFigures(ui, state.account);
  renderEntries(ui, state);
  const text = c.entry
    ? `v${c.version}: ${c.entry.direction} ${money(c.entry.amount, state.account.currency)} → ${money(c.balance, state.account.currency)}`
    : `v${c.version}: balance ${money(c.balance, state.account.currency)}`;
  ui.feedLog.prepend(h('li', { dataset: { version: c.version } }, h('time', {}, new Date().toLocaleTimeString()), ' ', text));
  while (ui.feedLog.children.length > FEED_ROWS) ui.feedLog.lastElementChild.remove();
  if (history) history.soon();
}

function unavailable(ui, text) {
  fill(ui.historySlot, h('p', { id: 'history-unavailable', class: 'muted' }, text));
}

/** Loads the history table; `.soon()` reloads it shortly after a burst of changes. */
function historyLoader(ui, id, signal) {
  let timer = null;
  const load = async () => {
    try {
      const events = await all(`/v1/audit/account/${enc(id)}/events`, { signal });
      if (!signal.aborted) fill(ui.historySlot, historyTable(events));
    } catch (error) {
      if (!signal.aborted) unavailable(ui, `The audit history is not available to this token: ${error.message}`);
    }
  };
  load.soon = () => { clearTimeout(timer); timer = setTimeout(load, 700); };
  return load;
}

function historyTable(events) {
  const cell = (v) => h('td', {}, v ? h('code', { class: 'id' }, v) : '');
  return h('table', { id: 'history', class: 'table' },
    h('thead', {}, h('tr', {}, ['#', 'event', 'recorded', 'actor', 'command id', 'correlation', 'causation', 'hash'].map((c) => h('th', {}, c)))),
    h('tbody', {}, events.map((e) => h('tr', { dataset: { sequence: e.sequence } },
      h('td', {}, e.sequence), h('td', {}, e.event_type), h('td', {}, when(e.recorded_at)),
      h('td', { class: 'actor' }, e.actor || ''), cell(e.command_id), cell(e.correlation_id), cell(e.causation_id),
      h('td', { class: 'hash' }, e.hash ? h('code', { class: 'id', title: e.hash }, e.hash) : '')))));
}

function verifyButton(id, signal) {
  const result = h('div', { id: 'verify-result', class: 'verify-result', hidden: true });
  const run = async () => {
    result.hidden = false;
    result.removeAttribute('data-ok');
    result.textContent = 'checking…';
    try {
      const check = await api(`/v1/ops/verify/account/${enc(id)}`, { signal });
      result.dataset.ok = String(check.ok);
      result.className = `verify-result ${check.ok ? 'ok' : 'bad'}`;
      fill(result, check.ok
        ? `Chain intact: ${check.events} events, head ${check.head}`
        : `${check.findings_total} finding(s) over ${check.events} events`,
      check.ok ? null : h('ul', {}, check.findings.map((f) => h('li', {}, `${f.kind}${f.sequence ? ` at #${f.sequence}` : ''}: ${f.reason || f.error || f.field || ''}`))));
    } catch (error) {
      result.dataset.ok = 'false';
      result.className = 'verify-result bad';
      result.textContent = `The check could not run: ${error.message}`;
    }
  };
  return h('div', {}, h('button', { id: 'verify', type: 'button', on: { click: run } }, 'Verify this account'), result);
}
