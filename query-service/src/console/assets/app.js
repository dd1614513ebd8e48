// The console's shell: sign in, who is signed in, and the hash routes
// (#/signin, #/accounts, #/accounts/<id>, #/transfers/<id>, #/ops).

import { session, claims } from './api.js';
import { h, fill, showError, clearError } from './dom.js';
import { searchView } from './accounts.js';
import { accountView } from './account.js';
import { transferView } from './transfer.js';
import { opsView } from './ops.js';

const view = document.getElementById('view');
/** Aborts the current view's reads, feed and polling when the route changes. */
let current = new AbortController();

function signInView() {
  const input = h('input', {
    id: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'eyJ...', 'aria-label': 'Bearer token',
  });
  const signIn = () => {
    const token = input.value.trim();
    if (!claims(token)) {
      showError(new Error('That is not a token (a JWT: three dot-separated parts).'));
      return;
    }
    session.signIn(token);
    input.value = '';
    location.hash = '#/accounts';
  };
  input.addEventListener('keydown', (e) => { if (e.key === 'Enter') signIn(); });
  fill(view, h('section', { class: 'card signin' },
    h('h1', {}, 'Sign in'),
    h('p', {}, 'Paste a bearer token. It stays in this tab only (session storage) and goes to the API with each read.'),
    input,
    h('button', { id: 'sign-in', type: 'button', on: { click: signIn } }, 'Sign in')));
  input.focus();
}

function showWhoami() {
  const who = claims();
  const nav = document.querySelector('nav.nav');
  const signOut = document.getElementById('sign-out');
  const whoami = document.getElementById('whoami');
  nav.hidden = !who;
  signOut.hidden = !who;
  document.getElementById('nav-ops').hidden = !(who && who.audit);
  if (!who) { fill(whoami); return; }
  fill(whoami,
    h('span', { class: 'subject', dataset: { subject: who.subject } }, who.subject),
    who.owner ? h('span', { class: 'owner', dataset: { owner: who.owner } }, ` owner ${who.owner}`) : ' all owners',
    h('span', { class: 'scopes' }, ` · ${who.scopes.join(' ')}`));
}

function route() {
  current.abort();
  current = new AbortController();
  const { signal } = current;
  clearError();
  showWhoami();
  const hash = location.hash || '#/accounts';
  const [, page, rawId] = hash.match(/^#\/([a-z]+)(?:\/(.*))?$/) || [];
  if (!session.token() || !claims()) {
    if (hash !== '#/signin') { location.hash = '#/signin'; return; }
    signInView();
    return;
  }
  const id = rawId === undefined ? null : decodeURIComponent(rawId);
  for (const a of document.querySelectorAll('nav a')) {
    a.classList.toggle('active', a.id === `nav-${page}`);
  }
  const run = {
    signin: () => signInView(),
    accounts: () => (id ? accountView(view, id, signal) : searchView(view, signal)),
    transfers: () => transferView(view, id || '', signal),
    ops: () => opsView(view, signal),
  }[page];
  if (!run) { location.hash = '#/accounts'; return; }
  Promise.resolve(run()).catch((error) => {
    if (signal.aborted) return;
    // A refused or missing read leaves no half-drawn page behind, only the API's answer.
    fill(view);
    showError(error);
  });
}

document.getElementById('sign-out').addEventListener('click', () => {
  session.signOut();
  location.hash = '#/signin';
});
window.addEventListener('hashchange', route);
route();
