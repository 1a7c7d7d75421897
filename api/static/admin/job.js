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

  // Only the newest draft is drawn: when the page falls behind (a late subscriber replays the history,
  // a slow machine) it skips frames instead of lagging further and further.
  let latest = null;
  let drawing = false;
  async function draw() {
    if (drawing) return;
    drawing = true;
    while (latest) {
      const draft = latest;
      latest = null;
      await learnPieces(draft.token_ids);
      showDraft(draft);
    }
    drawing = false;
  }

  const source = new EventSource(live.dataset.events);
  source.addEventListener("draft", (e) => {
    const draft = JSON.parse(e.data);
    if ((draft.try || 0) !== 0) return; // a Sudoku job with tries: follow the first try's canvas
    latest = draft;
    draw();
  });
  source.addEventListener("canvas", (e) => {
    committed.textContent += JSON.parse(e.data).text;
    latest = null; // drafts of the committed canvas are stale now
    previous = [];
    stable = [];
  });
  source.addEventListener("status", (e) => setStatus(JSON.parse(e.data).status));
  source.addEventListener("done", (e) => {
    source.close();
    setStatus(JSON.parse(e.data).status);
    stateEl.textContent = "finished; loading the result…";
    window.setTimeout(() => window.location.reload(), 800);
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) stateEl.textContent = "the live stream closed; reload the page";
    else stateEl.textContent = "reconnecting to the live stream…";
  });
})();
