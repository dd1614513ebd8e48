// #/ops: projections (position, lag, throughput, a lag chart), parked aggregates and their
// dead letters (retry and drop for an admin token), and the latest audit digest. Polled.

import { api, enc, claims } from './api.js';
import { h, s, fill, showError, clearError, when, sleep } from './dom.js';
import { lineChart } from './chart.js';

const POLL_MS = 2000;
const HISTORY = 90;

export async function opsView(view, signal) {
  const ui = {
    projections: h('tbody'),
    chart: s('svg', { id: 'lag-chart', class: 'chart' }),
    deadLetters: h('tbody'),
    digest: h('div', { id: 'digest', class: 'digest' }, 'loading…'),
    note: h('p', { class: 'muted' }),
  };
  fill(view, h('section', { id: 'ops', class: 'card' },
    h('h1', {}, 'Operations'),
    h('h2', {}, 'Projections'), ui.note,
    h('table', { id: 'projections', class: 'table' },
      h('thead', {}, h('tr', {}, ['projection', 'partition', 'position', 'applied', 'dropped', 'lag (events)', 'events/s', 'updated'].map((c) => h('th', {}, c)))),
      ui.projections),
    h('h2', {}, 'Lag over time'), ui.chart,
    h('h2', {}, 'Parked aggregates'),
    h('table', { id: 'dead-letters', class: 'table' },
      h('thead', {}, h('tr', {}, ['projection', 'aggregate', '#', 'event', 'error', 'attempts', 'parked', 'waiting', ''].map((c) => h('th', {}, c)))),
      ui.deadLetters),
    h('h2', {}, 'Audit digest'), ui.digest));
  const samples = { previous: new Map(), lag: new Map() };
  let digestAt = 0;
  while (!signal.aborted) {
    await Promise.all([
      projections(ui, samples, signal),
      deadLetters(ui, signal),
      Date.now() - digestAt > 10_000 ? digest(ui, signal).then(() => { digestAt = Date.now(); }) : null,
    ]);
    await sleep(POLL_MS, signal);
  }
}

async function projections(ui, samples, signal) {
  let status;
  try {
    status = await api('/v1/ops/projections', { signal });
  } catch (error) {
    if (!signal.aborted) showError(error);
    return;
  }
  const now = Date.now();
  ui.note.textContent = status.lag_unavailable
    ? `Lag unavailable: ${status.lag_unavailable}`
    : `Events stream at ${status.stream_last_sequence} (${status.stream_partitions} partition(s)).`;
  fill(ui.projections, status.partitions.map((p) => {
    const key = `${p.projection}/${p.partition}`;
    const before = samples.previous.get(key);
    const rate = before && now > before.at ? ((p.events_applied - before.applied) * 1000) / (now - before.at) : null;
    samples.previous.set(key, { at: now, applied: p.events_applied });
    return h('tr', { dataset: { projection: p.projection, partition: p.partition, lag: p.lag_events ?? '', position: p.position } },
      h('td', {}, p.projection), h('td', {}, p.partition), h('td', { class: 'num position' }, p.position),
      h('td', { class: 'num' }, p.events_applied), h('td', { class: 'num' }, p.events_dropped),
      h('td', { class: `num lag ${p.lag_events > 0 ? 'behind' : ''}` }, p.lag_events ?? '—'),
      h('td', { class: 'num throughput' }, rate === null ? '—' : Math.max(rate, 0).toFixed(1)),
      h('td', {}, when(p.updated_at)));
  }));
  for (const p of status.projections) {
    const line = samples.lag.get(p.projection) || [];
    line.push([now, p.lag_events ?? 0]);
    samples.lag.set(p.projection, line.slice(-HISTORY));
  }
  lineChart(ui.chart, [...samples.lag].map(([name, points]) => ({ name, points })), {
    xLabel: (t) => new Date(t).toLocaleTimeString(),
  });
}

async function deadLetters(ui, signal) {
  let list;
  try {
    list = await api('/v1/ops/dead-letters', { signal });
  } catch (error) {
    if (!signal.aborted) showError(error);
    return;
  }
  const admin = claims()?.admin;
  if (list.items.length === 0) {
    fill(ui.deadLetters, h('tr', { class: 'empty' }, h('td', { colspan: 9, class: 'muted' }, 'Nothing parked.')));
    return;
  }
  fill(ui.deadLetters, list.items.map((d) => h('tr', { dataset: { aggregateId: d.aggregate_id, projection: d.projection } },
    h('td', {}, d.projection),
    h('td', {}, d.aggregate_type === 'account' ? h('a', { href: `#/accounts/${enc(d.aggregate_id)}` }, d.aggregate_id) : d.aggregate_id),
    h('td', {}, d.sequence), h('td', {}, d.event_type || ''),
    h('td', { class: 'error-text' }, d.error), h('td', { class: 'num' }, d.attempts),
    h('td', {}, when(d.parked_at)), h('td', { class: 'num' }, d.waiting),
    h('td', {}, d.action ? h('span', { class: 'muted' }, `${d.action} requested`)
      : admin ? [actionButton('retry', d, ui, signal), ' ', actionButton('drop', d, ui, signal)] : ''))));
}

function actionButton(action, d, ui, signal) {
  const act = async () => {
    clearError();
    try {
      await api(`/v1/ops/dead-letters/${enc(d.projection)}/${enc(d.aggregate_id)}/${action}`, { method: 'POST', signal });
    } catch (error) {
      if (!signal.aborted) showError(error);
    }
    await deadLetters(ui, signal);
  };
  return h('button', { type: 'button', class: action, on: { click: act } }, action);
}

async function digest(ui, signal) {
  try {
    const d = await api('/v1/ops/digest', { signal });
    const check = d.signature_check;
    fill(ui.digest,
      h('dl', { class: 'facts' },
        h('dt', {}, 'stream'), h('dd', {}, `${d.stream} #${d.sequence}`),
        h('dt', {}, 'events'), h('dd', {}, `${d.digest.event_count} in ${d.digest.aggregate_count} aggregates`),
        h('dt', {}, 'merkle root'), h('dd', {}, h('code', { class: 'id' }, d.digest.merkle_root)),
        h('dt', {}, 'taken'), h('dd', {}, when(d.digest.taken_at))),
      h('p', { id: 'digest-check', class: `check ${check.ok ? 'ok' : 'bad'}`, dataset: { ok: String(check.ok) } },
        `${check.ok ? 'Signature check passed' : 'Signature check failed'}: ${check.detail}`,
        check.expected_key ? ` (expected key ${check.expected_key})` : ''));
  } catch (error) {
    if (!signal.aborted) fill(ui.digest, h('p', { id: 'digest-unavailable', class: 'muted' }, `No digest to show: ${error.message}`));
  }
}
