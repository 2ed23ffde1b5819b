// The page: a view per route (#/runs, #/lineage, #/compare?runs=..,
// #/run/ID), re-drawn from the server's JSON whenever the record changes.

import { get } from './api.js';
import { runsView } from './runs.js';
import { lineageView } from './lineage.js';
import { compareView } from './compare.js';
import { runView } from './run.js';

const views = { runs: runsView, lineage: lineageView, compare: compareView, run: runView };
let current = null;
// Counts route changes: a view whose route was left while it loaded is not made
// current.
let shown = 0;

function route() {
  const [path, query = ''] = location.hash.replace(/^#\/?/, '').split('?');
  const [name, ...rest] = path.split('/');
  return { name: views[name] ? name : 'runs', argument: rest.join('/'), params: new URLSearchParams(query) };
}

async function show() {
  const token = ++shown;
  current = null;
  const { name, argument, params } = route();
  const root = document.getElementById('view');
  // Each view draws into a container of its own. A view left while a load of its
  // own was in flight (a refresh the record's changes keep starting) then draws
  // into a detached element instead of over the view that replaced it.
  const container = document.createElement('div');
  root.replaceChildren(container);
  root.dataset.view = name;
  // Charts belong to the view they were drawn in.
  for (const chart of window.graftCharts || []) chart.plot.destroy();
  window.graftCharts = [];
  for (const link of document.querySelectorAll('nav a')) {
    link.classList.toggle('active', link.dataset.view === name);
  }
  const view = await views[name](container, argument, params);
  if (token === shown) current = view;
}

// Refresh the view now, or, for a view that asks to be refreshed at most
// every `every` ms (the whole lineage of a large store), once that has passed.
let pending = null;
function refreshSoon() {
  const view = current;
  if (!view || !view.refresh) return;
  const wait = (view.every || 0) - (Date.now() - (view.last || 0));
  if (wait <= 0) {
    view.last = Date.now();
    view.refresh();
  } else if (!pending) {
    pending = setTimeout(() => { pending = null; refreshSoon(); }, wait);
  }
}

// Long-poll the record's version and refresh the view when it moves.
async function follow() {
  let version = null;
  const badge = document.getElementById('live');
  for (;;) {
    try {
      const answer = await get('/api/version', version === null ? {} : { after: version });
      badge.classList.remove('offline');
      if (version !== null && answer.version !== version) refreshSoon();
      version = answer.version;
    } catch (error) {
      badge.classList.add('offline');
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
}

window.addEventListener('hashchange', show);
show();
follow();
