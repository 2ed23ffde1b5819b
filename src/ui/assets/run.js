// A run's page: where it comes from, the commands to continue it, its
// recipe, data sets (with the drift report), executions and checkpoints.

import { get, h, number } from './api.js';

// A JSON config as dotted keys, as `graft diff` names them.
function flatten(value, prefix = '', out = []) {
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    for (const [key, child] of Object.entries(value)) flatten(child, prefix ? `${prefix}.${key}` : key, out);
  } else {
    out.push([prefix, Array.isArray(value) ? JSON.stringify(value) : String(value)]);
  }
  return out;
}

function table(id, header, rows) {
  return h('table', { id, class: 'runs' },
    h('tr', {}, header.map((title) => h('th', {}, title))),
    rows.map((cells) => h('tr', {}, cells.map((cell) => h('td', {}, cell)))));
}

function copyable(name, command) {
  const text = h('code', { 'data-command': name }, command);
  const button = h('button', { onclick: async () => {
    try {
      await navigator.clipboard.writeText(command);
      button.textContent = 'copied';
    } catch {
      const range = document.createRange();
      range.selectNodeContents(text);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      button.textContent = 'selected: Ctrl-C';
    }
  } }, 'copy');
  return h('div', { class: 'command' }, h('span', { class: 'command-name' }, name), text, button);
}

export async function runView(root, reference) {
  async function load() {
    let run;
    try {
      run = await get(`/api/runs/${encodeURIComponent(reference)}`);
    } catch (failure) {
      root.replaceChildren(h('p', { class: 'error' }, failure.message));
      return;
    }
    const ancestry = [...run.ancestry].reverse().map((a, i, all) => [
      h('a', { href: `#/run/${a.id}` }, a.label),
      i + 1 < all.length ? ` @${all[i + 1].start_step} → ` : '',
    ]);
    const metrics = Object.entries(run.metrics).map(([name, m]) => [name, number(m.best), number(m.last), m.count, m.last_step]);
    const drift = run.notes && run.notes.drift ? flatten(run.notes.drift) : [];
    const forgetting = run.forgetting ? flatten(run.forgetting) : [];
    const parts = [
      h('h2', { id: 'run-title' }, run.label, ' ', h('small', {}, run.id)),
      h('p', {}, h('span', { class: `status ${run.status}` }, run.status), ` · ${run.steps} steps · `,
        h('a', { href: `#/compare?runs=${run.id}` }, 'curves'), ' · lineage: ', ancestry),
      h('h3', {}, 'Commands'),
      Object.entries(run.commands).map(([name, command]) => copyable(name, command)),
      h('h3', {}, 'Metrics'),
      table('run-metrics', ['series', 'best', 'last', 'points', 'last step'], metrics),
      forgetting.length ? [h('h3', {}, 'Forgetting'), table('run-forgetting', ['key', 'value'], forgetting)] : [],
      h('h3', {}, 'Data sets'),
      table('run-datasets', ['role', 'name', 'weight', 'path', 'id', 'replay of'],
        run.datasets.map((d) => [d.role, d.name, d.weight, d.path || '-', d.id.slice(0, 12), d.replay_of ? d.replay_of.slice(0, 12) : '-'])),
      drift.length ? [h('h3', {}, 'Data drift from the parent'), table('run-drift', ['key', 'value'], drift)] : [],
      h('h3', {}, 'Executions'),
      table('run-executions', ['#', 'purpose', 'status', 'started', 'ended', 'host', 'error / end reason'],
        run.executions.map((e) => [e.number, e.purpose, e.status, e.started_at, e.ended_at || '-', e.host, e.error || e.end_reason || ''])),
      h('h3', {}, 'Checkpoints'),
      table('run-checkpoints', ['step', 'id', 'metrics', ''],
        run.checkpoints.map((c) => [c.step, c.id.slice(0, 12),
          Object.entries(c.metrics || {}).map(([k, v]) => `${k}=${number(v)}`).join('  '), c.retired ? 'retired' : ''])),
      h('h3', {}, 'Recipe'),
      table('run-recipe', ['key', 'value'], flatten(run.recipe.config)),
    ];
    root.replaceChildren(...parts.flat(Infinity));
  }
  await load();
  return { refresh: load };
}
