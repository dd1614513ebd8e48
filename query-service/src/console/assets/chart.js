// A small hand-drawn SVG line chart: one polyline per series, min/max labels, no library.

import { s, fill } from './dom.js';

const W = 640;
const H = 180;
const PAD = { left: 64, right: 12, top: 12, bottom: 24 };

/**
 * Draws `series` ([{name, cls, points: [[x, y], ...]}]) into `svg`. `label(y)` formats the
 * y axis, `xLabel(x)` the x axis.
 */
export function lineChart(svg, series, { label = String, xLabel = String } = {}) {
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('role', 'img');
  const points = series.flatMap((line) => line.points);
  if (points.length === 0) {
    fill(svg, s('text', { x: W / 2, y: H / 2, class: 'chart-empty', 'text-anchor': 'middle' }, text('no data yet')));
    return;
  }
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys, 0), Math.max(...ys)];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y1 = y0 + 1; }
  const px = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
  const py = (y) => H - PAD.bottom - ((y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
  const children = [
    s('line', { x1: PAD.left, y1: py(y0), x2: W - PAD.right, y2: py(y0), class: 'axis' }),
    s('line', { x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: H - PAD.bottom, class: 'axis' }),
    s('text', { x: PAD.left - 4, y: py(y1) + 4, 'text-anchor': 'end', class: 'tick' }, text(label(y1))),
    s('text', { x: PAD.left - 4, y: py(y0), 'text-anchor': 'end', class: 'tick' }, text(label(y0))),
    s('text', { x: PAD.left, y: H - 6, class: 'tick' }, text(xLabel(x0))),
    s('text', { x: W - PAD.right, y: H - 6, 'text-anchor': 'end', class: 'tick' }, text(xLabel(x1))),
  ];
  series.forEach((line, i) => {
    const cls = `series series-${i % 6} ${line.cls || ''}`.trim();
    const pts = line.points.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(' ');
    children.push(s('polyline', { points: pts, class: cls, 'data-series': line.name }));
    const [lx, ly] = line.points[line.points.length - 1] || [];
    if (lx !== undefined) children.push(s('circle', { cx: px(lx), cy: py(ly), r: 3, class: `dot series-${i % 6}` }));
    if (series.length > 1) {
      children.push(s('text', { x: PAD.left + 8 + i * 110, y: PAD.top + 10, class: `legend series-${i % 6}` }, text(line.name)));
    }
  });
  fill(svg, children);
}

function text(value) {
  return document.createTextNode(String(value));
}
