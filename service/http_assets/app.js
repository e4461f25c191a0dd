// The status page: fetches /api/status every few seconds and fills the
// tables and the chart. Names come from clients (queue names, adapter
// details): they are only ever set as text, never as HTML.
'use strict';

const REFRESH_MS = 3000;
const PER_PAGE = 50;
let page = 0;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = el('tr');
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el('td', c));
  return tr;
}

function fill(id, rows) {
  const body = document.querySelector('#' + id + ' tbody');
  body.replaceChildren(...rows);
}

function rate(x) { return x.toFixed(1); }

function age(ms) {
  if (ms <= 0) return '-';
  if (ms < 1000) return ms + ' ms';
  if (ms < 120000) return (ms / 1000).toFixed(1) + ' s';
  return Math.round(ms / 60000) + ' min';
}

function bytes(n) {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + u[i];
}

function text(v, cls) { return el('td', v, 'text' + (cls ? ' ' + cls : '')); }

function chart(h) {
  const svg = document.getElementById('chart');
  const W = svg.width.baseVal.value, H = svg.height.baseVal.value, pad = 4;
  const s = h.samples;
  const ns = 'http://www.w3.org/2000/svg';
  svg.replaceChildren();
  if (s.length < 2) {
    const t = document.createElementNS(ns, 'text');
    t.setAttribute('x', 10); t.setAttribute('y', H / 2);
    t.textContent = 'collecting samples (one every ' + h.interval_ms / 1000 + ' s)';
    svg.appendChild(t);
    return;
  }
  // per-second rates between samples; depth as sampled
  const pts = [];
  for (let i = 1; i < s.length; i++) {
    const dt = Math.max(1, s[i][0] - s[i - 1][0]) / 1000;
    pts.push({ t: s[i][0], inr: Math.max(0, s[i][1] - s[i - 1][1]) / dt,
               outr: Math.max(0, s[i][2] - s[i - 1][2]) / dt, depth: s[i][3] });
  }
  const t0 = pts[0].t, t1 = pts[pts.length - 1].t || t0 + 1;
  const maxRate = Math.max(1, ...pts.map(p => Math.max(p.inr, p.outr)));
  const maxDepth = Math.max(1, ...pts.map(p => p.depth));
  const x = t => pad + (W - 2 * pad) * (t1 === t0 ? 1 : (t - t0) / (t1 - t0));
  const line = (f, max, color) => {
    const pl = document.createElementNS(ns, 'polyline');
    pl.setAttribute('points', pts.map(p => x(p.t).toFixed(1) + ',' +
      (H - pad - (H - 2 * pad) * f(p) / max).toFixed(1)).join(' '));
    pl.setAttribute('fill', 'none');
    pl.setAttribute('stroke', color);
    pl.setAttribute('stroke-width', '2');
    svg.appendChild(pl);
  };
  line(p => p.depth, maxDepth, '#d97706');
  line(p => p.inr, maxRate, '#2563eb');
  line(p => p.outr, maxRate, '#16a34a');
  const label = document.createElementNS(ns, 'text');
  label.setAttribute('x', 8); label.setAttribute('y', 14); label.setAttribute('font-size', '11');
  label.textContent = 'max ' + rate(maxRate) + ' msg/s, depth ' + maxDepth;
  svg.appendChild(label);
}

function render(st) {
  const b = st.broker;
  document.getElementById('broker').textContent = 'version ' + b.version + ', up ' +
    age(b.uptime_ms) + ', ' + b.published + ' published, memory ' + bytes(b.memory_bytes);
  document.getElementById('updated').textContent = 'updated ' + new Date(b.now_ms).toLocaleTimeString();

  const s = st.store;
  fill('store', s.commits === undefined ? [row(['no store (session agent)'])] : [
    row([text('health'), el('td', s.degraded ? 'degraded: ' + s.last_error : 'ok', s.degraded ? 'bad' : 'good')]),
    row([text('database size'), bytes(s.db_bytes)]),
    row([text('commits (fsync)'), s.commits + ' (' + s.fsyncs + ')']),
    row([text('failed commits'), el('td', s.failed_commits, s.failed_commits ? 'bad' : '')]),
    row([text('average commit'), s.commit_ms_avg.toFixed(2) + ' ms']),
  ]);

  fill('adapters', st.adapters.map(a => {
    const tr = row([text(a.name), text(a.type),
      text(a.state, a.state === 'up' || a.state === 'listening' || a.state === 'running' ? 'good' : 'bad'),
      a.connections === undefined ? '-' : a.connections,
      el('td', a.errors, a.errors ? 'bad' : '')]);
    tr.title = JSON.stringify(a.detail);
    return tr;
  }));

  fill('routes', st.routes.map(r => row([
    text(r.kind === 'client' ? '(client subscriptions)' : r.route), r.queues, r.depth,
    rate(r.in_rate), rate(r.out_rate), el('td', r.dead, r.dead ? 'bad' : ''), age(r.oldest_age_ms)])));

  document.getElementById('rcount').textContent = st.routes.length < st.routes_total
    ? '(' + st.routes.length + ' of ' + st.routes_total + ', the deepest)' : '(' + st.routes_total + ')';

  const q = st.queues;
  fill('queues', q.items.map(x => {
    const tr = row([text(x.name), text(x.route || '(client)'), x.depth, rate(x.in_rate),
      rate(x.out_rate), x.consumers, el('td', x.dead, x.dead ? 'bad' : ''), age(x.oldest_age_ms)]);
    tr.dataset.queue = x.name;
    tr.dataset.depth = x.depth;
    return tr;
  }));
  const pages = Math.max(1, Math.ceil(q.total / q.per_page));
  document.getElementById('qcount').textContent = '(' + q.total + ')';
  document.getElementById('pageinfo').textContent = 'page ' + (q.page + 1) + ' of ' + pages;
  document.getElementById('prev').disabled = q.page === 0;
  document.getElementById('next').disabled = q.page + 1 >= pages;
  chart(st.history);
}

async function refresh() {
  try {
    const r = await fetch('/api/status?page=' + page + '&per_page=' + PER_PAGE, { cache: 'no-store' });
    if (!r.ok) throw new Error('HTTP ' + r.status);
    render(await r.json());
  } catch (e) {
    document.getElementById('updated').textContent = 'cannot reach the broker: ' + e.message;
  }
}

document.getElementById('prev').addEventListener('click', () => { if (page > 0) { page--; refresh(); } });
document.getElementById('next').addEventListener('click', () => { page++; refresh(); });
refresh();
setInterval(refresh, REFRESH_MS);
