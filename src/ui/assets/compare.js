// The compare view: the selected runs' curves overlaid on one step axis (a
// fork's curve starts at its parent's fork step, so a lineage reads as one
// story), smoothing, log scale, the forget/* series beside the task's,
// markers at checkpoints, evaluations and unfreezing steps, and the recipe
// keys on which the runs differ.

import { get, h, number } from './api.js';

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#bcbd22', '#7f7f7f'];
const state = { chosen: null, smoothing: 0, log: false, ancestors: true };

const isForget = (name) => name.startsWith('forget/') || name.startsWith('forget_budget_used/');

// Exponential moving average, debiased so the first points are not pulled
// towards zero.
function smooth(points, weight) {
  if (!weight) return points;
  let average = 0;
  return points.map(([step, value], i) => {
    average = average * weight + (1 - weight) * value;
    return [step, average / (1 - weight ** (i + 1))];
  });
}

export async function compareView(root, _argument, params) {
  const runs = (params.get('runs') || '').split(',').filter(Boolean);
  if (!runs.length) {
    root.append(h('p', {}, 'Select runs in the ', h('a', { href: '#/runs' }, 'runs table'), ' to compare them.'));
    return null;
  }
  const legend = h('div', { id: 'compare-legend', class: 'legend' });
  const picker = h('div', { id: 'series-picker', class: 'picker' });
  const smoothing = h('input', { id: 'smoothing', type: 'range', min: 0, max: 0.99, step: 0.01, value: state.smoothing });
  const log = h('input', { id: 'log-scale', type: 'checkbox', checked: state.log });
  const ancestors = h('input', { id: 'ancestors', type: 'checkbox', checked: state.ancestors });
  const charts = h('div', { class: 'charts' });
  const main = h('div', { class: 'chart-column', id: 'task-charts' });
  const forget = h('div', { class: 'chart-column', id: 'forget-charts' });
  charts.append(main, forget);
  const curves = h('table', { id: 'curve-table', class: 'runs' });
  const diff = h('table', { id: 'recipe-diff', class: 'runs' });
  root.append(
    legend,
    h('div', { class: 'toolbar' }, picker,
      h('label', {}, 'smoothing ', smoothing), h('label', {}, log, ' log scale'),
      h('label', { title: 'the curves of the runs they forked from, up to the fork step' }, ancestors, ' ancestors')),
    charts,
    h('h3', {}, 'Curves'), curves,
    h('h3', {}, 'Recipe keys that differ'), diff,
  );
  smoothing.addEventListener('input', () => { state.smoothing = Number(smoothing.value); draw(); });
  log.addEventListener('change', () => { state.log = log.checked; draw(); });
  ancestors.addEventListener('change', () => { state.ancestors = ancestors.checked; load(); });

  let data = null;
  async function load() {
    data = await get('/api/compare', { runs: runs.join(','), ancestors: state.ancestors });
    const names = data.series_names.filter((n) => !isForget(n));
    if (!state.chosen) {
      const wanted = names.filter((n) => n === 'loss' || n === 'eval_loss');
      state.chosen = new Set(wanted.length ? wanted : names.slice(0, 2));
    }
    picker.replaceChildren(...names.map((name) => {
      const box = h('input', { type: 'checkbox', checked: state.chosen.has(name), 'data-series': name });
      box.addEventListener('change', () => {
        if (box.checked) state.chosen.add(name); else state.chosen.delete(name);
        draw();
      });
      return h('label', {}, box, ` ${name}`);
    }));
    legend.replaceChildren(...data.runs.filter((run) => !run.context).map((run, i) => h('span', { class: 'swatch', style: `border-color:${COLORS[i % COLORS.length]}` },
      h('a', { href: `#/run/${run.id}` }, run.label),
      run.parent ? ` (from ${run.parent.label}@${run.parent.step})` : '', ` ${run.status}`)));
    drawTables();
    draw();
  }

  function drawTables() {
    const rows = [];
    for (const run of data.runs.filter((r) => !r.context)) {
      for (const [name, points] of Object.entries(run.series)) {
        if (!points.length || !(state.chosen.has(name) || isForget(name))) continue;
        rows.push(h('tr', { 'data-run-id': run.id, 'data-series': name, 'data-first-step': run.offset + points[0][0], 'data-last-step': run.offset + points[points.length - 1][0] },
          h('td', {}, run.label), h('td', {}, name),
          h('td', { class: 'num' }, run.offset + points[0][0]), h('td', { class: 'num' }, run.offset + points[points.length - 1][0]),
          h('td', { class: 'num' }, points.length), h('td', { class: 'num' }, number(points[points.length - 1][1]))));
      }
    }
    curves.replaceChildren(h('tr', {}, ['run', 'series', 'first step', 'last step', 'points', 'last'].map((t) => h('th', {}, t))), ...rows);
    diff.replaceChildren(
      h('tr', {}, h('th', {}, 'key'), data.runs.filter((r) => !r.context).map((run) => h('th', {}, run.label))),
      ...data.diff.map((change) => h('tr', { 'data-key': change.key }, h('td', {}, change.key),
        change.values.map((value) => h('td', {}, value === null ? '-' : value)))),
    );
  }

  function draw() {
    // A compare view already left (its load was in flight) must not touch the
    // charts of the view that replaced it.
    if (!root.isConnected) return;
    for (const chart of window.graftCharts || []) chart.plot.destroy();
    window.graftCharts = [];
    main.replaceChildren();
    forget.replaceChildren();
    const forgetNames = data.series_names.filter(isForget);
    for (const name of data.series_names.filter((n) => state.chosen.has(n))) chart(main, name);
    if (forgetNames.length) forget.append(h('h3', {}, 'Forgetting of ancestors\u2019 eval sets'));
    for (const name of forgetNames) chart(forget, name);
    drawTables();
  }

  function chart(container, name) {
    // Selected runs take the colours; ancestors are drawn faint, up to the
    // step their descendants forked at.
    const members = data.runs.filter((run) => !run.context)
      .map((run, i) => ({ run, color: COLORS[i % COLORS.length], points: run.series[name] }))
      .concat(data.runs.filter((run) => run.context)
        .map((run) => ({ run, color: '#b8b8b8', points: (run.series[name] || []).filter(([step]) => step <= run.until) })))
      .filter((m) => m.points && m.points.length);
    if (!members.length) return;
    const steps = new Set();
    const shifted = members.map((m) => smooth(m.points, state.smoothing).map(([step, value]) => {
      steps.add(m.run.offset + step);
      return [m.run.offset + step, state.log && value <= 0 ? null : value];
    }));
    const xs = [...steps].sort((a, b) => a - b);
    const position = new Map(xs.map((x, i) => [x, i]));
    const columns = shifted.map((points) => {
      const column = new Array(xs.length).fill(null);
      for (const [x, value] of points) column[position.get(x)] = value;
      return column;
    });
    const sparse = members.every((m) => m.points.length < 60);
    const box = h('div', { class: 'chart', 'data-series': name });
    container.append(box);
    const plot = new uPlot({
      title: name,
      width: Math.max(320, container.clientWidth - 10),
      height: 240,
      scales: { x: { time: false }, y: state.log ? { distr: 3 } : {} },
      axes: [{ label: 'step' }, {}],
      series: [{ label: 'step' }, ...members.map((m) => ({
        label: m.run.context ? `${m.run.label} (ancestor)` : m.run.label,
        stroke: m.color, width: m.run.context ? 1 : 1.5, dash: m.run.context ? [5, 3] : undefined, spanGaps: true,
        points: { show: sparse, size: 4 },
      }))],
      hooks: { draw: [(u) => markers(u, members)] },
    }, [xs, ...columns], box);
    window.graftCharts.push({
      series: name, plot,
      curves: members.map((m, i) => ({
        run: m.run.id, label: m.run.label, context: Boolean(m.run.context),
        first: shifted[i][0][0], last: shifted[i][shifted[i].length - 1][0], count: shifted[i].length,
      })),
    });
  }

  // Checkpoints as triangles on the x axis, evaluations as ticks along the
  // top, unfreezing steps and fork points as dashed lines.
  function markers(u, members) {
    const ctx = u.ctx;
    const { top, height } = u.bbox;
    const pixel = devicePixelRatio || 1;
    ctx.save();
    for (const m of members) {
      const x = (step) => u.valToPos(m.run.offset + step, 'x', true);
      ctx.fillStyle = m.color;
      ctx.strokeStyle = m.color;
      if (m.run.context) continue;
      for (const checkpoint of m.run.checkpoints) {
        const px = x(checkpoint.step);
        ctx.beginPath();
        ctx.moveTo(px, top + height);
        ctx.lineTo(px - 4 * pixel, top + height - 7 * pixel);
        ctx.lineTo(px + 4 * pixel, top + height - 7 * pixel);
        ctx.fill();
      }
      for (const step of m.run.evaluations) {
        const px = x(step);
        ctx.fillRect(px - pixel, top, 2 * pixel, 5 * pixel);
      }
      ctx.setLineDash([4 * pixel, 4 * pixel]);
      const lines = m.run.unfreeze.map((change) => [change.step, `unfreeze ${change.layers}`]);
      if (m.run.parent) lines.push([0, `fork of ${m.run.parent.label}@${m.run.parent.step}`]);
      for (const [step, text] of lines) {
        const px = x(step);
        // A line on the plot's edge would only cover the axis.
        if (px < u.bbox.left + 2 * pixel || px > u.bbox.left + u.bbox.width) continue;
        ctx.beginPath();
        ctx.moveTo(px, top);
        ctx.lineTo(px, top + height);
        ctx.stroke();
        ctx.font = `${10 * pixel}px sans-serif`;
        ctx.fillText(text, px + 3 * pixel, top + 16 * pixel);
      }
      ctx.setLineDash([]);
    }
    ctx.restore();
  }

  await load();
  return { refresh: load };
}
