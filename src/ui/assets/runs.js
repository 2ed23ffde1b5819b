// The runs table: the --where language in a search box (errors point at
// their column), sortable columns of any key, paging, and selection for
// the compare view.

import { get, h, number } from './api.js';

const PAGE = 100;
// Survives leaving and re-entering the view.
const state = {
  where: '',
  sort: '',
  columns: ['optim.lr', 'best.eval_loss'],
  offset: 0,
  selected: new Set(),
};

export async function runsView(root) {
  const where = h('input', {
    id: 'where', type: 'search', spellcheck: 'false', autocomplete: 'off',
    placeholder: "filter: optim.lr < 1e-4 and best.eval_loss < 2.1 (Enter)",
  });
  where.value = state.where;
  const error = h('div', { id: 'where-error', class: 'error', hidden: true });
  const addColumn = h('input', { id: 'add-column', list: 'known-keys', placeholder: 'add column: a key' });
  const keys = h('datalist', { id: 'known-keys' });
  const compare = h('button', { id: 'compare-selected', onclick: () => {
    location.hash = `#/compare?runs=${[...state.selected].join(',')}`;
  } }, 'Compare selected');
  const count = h('span', { id: 'row-count' });
  const table = h('table', { id: 'runs-table', class: 'runs' });
  const pager = h('div', { class: 'pager' });
  root.append(
    h('div', { class: 'toolbar' }, where, h('button', { onclick: () => apply() }, 'Filter')),
    error,
    h('div', { class: 'toolbar' }, addColumn, keys, compare, count),
    table,
    pager,
  );

  where.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') apply();
  });
  addColumn.addEventListener('change', () => {
    const key = addColumn.value.trim();
    if (key && !state.columns.includes(key)) state.columns.push(key);
    addColumn.value = '';
    load();
  });
  get('/api/keys').then((known) => {
    keys.replaceChildren(...known.map((key) => h('option', { value: key })));
  });

  function apply() {
    state.where = where.value;
    state.offset = 0;
    load();
  }

  function showError(failure) {
    const body = failure.body || {};
    error.hidden = false;
    where.classList.toggle('invalid', body.parameter === 'where');
    if (body.column) {
      const column = body.column;
      error.replaceChildren(
        h('div', {}, `${body.error} (column ${column})`),
        h('pre', {}, `${body.source}\n${' '.repeat(column - 1)}^`),
      );
      where.focus();
      where.setSelectionRange(column - 1, column);
    } else {
      error.replaceChildren(h('div', {}, body.error || failure.message));
    }
    error.dataset.column = body.column || '';
  }

  async function load() {
    let page;
    try {
      page = await get('/api/table', {
        where: state.where, sort: state.sort, columns: state.columns.join(','),
        offset: state.offset, limit: PAGE,
      });
    } catch (failure) {
      showError(failure);
      return;
    }
    error.hidden = true;
    where.classList.remove('invalid');
    draw(page);
  }

  function header(key, title = key) {
    const sorted = state.sort.replace(/^-/, '') === key;
    const arrow = sorted ? (state.sort.startsWith('-') ? ' ▼' : ' ▲') : '';
    return h('th', { class: 'sortable', 'data-key': key, onclick: () => {
      state.sort = sorted && !state.sort.startsWith('-') ? `-${key}` : key;
      load();
    } }, title + arrow);
  }

  function draw(page) {
    count.textContent = `${page.total} of ${page.runs_in_store} runs`;
    compare.disabled = state.selected.size === 0;
    const head = h('tr', {}, h('th', {}), header('run'), header('tag'), header('status'),
      header('steps'), h('th', {}, 'from'),
      page.columns.map((key) => header(key)));
    const rows = page.rows.map((run) => {
      const box = h('input', { type: 'checkbox', checked: state.selected.has(run.id) });
      box.addEventListener('change', () => {
        if (box.checked) state.selected.add(run.id);
        else state.selected.delete(run.id);
        compare.disabled = state.selected.size === 0;
      });
      const from = run.parent ? h('a', { href: `#/run/${run.parent.id}` }, `${run.parent.label}@${run.parent.step}`) : 'base model';
      return h('tr', { 'data-run-id': run.id, 'data-label': run.label },
        h('td', {}, box),
        h('td', { class: 'id' }, h('a', { href: `#/run/${run.id}` }, run.id.slice(0, 12))),
        h('td', {}, run.tags.join(', ')),
        h('td', { class: `status ${run.status}` }, run.status),
        h('td', { class: 'num' }, run.steps),
        h('td', {}, from),
        page.columns.map((key) => h('td', { class: 'num' }, number(run.values[key]))));
    });
    table.replaceChildren(h('thead', {}, head), h('tbody', {}, rows));
    const last = Math.min(page.offset + PAGE, page.total);
    pager.replaceChildren(
      h('button', { disabled: page.offset === 0, onclick: () => { state.offset = Math.max(0, state.offset - PAGE); load(); } }, '‹ newer'),
      ` ${page.total ? page.offset + 1 : 0}–${last} of ${page.total} `,
      h('button', { disabled: last >= page.total, onclick: () => { state.offset += PAGE; load(); } }, 'older ›'),
    );
  }

  await load();
  return { refresh: load };
}
