// Building the page from elements, never from HTML strings: every value from the API goes in as text.

/** An element: h('a', {href: '#/x', class: 'k', dataset: {id: 'x'}}, 'text', child...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (c instanceof Node ? c : String(c))));
  return el;
}

/** An SVG element (attributes only, no children as text). */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  setAttrs(el, attrs);
  el.append(...children.flat().filter(Boolean));
  return el;
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'dataset') Object.assign(el.dataset, value);
    else if (name === 'on') for (const [ev, fn] of Object.entries(value)) el.addEventListener(ev, fn);
    else el.setAttribute(name, value === true ? '' : String(value));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

/** Shows a refused or failed read: the API's problem detail, else its title, else the message. */
export function showError(error) {
  const p = error && error.problem;
  const text = (p && (p.detail || p.title)) || (error && error.message) || String(error);
  const status = error && error.status ? `${error.status}: ` : '';
  fill(document.getElementById('error-slot'),
    h('div', { id: 'error', class: 'error', role: 'alert' }, status + text));
}

export function clearError() {
  fill(document.getElementById('error-slot'));
}

/** Minor units as the currency shows them (1050 EUR: "€10.50"); raw for unknown codes. */
export function money(minor, currency) {
  try {
    const format = new Intl.NumberFormat(undefined, { style: 'currency', currency });
    const digits = format.resolvedOptions().maximumFractionDigits;
    return format.format(Number(minor) / 10 ** digits);
  } catch {
    return `${minor} ${currency || ''}`.trim();
  }
}

export function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

export const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});
