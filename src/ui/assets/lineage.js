// The fork tree as a graph: base models at the left, each run to the right
// of the run whose checkpoint it started from, edges labelled with that
// checkpoint's step. Search (tag or id prefix) keeps the matches and their
// ancestors; a node's − folds its subtree; large stores draw a page of
// nodes at a time.

import { get, h, number } from './api.js';

const SVG = 'http://www.w3.org/2000/svg';
const COLUMN = 230;
const ROW = 56;
const NODE_W = 190;
const NODE_H = 42;
const state = { search: '', folded: new Set(), limit: 300 };

function s(tag, attributes = {}, text) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

export async function lineageView(root) {
  const search = h('input', { id: 'lineage-search', type: 'search', placeholder: 'tag or id prefix' });
  search.value = state.search;
  const info = h('span', { id: 'lineage-info' });
  const more = h('button', { hidden: true, onclick: () => { state.limit += 300; load(); } }, 'show more');
  const canvas = h('div', { class: 'graph' });
  root.append(h('div', { class: 'toolbar' }, search, info, more), canvas);
  search.addEventListener('input', () => { state.search = search.value.trim().toLowerCase(); load(); });

  let data = null;
  async function load(fetchAgain = false) {
    if (!data || fetchAgain) data = await get('/api/lineage');
    draw();
  }

  function draw() {
    const byId = new Map(data.runs.map((run) => [run.id, run]));
    const children = new Map();
    const roots = new Map();
    for (const run of [...data.runs].sort((a, b) => a.seq - b.seq)) {
      if (run.parent_run && byId.has(run.parent_run)) {
        if (!children.has(run.parent_run)) children.set(run.parent_run, []);
        children.get(run.parent_run).push(run);
      } else {
        if (!roots.has(run.base_model)) roots.set(run.base_model, []);
        roots.get(run.base_model).push(run);
      }
    }
    // Search keeps matching runs and every ancestor of one.
    let keep = null;
    if (state.search) {
      keep = new Set();
      for (const run of data.runs) {
        const hit = run.id.startsWith(state.search) || run.tags.some((t) => t.toLowerCase().includes(state.search));
        for (let at = hit ? run : null; at && !keep.has(at.id); at = byId.get(at.parent_run)) keep.add(at.id);
      }
    }
    const models = new Map(data.models.map((m) => [m.id, m.name]));
    const svg = s('svg', { id: 'lineage-graph' });
    const edges = s('g');
    const nodes = s('g');
    svg.append(edges, nodes);
    let row = 0;
    let drawn = 0;
    let hidden = 0;

    // Lay out a subtree; returns the node's y (the middle of its children).
    function place(run, depth) {
      if (keep && !keep.has(run.id)) return null;
      if (drawn >= state.limit) { hidden += 1; return null; }
      drawn += 1;
      const kids = (children.get(run.id) || []).filter((k) => !keep || keep.has(k.id));
      const folded = state.folded.has(run.id);
      const x = 40 + depth * COLUMN;
      const ys = [];
      if (!folded) {
        for (const kid of kids) {
          const y = place(kid, depth + 1);
          if (y !== null) ys.push([kid, y]);
        }
      }
      const y = ys.length ? (ys[0][1] + ys[ys.length - 1][1]) / 2 : 30 + ROW * row++;
      for (const [kid, ky] of ys) {
        const x1 = x + NODE_W, x2 = x + COLUMN;
        edges.append(s('path', {
          class: 'edge', 'data-from': run.id, 'data-to': kid.id,
          d: `M${x1},${y} C${x1 + 25},${y} ${x2 - 25},${ky} ${x2},${ky}`,
        }));
        edges.append(s('text', { class: 'edge-label', x: x1 + 6, y: ky - 6 + (y - ky) * 0.15 }, `@${kid.start_step}`));
      }
      const group = s('g', { class: `node ${run.status}`, 'data-run-id': run.id, 'data-label': run.label, transform: `translate(${x},${y - NODE_H / 2})` });
      group.append(s('rect', { width: NODE_W, height: NODE_H, rx: 6 }));
      group.append(s('text', { x: 8, y: 16, class: 'title' }, run.tags.length ? run.tags.join(', ') : run.id.slice(0, 12)));
      const best = run.best_eval_loss === null ? '' : ` · eval ${number(run.best_eval_loss)}`;
      group.append(s('text', { x: 8, y: 33, class: 'detail' }, `${run.id.slice(0, 8)} · ${run.status} · ${run.steps} steps${best}`));
      group.addEventListener('click', () => { location.hash = `#/run/${run.id}`; });
      if (kids.length) {
        const toggle = s('text', { x: NODE_W - 16, y: 16, class: 'fold' }, folded ? `+${kids.length}` : '−');
        toggle.addEventListener('click', (event) => {
          event.stopPropagation();
          if (folded) state.folded.delete(run.id); else state.folded.add(run.id);
          draw();
        });
        group.append(toggle);
      }
      nodes.append(group);
      return y;
    }

    for (const [model, runs] of roots) {
      const startRow = row;
      const ys = runs.map((run) => place(run, 1)).filter((y) => y !== null);
      if (!ys.length) continue;
      const y = (ys[0] + ys[ys.length - 1]) / 2;
      for (const ry of ys) {
        edges.append(s('path', { class: 'edge model-edge', d: `M${40 + 150},${y} L${40 + COLUMN},${ry}` }));
      }
      const group = s('g', { class: 'model', transform: `translate(40,${y - 14})` });
      group.append(s('rect', { width: 150, height: 28, rx: 14 }));
      group.append(s('text', { x: 10, y: 18 }, `model ${(models.get(model) || model.slice(0, 8)).split('/').pop()}`));
      nodes.append(group);
      if (row === startRow) row += 1;
    }
    let depth = 0;
    for (const node of nodes.querySelectorAll('g.node')) {
      depth = Math.max(depth, Number(node.getAttribute('transform').match(/\(([\d.]+)/)[1]));
    }
    svg.setAttribute('width', depth + NODE_W + 60);
    svg.setAttribute('height', Math.max(row, 1) * ROW + 30);
    info.textContent = `${drawn} of ${data.runs.length} runs drawn`;
    more.hidden = hidden === 0;
    canvas.replaceChildren(svg);
  }

  await load(true);
  // While runs train, the record changes every second or so: the whole
  // graph is fetched again at most every 5 s.
  return { refresh: () => load(true), every: 5000 };
}
