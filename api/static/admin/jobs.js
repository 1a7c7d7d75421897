// The jobs table refreshes itself: it polls the page's JSON twin, swaps the table body, and marks the rows
// whose status changed (and the new ones) for a few seconds. No full reload, no library.
(function () {
  "use strict";
  const table = document.getElementById("jobs");
  if (!table) return;
  const body = table.tBodies[0];
  const state = document.getElementById("poll-state");
  const INTERVAL_MS = 1000;
  const MARK_MS = 8000;
  const marked = new Map(); // job id -> [class, until]
  let known = statuses();

  function statuses() {
    const out = new Map();
    for (const row of body.rows) if (row.dataset.id) out.set(row.dataset.id, row.dataset.status);
    return out;
  }

  function mark(now) {
    for (const row of body.rows) {
      const id = row.dataset.id;
      if (!id) continue;
      const before = known.get(id);
      if (before === undefined) marked.set(id, ["new", now + MARK_MS]);
      else if (before !== undefined && before !== row.dataset.status) marked.set(id, ["changed", now + MARK_MS]);
      const m = marked.get(id);
      if (m && m[1] > now) row.classList.add(m[0]);
    }
  }

  function updateCounts(counts) {
    for (const [status, n] of Object.entries(counts || {})) {
      const el = document.querySelector('[data-count="' + status + '"]');
      if (el) el.textContent = n;
    }
  }

  async function poll() {
    try {
      const response = await fetch(table.dataset.poll, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.status === 401) { window.location.reload(); return; }
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      body.innerHTML = data.html; // rendered by the server from the same template as the page
      mark(Date.now());
      known = statuses();
      updateCounts(data.counts);
      state.textContent = "";
      table.dataset.polled = String(Number(table.dataset.polled || 0) + 1);
    } catch (err) {
      state.textContent = "Refresh failed (" + err.message + "); retrying. Reload the page if this persists.";
    }
    window.setTimeout(poll, INTERVAL_MS);
  }

  window.setTimeout(poll, INTERVAL_MS);
})();
