// The live canvas of a running job: follows the job's server-sent events (drafts while denoising,
// committed canvases, status changes) and shows each canvas position settle. Reloads when the job ends.
(function () {
  "use strict";
  const live = document.getElementById("live");
  const badge = document.querySelector("#job-status .badge");
  if (!live) return;
  const grid = document.getElementById("canvas-grid");
  const committed = document.getElementById("committed");
  const stateEl = document.getElementById("live-state");
  const pieces = new Map(); // token id -> its text
  let previous = [];
  let stable = [];

  async function learnPieces(ids) {
    const missing = [...new Set(ids)].filter((id) => !pieces.has(id));
    if (!missing.length) return;
    try {
      const response = await fetch(live.dataset.pieces + "?ids=" + missing.join(","), { credentials: "same-origin" });
      if (!response.ok) return;
      const data = await response.json();
      for (const [id, text] of Object.entries(data)) pieces.set(Number(id), text);
    } catch (err) { /* cells fall back to token ids */ }
  }

  function cell(i) {
    while (grid.children.length <= i) grid.appendChild(document.createElement("span"));
    return grid.children[i];
  }

  function showDraft(draft) {
    const ids = draft.token_ids;
    ids.forEach((id, i) => {
      const el = cell(i);
      const changed = previous[i] !== id;
      stable[i] = changed ? 0 : (stable[i] || 0) + 1;
      const text = pieces.has(id) ? pieces.get(id) : "#" + id;
      el.textContent = text.replace(/\s/g, "·") || "∅";
      el.title = "position " + i + ", token " + id + ", unchanged for " + stable[i] + " steps";
      el.className = changed ? "changed" : "settled";
      el.style.opacity = String(Math.max(0.35, 1 - stable[i] * 0.08));
    });
    previous = ids.slice();
    grid.dataset.step = String(draft.step);
    grid.dataset.canvas = String(draft.canvas);
    grid.dataset.drafts = String(Number(grid.dataset.drafts || 0) + 1);
    stateEl.textContent = "canvas " + draft.canvas + ", step " + draft.step;
  }

  function setStatus(status) {
    if (!badge) return;
    badge.textContent = status;
    badge.className = "badge s-" + status;
    badge.dataset.status = status;
  }

  // Events are handled one after another (a draft may wait for its token texts), in the order they came.
  let chain = Promise.resolve();
  function then(handler) {
    return (e) => { chain = chain.then(() => handler(JSON.parse(e.data))); };
  }

  const source = new EventSource(live.dataset.events);
  source.addEventListener("draft", then(async (draft) => {
    await learnPieces(draft.token_ids);
    showDraft(draft);
  }));
  source.addEventListener("canvas", then((data) => {
    committed.textContent += data.text;
    previous = [];
    stable = [];
  }));
  source.addEventListener("status", then((data) => setStatus(data.status)));
  source.addEventListener("done", then((job) => {
    source.close();
    setStatus(job.status);
    stateEl.textContent = "finished; loading the result…";
    window.setTimeout(() => window.location.reload(), 800);
  }));
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) stateEl.textContent = "the live stream closed; reload the page";
    else stateEl.textContent = "reconnecting to the live stream…";
  });
})();
