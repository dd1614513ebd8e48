// The token (this tab's session storage only) and reads of the /v1 API with it.

const KEY = 'tally.token';

export const session = {
  token: () => sessionStorage.getItem(KEY),
  signIn: (token) => sessionStorage.setItem(KEY, token),
  signOut: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${session.token() || ''}`, ...extra };
}

/** A JSON read (or POST); throws ApiError with the problem document on any refusal. */
export async function api(path, { method = 'GET', signal } = {}) {
  const response = await fetch(path, {
    method,
    headers: authHeaders({ Accept: 'application/json' }),
    cache: 'no-store',
    signal,
  });
  if (!response.ok) {
    let problem = null;
    try { problem = await response.json(); } catch { /* not JSON: the status says enough */ }
    throw new ApiError(response.status, problem);
  }
  return response.json();
}

/** Every item of a paginated list, at most `max`. */
export async function all(path, { signal, max = 2000 } = {}) {
  const items = [];
  let cursor = null;
  const sep = path.includes('?') ? '&' : '?';
  do {
    const page = await api(`${path}${sep}limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`, { signal });
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < max);
  return items;
}

export const enc = encodeURIComponent;

/**
 * The token's claims, decoded for display and to hide what it may not see. Never trusted:
 * the API checks the signature and refuses on its own.
 */
export function claims(token = session.token()) {
  const part = (token || '').split('.')[1];
  if (!part) return null;
  try {
    const base64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const json = JSON.parse(new TextDecoder().decode(bytes));
    const scopes = String(json.scope || '').split(' ').filter(Boolean);
    return {
      subject: json.sub || '',
      owner: json.owner || null,
      scopes,
      expires: json.exp ? new Date(json.exp * 1000) : null,
      admin: scopes.includes('admin'),
      // Audit and ops reads need audit:read (or admin) and a token bound to no owner.
      audit: (scopes.includes('admin') || scopes.includes('audit:read')) && !json.owner,
    };
  } catch {
    return null;
  }
}
