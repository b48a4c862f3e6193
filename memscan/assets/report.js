(function () {
  const data = JSON.parse(document.getElementById('memscan-data').textContent);
  const $ = (id) => document.getElementById(id);
  const state = {category: 'all', cls: 'all', page: 1, size: 60, current: 0};
  // review decisions: kept in this browser (localStorage, one key per run) until downloaded as decisions.csv
  const storeKey = 'memscan-decisions:' + data.run_key;
  // keyed by path, which comes from data: a prototype-free object, so a file named "__proto__" is just a key
  let decisions = Object.create(null);
  try { Object.assign(decisions, JSON.parse(localStorage.getItem(storeKey) || '{}') || {}); } catch (e) { /* none */ }
  const cardEls = new Map();
  let shownCards = [];
  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    if (h.get('category')) state.category = h.get('category');
    if (h.get('class')) state.cls = h.get('class');
    if (h.get('page')) state.page = Math.max(1, parseInt(h.get('page'), 10) || 1);
    if (h.get('size')) state.size = Math.max(1, parseInt(h.get('size'), 10) || 60);
  }
  function writeHash() {
    const h = new URLSearchParams({category: state.category, class: state.cls, page: state.page, size: state.size});
    history.replaceState(null, '', '#' + h.toString());
  }
  function option(sel, value, label) {
    const o = document.createElement('option'); o.value = value; o.textContent = label; sel.appendChild(o);
  }
  function filtered() {
    return data.cards.filter(c => (state.category === 'all' || c.category === state.category ||
                                   (c.views || []).includes(state.category)) &&
                                  (state.cls === 'all' || c.label_name === state.cls));
  }
  function card(c) {
    const d = document.createElement('div'); d.className = 'card cat-' + c.category;
    if (c.img) {
      const im = document.createElement('img'); im.className = 'thumb'; im.loading = 'lazy'; im.src = c.img;
      im.alt = c.path; d.appendChild(im);
    } else {
      const m = document.createElement('div'); m.className = 'noimg'; m.textContent = 'image not found'; d.appendChild(m);
    }
    const lines = [
      ['path', c.path],
      ['', 'given ', ['given', c.label_name], ' → predicted ', ['pred', c.pred_name + ' (' + c.p_pred.toFixed(2) + ')']],
      ['', c.category + ' · mislabel ' + c.mislabel_score.toFixed(3) + ' · memorization ' +
           c.memorization_score.toFixed(3)],
      ['', 'csg ' + c.csg.toPrecision(3) + ' · aum ' + c.aum.toFixed(2) + ' · p(given) ' + c.p_given.toFixed(2)],
    ];
    if (c.suggested_label_name !== undefined && c.suggested_label_name !== c.label_name)
      lines.push(['suggest', 'suggested: ', ['pred', c.suggested_label_name],
                  c.suggestion_agreement == null ? '' : ' (' + Math.round(100 * c.suggestion_agreement) + '% of late epochs)']);
    if (c.reason) lines.push(['reason', c.reason]);
    if (c.image_issue) lines.push(['issue', 'image: ' + c.image_issue.replaceAll(',', ', ')]);
    if (c.duplicate_of) lines.push(['issue', (c.duplicate_kind === 'exact' ? 'exact' : 'near') + ' duplicate of ' +
                                    c.duplicate_of + (c.duplicate_suspect ? ' (label conflict: this label looks wrong)' :
                                    c.duplicate_conflict ? ' (label conflict)' : '')]);
    for (const [cls, ...parts] of lines) {
      const p = document.createElement('div'); if (cls) p.className = cls;
      for (const part of parts) {
        if (Array.isArray(part)) { const s = document.createElement('span'); s.className = part[0];
          s.textContent = part[1]; p.appendChild(s); }
        else p.appendChild(document.createTextNode(part));
      }
      d.appendChild(p);
    }
    if (c.margins && c.margins.length > 1) d.appendChild(sparkline(c.margins));
    d.appendChild(reviewControls(c));
    d.onclick = e => { if (e.target === d || e.target.tagName === 'IMG') setCurrent(shownCards.indexOf(c)); };
    cardEls.set(c.path, d); refreshCard(c);
    return d;
  }
  function reviewControls(c) {
    const box = document.createElement('div'); box.className = 'review-controls';
    const keep = document.createElement('button'); keep.textContent = 'keep'; keep.title = 'keep the label (a)';
    keep.className = 'keep'; keep.onclick = () => decide(c, 'keep');
    const sel = document.createElement('select'); sel.className = 'relabel'; sel.title = 'relabel to… (r; s: the suggestion)';
    option(sel, '', 'relabel to…');
    const sugg = c.suggested_label_name !== undefined && c.suggested_label_name !== c.label_name ? c.suggested_label_name : null;
    if (sugg !== null) option(sel, sugg, sugg + ' (suggested)');
    for (const k of data.all_classes) if (k !== c.label_name && k !== sugg) option(sel, k, k);
    sel.onchange = () => { if (sel.value) decide(c, 'relabel', sel.value); };
    const rm = document.createElement('button'); rm.textContent = 'remove'; rm.title = 'remove from the dataset (x)';
    rm.className = 'remove'; rm.onclick = () => decide(c, 'remove');
    const badge = document.createElement('span'); badge.className = 'decision';
    box.append(keep, sel, rm, badge);
    return box;
  }
  function refreshCard(c) {
    const d = cardEls.get(c.path); if (!d) return;
    const v = decisions[c.path];
    d.dataset.decision = v ? v.decision : '';
    d.querySelector('.decision').textContent = !v ? '' : v.decision === 'relabel' ? '→ ' + v.new_label :
                                                v.decision === 'keep' ? 'kept' : 'removed';
    d.querySelector('select.relabel').value = v && v.decision === 'relabel' ? v.new_label : '';
  }
  function decide(c, decision, newLabel) {
    if (decision === null) delete decisions[c.path];
    else decisions[c.path] = {given: c.label_name, decision: decision, new_label: decision === 'relabel' ? newLabel : '',
                              note: (decisions[c.path] || {}).note || ''};
    try { localStorage.setItem(storeKey, JSON.stringify(decisions)); } catch (e) { /* private mode: this page only */ }
    refreshCard(c); summary();
  }
  function summary() {
    const v = Object.values(decisions), n = k => v.filter(x => x.decision === k).length;
    $('decided').textContent = v.length ? `${v.length} decisions: ${n('keep')} keep, ${n('relabel')} relabel, ` +
                                          `${n('remove')} remove` : 'no decisions yet';
    $('download').disabled = $('clear').disabled = !v.length;
    document.body.dataset.decisions = String(v.length);
  }
  function csvCell(s) { s = String(s == null ? '' : s); return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }
  function decisionsCsv() {
    const rows = [['path', 'given', 'decision', 'new_label', 'note']];
    for (const p of Object.keys(decisions).sort()) {
      const v = decisions[p]; rows.push([p, v.given, v.decision, v.new_label, v.note]);
    }
    return rows.map(r => r.map(csvCell).join(',')).join('\r\n') + '\r\n';
  }
  function download() {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([decisionsCsv()], {type: 'text/csv;charset=utf-8'}));
    a.download = 'decisions.csv'; document.body.appendChild(a); a.click(); a.remove();
  }
  function setCurrent(i) {
    if (!shownCards.length) return;
    state.current = Math.max(0, Math.min(i, shownCards.length - 1));
    shownCards.forEach((c, j) => { const d = cardEls.get(c.path); if (d) d.classList.toggle('current', j === state.current); });
    const d = cardEls.get(shownCards[state.current].path);
    if (d && d.scrollIntoView) d.scrollIntoView({block: 'nearest'});
  }
  function move(step) {
    const i = state.current + step, pages = Math.max(1, Math.ceil(filtered().length / state.size));
    if (i >= shownCards.length && state.page < pages) { state.page += 1; render(); setCurrent(0); }
    else if (i < 0 && state.page > 1) { state.page -= 1; render(); setCurrent(shownCards.length - 1); }
    else setCurrent(i);
  }
  document.addEventListener('keydown', e => {
    if (e.ctrlKey || e.metaKey || e.altKey || ['INPUT', 'TEXTAREA'].includes(e.target.tagName)) return;
    if (e.target.tagName === 'SELECT' && e.key !== 'Escape') return;
    const c = shownCards[state.current];
    const act = {
      j: () => move(1), ArrowRight: () => move(1), k: () => move(-1), ArrowLeft: () => move(-1),
      a: () => { decide(c, 'keep'); move(1); },
      x: () => { decide(c, 'remove'); move(1); },
      s: () => { if (c.suggested_label_name !== undefined && c.suggested_label_name !== c.label_name) {
                   decide(c, 'relabel', c.suggested_label_name); move(1); } },
      u: () => decide(c, null),
      r: () => { const sel = cardEls.get(c.path).querySelector('select.relabel'); sel.focus(); },
      n: () => { if (!decisions[c.path]) return; const t = prompt('note for ' + c.path, decisions[c.path].note);
                 if (t !== null) { decisions[c.path].note = t; decide(c, decisions[c.path].decision, decisions[c.path].new_label); } },
      Escape: () => { if (document.activeElement) document.activeElement.blur(); },
    }[e.key];
    if (act && (c || ['Escape'].includes(e.key))) { e.preventDefault(); act(); }
  });
  function sparkline(values) {
    // the margin (given-label logit minus the best other) per epoch: below the dashed zero line another class wins
    const ns = 'http://www.w3.org/2000/svg', w = 120, h = 28, pad = 2;
    const ok = values.filter(v => v !== null), lo = Math.min(0, ...ok), hi = Math.max(0, ...ok), span = (hi - lo) || 1;
    const x = i => pad + i * (w - 2 * pad) / (values.length - 1), y = v => pad + (hi - v) * (h - 2 * pad) / span;
    const svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('class', 'spark'); svg.setAttribute('width', w); svg.setAttribute('height', h);
    svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
    const t = document.createElementNS(ns, 'title');
    t.textContent = 'margin per epoch: ' + values.map(v => v === null ? '?' : v.toFixed(1)).join(', ');
    svg.appendChild(t);
    const zero = document.createElementNS(ns, 'line');
    zero.setAttribute('x1', pad); zero.setAttribute('x2', w - pad); zero.setAttribute('y1', y(0)); zero.setAttribute('y2', y(0));
    zero.setAttribute('class', 'zero'); svg.appendChild(zero);
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('points', values.map((v, i) => v === null ? null : `${x(i).toFixed(1)},${y(v).toFixed(1)}`)
                                      .filter(Boolean).join(' '));
    svg.appendChild(line);
    return svg;
  }
  function render() {
    const rows = filtered();
    const pages = Math.max(1, Math.ceil(rows.length / state.size));
    state.page = Math.min(state.page, pages);
    const start = (state.page - 1) * state.size, shown = rows.slice(start, start + state.size);
    shownCards = shown; cardEls.clear();
    const g = $('gallery'); g.replaceChildren(...shown.map(card));
    setCurrent(Math.min(state.current, shown.length - 1));
    $('range').textContent = rows.length ? `${start + 1}–${start + shown.length} of ${rows.length} (page ${state.page}/${pages})`
                                         : 'no samples match these filters';
    $('prev').disabled = state.page <= 1; $('next').disabled = state.page >= pages;
    $('category').value = state.category; $('class').value = state.cls; $('size').value = String(state.size);
    document.body.dataset.shown = String(shown.length); document.body.dataset.matching = String(rows.length);
    writeHash();
  }
  option($('category'), 'all', `all flagged (${data.cards.length})`);
  for (const [k, v] of Object.entries(data.counts)) option($('category'), k, `${k} (${v} flagged)`);
  option($('class'), 'all', 'all classes');
  for (const c of data.classes) option($('class'), c, c);
  for (const s of [30, 60, 120, 240]) option($('size'), String(s), s + ' per page');
  readHash();
  if (![30, 60, 120, 240].includes(state.size)) option($('size'), String(state.size), state.size + ' per page');
  $('category').onchange = e => { state.category = e.target.value; state.page = 1; render(); };
  $('class').onchange = e => { state.cls = e.target.value; state.page = 1; render(); };
  $('size').onchange = e => { state.size = parseInt(e.target.value, 10); state.page = 1; render(); };
  $('prev').onclick = () => { state.page -= 1; state.current = 0; render(); };
  $('next').onclick = () => { state.page += 1; state.current = 0; render(); };
  $('download').onclick = download;
  $('clear').onclick = () => {
    if (!confirm(`Forget all ${Object.keys(decisions).length} decisions of this run?`)) return;
    decisions = Object.create(null); try { localStorage.removeItem(storeKey); } catch (e) { /* nothing stored */ }
    shownCards.forEach(refreshCard); summary();
  };
  window.addEventListener('hashchange', () => { readHash(); render(); });
  render();
  summary();
})();
