// labctl console: one page, no dependencies. Everything shown comes from this server's /api;
// text from the lab (messages, log lines, reasons) only ever enters the page as text nodes.
'use strict';

const $ = (sel) => document.querySelector(sel);
const state = { meta: null, snap: null, token: null, page: 'pipeline', older: null, chartData: null };

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v; else if (k.startsWith('on')) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids.flat(Infinity)) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}
const svgEl = (tag, attrs) => {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
};
const fmt = (n) => (n === null || n === undefined) ? '–' : Number(n).toLocaleString('en-US');
const utc = (t) => t ? new Date(t).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC') : '–';
const age = (s) => s === null || s === undefined ? '–' : s < 120 ? `${s} s` : s < 7200 ? `${Math.floor(s / 60)} min` : `${Math.floor(s / 3600)} h`;
const bytes = (b) => b === null || b === undefined ? '–' : b > 1 << 30 ? `${(b / (1 << 30)).toFixed(2)} GiB` : `${(b / (1 << 20)).toFixed(0)} MiB`;
function fill(tbody, rows) { tbody.replaceChildren(...rows); }

async function api(path, opts) {
  const res = await fetch(path, opts);
  const type = res.headers.get('content-type') || '';
  const body = type.includes('json') ? await res.json() : await res.text();
  if (!res.ok) throw new Error((body && body.error) || `${res.status} ${res.statusText}`);
  return body;
}

// ---- live snapshot ---------------------------------------------------------------------------
function connect() {
  const es = new EventSource('/api/events');
  es.addEventListener('snapshot', (ev) => {
    $('#banner').hidden = true;
    state.snap = JSON.parse(ev.data);
    render();
  });
  es.onerror = () => {
    const b = $('#banner');
    b.textContent = 'The console is not answering (labctl console stopped?); retrying…';
    b.hidden = false;
    $('#overall').dataset.health = 'unknown';
  };
}

function render() {
  const s = state.snap;
  if (!s) return;
  const r = s.report;
  $('#overall').dataset.health = r.health;
  $('#overall').title = r.health;
  $('#updated').textContent = `updated ${utc(r.at)} (${r.elapsed_ms} ms)`;
  renderPipeline(s);
  if (state.page === 'topic') renderPartitions(r, s.partition_rates);
  if (state.page === 'jobs') renderJobs(r);
  if (state.page === 'data') renderLake(r);
}

function renderPipeline(s) {
  const cards = [];
  s.hops.forEach((h, i) => {
    if (i) cards.push(el('div', { class: 'arrow' }, '→'));
    cards.push(el('div', { class: 'hop', 'data-hop': h.id, 'data-health': h.health, 'data-count': h.count },
      el('div', { class: 'title' }, el('span', { class: 'dot' }), h.title),
      el('div', { class: 'count' }, h.count === null ? '' : fmt(h.count)),
      el('dl', {}, h.figures.map((f) => [el('dt', {}, f.label), el('dd', {}, f.value)])),
      el('div', { class: 'reason' }, h.reason)));
  });
  $('#hops').replaceChildren(...cards);
  const series = [
    ['ingest_per_s', 'generator, messages/s', (v) => v.toFixed(1)],
    ['flink_in_per_s', 'Flink job, records/s', (v) => v.toFixed(0)],
    ['flink_pending', 'Flink lag, records', fmt],
    ['topic_messages', 'topic, messages', fmt],
    ['raw_rows', 'machine_sensors, rows', fmt],
    ['window_rows', 'sensor_aggregates, rows', fmt],
  ];
  $('#sparks').replaceChildren(...series.map(([key, label, f]) => spark(s.history, key, label, f)));
}

function spark(history, key, label, f) {
  const pts = history.map((h) => h[key]).map((v) => v === null ? null : Number(v));
  const known = pts.filter((v) => v !== null);
  const last = known.length ? known[known.length - 1] : null;
  const svg = svgEl('svg', { viewBox: '0 0 100 30', preserveAspectRatio: 'none' });
  if (known.length > 1) {
    const lo = Math.min(...known), hi = Math.max(...known), span = hi - lo || 1;
    const xy = pts.map((v, i) => v === null ? null : `${(i / (pts.length - 1)) * 100},${28 - ((v - lo) / span) * 26}`).filter(Boolean);
    svg.append(svgEl('polyline', { points: xy.join(' '), 'vector-effect': 'non-scaling-stroke' }));
  }
  return el('div', { class: 'spark', 'data-series': key },
    el('div', { class: 'label' }, el('span', {}, label), el('b', {}, last === null ? '–' : f(last))), svg);
}

// ---- topic browser ---------------------------------------------------------------------------
function renderPartitions(r, rates) {
  const b = r.broker;
  const rate = new Map((rates || []).map((x) => [x.partition, x]));
  $('#topic-name').textContent = b.topic;
  const group = new Map((b.consumer_group.partitions || []).map((p) => [p.partition, p]));
  const repl = new Map((b.cluster.partitions || []).map((p) => [p.partition, p]));
  fill($('#partitions tbody'), b.partitions.map((p) => {
    const g = group.get(p.partition), c = repl.get(p.partition);
    return el('tr', { class: 'pick', 'data-partition': p.partition, onclick: () => browseTo({ partition: p.partition }) },
      el('td', {}, p.partition), el('td', { class: 'num' }, fmt(p.low)), el('td', { class: 'num' }, fmt(p.high)),
      el('td', { class: 'num' }, fmt(p.messages)),
      el('td', { class: 'num', 'data-rate': rate.has(p.partition) ? rate.get(p.partition).per_s : null, title: rate.has(p.partition) ? `over the last ${rate.get(p.partition).over_secs.toFixed(0)} s` : 'known after two refreshes' },
        rate.has(p.partition) ? `${rate.get(p.partition).per_s.toFixed(1)}/s` : '–'),
      el('td', { class: 'num' }, g && g.committed !== null ? fmt(g.committed) : 'none'),
      el('td', { class: 'num' }, g ? fmt(g.lag) : '–'),
      el('td', {}, c ? `${c.leader} / ${(c.isr || []).join(',')}` : '–'));
  }));
  const g = b.consumer_group;
  $('#group').textContent = g.error ? `group ${g.group}: ${g.error}` : `group ${g.group}: committed lag ${fmt(g.lag)}` + (b.flink_consumer_lag === null ? '' : `; the job's own lag ${fmt(b.flink_consumer_lag)}`);
}

function browseParams() {
  const q = new URLSearchParams(location.hash.split('?')[1] || '');
  return Object.fromEntries([...q].filter(([, v]) => v !== ''));
}

function browseTo(params) {
  const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== '' && v !== null && v !== undefined));
  location.hash = `#/topic?${q}`;
}

async function loadMessages() {
  const p = browseParams();
  const form = $('#browse');
  for (const k of ['partition', 'machine', 'sensor', 'before']) form.elements[k].value = p[k] || '';
  const info = $('#browse-info'), list = $('#messages');
  info.textContent = 'reading…';
  info.classList.remove('error');
  try {
    const page = await api(`/api/topic/messages?${new URLSearchParams(p)}`);
    info.textContent = `partition ${page.partition} holds offsets ${fmt(page.low)} to ${fmt(page.high - 1)}; ${page.messages.length} message(s) shown, ${fmt(page.scanned)} read` +
      (p.machine ? `, machine ${p.machine}` : '') + (p.sensor ? `, sensor ${p.sensor}` : '');
    list.replaceChildren(...page.messages.map((m) => el('div', { class: 'msg', 'data-offset': m.offset, 'data-key': m.key },
      el('div', { class: 'head' },
        el('span', {}, 'key ', el('b', { class: 'key' }, m.key === null ? '(none)' : m.key)),
        el('span', {}, 'partition ', el('b', {}, m.partition)),
        el('span', {}, 'offset ', el('b', {}, m.offset)),
        el('span', {}, 'timestamp ', el('b', {}, m.timestamp_ms === null ? '–' : utc(m.timestamp_ms)))),
      el('pre', { class: 'value' }, m.json !== null ? JSON.stringify(m.json, null, 2) : (m.value === null ? '(no value)' : m.value)))));
    state.older = page.older === null ? null : { ...p, partition: page.partition, before: page.older };
    $('#older').hidden = state.older === null;
  } catch (e) {
    info.textContent = e.message;
    info.classList.add('error');
    list.replaceChildren();
    $('#older').hidden = true;
  }
}

// ---- jobs ------------------------------------------------------------------------------------
function renderJobs(r) {
  const job = r.flink.jobs.find((j) => j.lab_job && j.state === 'RUNNING') || r.flink.jobs.find((j) => j.lab_job);
  const rows = job ? [
    ['state', job.state], ['job id', job.id], ['uptime', age(job.uptime_secs)],
    ['records in', `${fmt(job.records_in)} (${job.records_in_per_s.toFixed(0)}/s)`],
    ['records out', `${fmt(job.records_out)} (${job.records_out_per_s.toFixed(0)}/s)`],
    ['pending in the topic', fmt(job.pending_records)],
    ['last checkpoint', job.last_checkpoint_age_secs === null ? 'none yet' : `${age(job.last_checkpoint_age_secs)} ago`],
    ['restores', job.restarts === null ? '–' : job.restarts],
    ['late records dropped', fmt(job.late_records_dropped)],
    ['rejected messages', r.database.rejected ? fmt(r.database.rejected.count) : '–'],
    ['late windows repaired', r.database.repairs.runs === 0 ? 'none' : `${fmt(r.database.repairs.windows)} (${fmt(r.database.repairs.late_readings)} late readings; last ${utc(r.database.repairs.last.at)})`],
  ] : [['state', 'no lab job: submit it with `labctl submit flink`']];
  $('#job').replaceChildren(el('div', { 'data-health': r.flink.light.health }, el('span', { class: 'dot' }), ' ', r.flink.light.reason),
    el('table', { id: 'job-facts' }, el('tbody', {}, rows.map(([k, v]) => el('tr', {}, el('th', {}, k), el('td', {}, v))))));
  $('#spark').replaceChildren(el('div', { 'data-health': r.spark.light.health }, el('span', { class: 'dot' }), ' ', r.spark.light.reason,
    r.spark.cores === null ? '' : `; ${r.spark.cores_used}/${r.spark.cores} cores in use`));
  fill($('#drivers tbody'), r.spark.drivers.map((d) => {
    const x = d.export;
    const known = (v, f) => (x && v !== null && v !== undefined) ? f(v) : '–';
    return el('tr', { 'data-driver': d.id }, el('td', {}, d.id), el('td', {}, d.state), el('td', {}, utc(d.started)),
      el('td', { class: 'num' }, known(x && x.seconds, (v) => `${v.toFixed(1)} s`)),
      el('td', { class: 'num', 'data-rows': x ? x.rows_written : null }, known(x && x.rows_written, fmt)),
      el('td', { class: 'num' }, known(x && x.days_rewritten, fmt)),
      el('td', { class: 'num', 'data-version': x ? x.delta_version : null }, known(x && x.delta_version, String)),
      x && x.error ? el('td', { class: 'error' }, x.error) : null);
  }));
  $('#drivers-note').textContent = r.spark.drivers.some((d) => !d.export) ? 'Figures are known for exports this machine\'s labctl followed to their end (not for `--no-wait` ones).' : '';
  const m = state.meta;
  $('#links').replaceChildren(...[m.flink_ui && el('a', { href: m.flink_ui, target: '_blank', rel: 'noopener' }, 'Flink dashboard'), ' ',
    m.spark_ui && el('a', { href: m.spark_ui, target: '_blank', rel: 'noopener' }, 'Spark master')].filter(Boolean));
}

async function loadRejects() {
  try {
    const rows = await api('/api/rejects?limit=10');
    fill($('#rejects tbody'), rows.length ? rows.map((x) => el('tr', {}, el('td', {}, utc(x.produced_at)), el('td', {}, x.partition), el('td', {}, x.offset), el('td', {}, x.reason), el('td', {}, el('code', {}, x.payload)))) :
      [el('tr', {}, el('td', { colspan: 5, class: 'muted' }, 'none: every message was a usable reading'))]);
  } catch (e) {
    fill($('#rejects tbody'), [el('tr', {}, el('td', { colspan: 5, class: 'error' }, e.message))]);
  }
}

function renderActions() {
  const box = $('#actions');
  if (state.meta.read_only) {
    box.replaceChildren(el('p', { class: 'muted' }, 'Read-only: start the console with `labctl console --allow-actions` to submit, cancel, export or scale from here.'));
    return;
  }
  const act = (name, label, body) => el('button', { 'data-action': name, onclick: () => runAction(name, body && body()) }, label);
  const scaleService = el('select', {}, el('option', {}, 'flink-taskmanager'), el('option', {}, 'spark-worker'));
  const scaleN = el('input', { type: 'number', min: 1, max: 8, value: 1, size: 3 });
  box.replaceChildren(act('submit-flink', 'Submit the Flink job'), act('replace-flink', 'Replace it (savepoint)'),
    act('cancel-flink', 'Cancel it'), act('export', 'Run the export'),
    el('span', {}, ' scale ', scaleService, ' to ', scaleN, ' ', act('scale', 'Scale', () => ({ service: scaleService.value, replicas: Number(scaleN.value) }))));
}

async function runAction(name, body) {
  const out = $('#action-output');
  out.hidden = false;
  out.textContent = `running ${name}…`;
  document.querySelectorAll('#actions button').forEach((b) => { b.disabled = true; });
  try {
    const res = await fetch(`/api/actions/${name}`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-labctl-token': state.token || '' }, body: JSON.stringify(body || {}) });
    const j = await res.json();
    out.textContent = j.error ? `refused (${res.status}): ${j.error}` : `$ ${j.command}\n${j.output}\n(exit ${j.exit_code}, ${j.secs.toFixed(1)} s)`;
  } catch (e) {
    out.textContent = e.message;
  } finally {
    document.querySelectorAll('#actions button').forEach((b) => { b.disabled = false; });
  }
}

// ---- data ------------------------------------------------------------------------------------
function renderLake(r) {
  const t = (r.lake.tables || []).find((x) => x.table === 'machine_sensors');
  $('#lake').replaceChildren(el('div', { 'data-health': r.lake.light.health }, el('span', { class: 'dot' }), ' ', r.lake.light.reason),
    t ? el('p', {}, `Delta table ${t.table}: version ${t.version === null ? 'none' : t.version}, ${fmt(t.rows)} rows in ${t.partitions} partitions, ${t.data_files} data files; last export ${utc(t.last_commit)}`) : '');
  const days = t ? Object.entries(t.rows_per_day) : [];
  fill($('#lake-days tbody'), days.length ? days.map(([d, n]) => el('tr', {}, el('td', {}, d), el('td', { class: 'num' }, fmt(n)))) : [el('tr', {}, el('td', { colspan: 2, class: 'muted' }, 'no rows in the lake yet: run the export'))]);
}

async function setupChart() {
  const f = $('#chart-form');
  if (!f.elements.sensor.options.length) for (const s of state.meta.sensors) f.elements.sensor.append(el('option', {}, s));
  try {
    const machines = await api('/api/machines');
    const cur = f.elements.machine.value;
    f.elements.machine.replaceChildren(...machines.map((m) => el('option', { selected: m === cur }, m)));
  } catch (e) {
    $('#chart-info').textContent = e.message;
  }
  loadChart();
}

async function loadChart() {
  const f = $('#chart-form');
  const q = new URLSearchParams({ machine: f.elements.machine.value, sensor: f.elements.sensor.value, hours: f.elements.hours.value });
  const info = $('#chart-info');
  if (!q.get('machine')) { info.textContent = 'no windows yet: the Flink job writes them once readings arrive'; return; }
  try {
    const s = await api(`/api/windows?${q}`);
    state.chartData = s;
    drawChart(s);
    info.textContent = `${s.windows.length} windows of ${s.machine_id} ${s.sensor_type}; hover for avg, min, max and count`;
    info.classList.remove('error');
  } catch (e) {
    $('#chart').replaceChildren();
    info.textContent = e.message;
    info.classList.add('error');
  }
}

function drawChart(s) {
  const W = 1000, H = 320, L = 56, R = 10, T = 10, B = 26;
  const ws = s.windows;
  const t0 = Date.parse(ws[0].start), t1 = Date.parse(ws[ws.length - 1].start) + 60000;
  const lo = Math.min(...ws.map((w) => w.min)), hi = Math.max(...ws.map((w) => w.max)), pad = (hi - lo) * 0.05 || 1;
  const x = (t) => L + ((t - t0) / (t1 - t0 || 1)) * (W - L - R);
  const y = (v) => T + (1 - (v - (lo - pad)) / (hi - lo + 2 * pad)) * (H - T - B);
  const svg = svgEl('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none' });
  svg.append(svgEl('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }), svgEl('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }));
  for (let i = 0; i <= 4; i++) {
    const v = lo - pad + (i / 4) * (hi - lo + 2 * pad);
    const t = svgEl('text', { x: 4, y: y(v) + 4 }); t.textContent = v.toFixed(2); svg.append(t);
    const tt = t0 + (i / 4) * (t1 - t0);
    const tx = svgEl('text', { x: Math.min(x(tt), W - 70), y: H - 8 }); tx.textContent = new Date(tt).toISOString().slice(5, 16).replace('T', ' '); svg.append(tx);
  }
  const mid = (w) => Date.parse(w.start) + 30000;
  const band = ws.map((w) => `${x(mid(w))},${y(w.max)}`).concat(ws.slice().reverse().map((w) => `${x(mid(w))},${y(w.min)}`));
  svg.append(svgEl('polygon', { class: 'band', points: band.join(' ') }));
  svg.append(svgEl('polyline', { class: 'avg', points: ws.map((w) => `${x(mid(w))},${y(w.avg)}`).join(' '), 'vector-effect': 'non-scaling-stroke' }));
  const cursor = svgEl('line', { class: 'cursor', y1: T, y2: H - B, x1: -10, x2: -10 });
  svg.append(cursor);
  const tip = el('div', { class: 'tip', hidden: true });
  svg.addEventListener('mousemove', (ev) => {
    const box = svg.getBoundingClientRect();
    const t = t0 + ((ev.clientX - box.left) / box.width * W - L) / (W - L - R) * (t1 - t0);
    let best = ws[0];
    for (const w of ws) if (Math.abs(mid(w) - t) < Math.abs(mid(best) - t)) best = w;
    cursor.setAttribute('x1', x(mid(best))); cursor.setAttribute('x2', x(mid(best)));
    tip.hidden = false;
    tip.textContent = `${utc(best.start)}  avg ${best.avg.toFixed(3)}  min ${best.min.toFixed(3)}  max ${best.max.toFixed(3)}  count ${best.count}`;
    tip.style.left = `${Math.min(ev.clientX - box.left + 12, box.width - 360)}px`;
    tip.style.top = `${ev.clientY - box.top + 12}px`;
  });
  svg.addEventListener('mouseleave', () => { tip.hidden = true; });
  $('#chart').replaceChildren(svg, tip);
}

async function runVerify() {
  const out = $('#verify-out'), btn = $('#verify');
  btn.disabled = true;
  out.replaceChildren(el('p', { class: 'muted' }, 'verifying…'));
  try {
    const v = await fetch('/api/verify', { method: 'POST' }).then(async (r) => { const j = await r.json(); if (!r.ok) throw new Error(j.error); return j; });
    out.replaceChildren(el('p', { 'data-health': v.ok ? 'green' : 'red' }, el('span', { class: 'dot' }), v.ok ? ' nothing lost or doubled' : ' differences found'),
      el('table', { id: 'verify-hops' }, el('tbody', {}, v.hops.map((h) => el('tr', { 'data-hop': h.name }, el('td', {}, h.name), el('td', {}, !h.checked ? 'nothing yet' : h.ok ? 'ok' : `DIFFERS (${h.problem_count})`),
        el('td', {}, h.summary, h.in_flight ? el('div', { class: 'muted' }, h.in_flight) : '', h.problems.map((x) => el('div', { class: 'error' }, x)), h.hint ? el('div', {}, h.hint) : ''))))));
  } catch (e) {
    out.replaceChildren(el('p', { class: 'error' }, e.message));
  } finally {
    btn.disabled = false;
  }
}

// ---- services --------------------------------------------------------------------------------
async function loadServices() {
  try {
    const rows = await api('/api/containers');
    const health = new Map(state.snap ? state.snap.report.services.map((s) => [s.service, s.light]) : []);
    fill($('#services tbody'), rows.map((c) => {
      const l = health.get(c.service);
      return el('tr', { class: 'pick', 'data-container': c.name, 'data-health': l ? l.health : 'unknown', onclick: () => loadLog(c.name) },
        el('td', {}, el('span', { class: 'dot', 'data-health': l ? l.health : 'unknown', title: l ? l.reason : '' })),
        el('td', {}, c.service), el('td', {}, c.name), el('td', {}, c.state), el('td', { class: 'num' }, c.restarts),
        el('td', {}, age(c.uptime_secs)), el('td', { class: 'num' }, bytes(c.memory_bytes)), el('td', {}, c.error || c.status));
    }));
  } catch (e) {
    fill($('#services tbody'), [el('tr', {}, el('td', { colspan: 8, class: 'error' }, e.message))]);
  }
}

async function loadLog(name) {
  $('#log-title').textContent = `Log of ${name} (last 200 lines)`;
  try {
    const text = await api(`/api/containers/${encodeURIComponent(name)}/logs?lines=200`);
    const pre = $('#log');
    pre.textContent = text || '(empty)';
    pre.classList.remove('muted');
    pre.scrollTop = pre.scrollHeight;
  } catch (e) {
    $('#log').textContent = e.message;
  }
}

// ---- pages -----------------------------------------------------------------------------------
function route() {
  const page = (location.hash.match(/^#\/(\w+)/) || [])[1] || 'pipeline';
  state.page = ['pipeline', 'topic', 'jobs', 'data', 'services'].includes(page) ? page : 'pipeline';
  document.querySelectorAll('.page').forEach((p) => { p.hidden = p.id !== `page-${state.page}`; });
  document.querySelectorAll('nav a').forEach((a) => a.classList.toggle('active', a.dataset.page === state.page));
  if (state.page === 'topic') loadMessages();
  if (state.page === 'jobs') { loadRejects(); renderActions(); }
  if (state.page === 'data') setupChart();
  if (state.page === 'services') loadServices();
  render();
}

async function start() {
  // The token arrives in the link's fragment; keep it for this tab only and out of the address bar.
  const m = location.hash.match(/token=([0-9a-f]+)/);
  if (m) {
    sessionStorage.setItem('labctl-token', m[1]);
    history.replaceState(null, '', location.pathname + '#/pipeline');
  }
  state.token = sessionStorage.getItem('labctl-token');
  state.meta = await api('/api/meta');
  $('#project').textContent = state.meta.project;
  document.title = `labctl ${state.meta.project}`;
  const mode = $('#mode');
  mode.textContent = state.meta.read_only ? 'read-only' : 'actions allowed';
  mode.classList.toggle('actions', !state.meta.read_only);
  const form = $('#browse');
  for (let p = 0; p < state.meta.partitions; p++) form.elements.partition.append(el('option', { value: p }, `${p}`));
  for (const s of state.meta.sensors) form.elements.sensor.append(el('option', {}, s));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const f = Object.fromEntries(new FormData(form));
    browseTo(f);
  });
  $('#older').addEventListener('click', () => state.older && browseTo(state.older));
  $('#chart-form').addEventListener('change', loadChart);
  $('#verify').addEventListener('click', runVerify);
  window.addEventListener('hashchange', route);
  setInterval(() => { if (state.page === 'services') loadServices(); }, 5000);
  connect();
  route();
}

start().catch((e) => {
  const b = $('#banner');
  b.textContent = `The console could not start: ${e.message}`;
  b.hidden = false;
});
