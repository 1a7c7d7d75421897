// A training fine-tune's loss curve grows: poll the chart (server-drawn SVG) every second until the
// fine-tune ends, then reload once for its checkpoints and result model.
(function () {
  "use strict";
  const box = document.getElementById("loss");
  if (!box || box.dataset.live !== "true") return;
  const chart = document.getElementById("loss-chart");
  const INTERVAL_MS = 1000;
  const TERMINAL = ["succeeded", "failed", "canceled", "expired"];

  async function poll() {
    try {
      const response = await fetch(box.dataset.poll, { credentials: "same-origin" });
      if (response.status === 401) { window.location.reload(); return; }
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      chart.innerHTML = data.svg; // drawn by the server, escaped there
      document.getElementById("ft-steps").textContent = data.steps;
      if (data.last && data.last.loss !== undefined) document.getElementById("ft-loss").textContent = data.last.loss.toFixed(4);
      const empty = document.getElementById("loss-empty");
      if (empty && data.steps > 0) empty.remove();
      if (TERMINAL.includes(data.status)) { window.location.reload(); return; }
    } catch (err) { /* try again at the next tick */ }
    window.setTimeout(poll, INTERVAL_MS);
  }

  window.setTimeout(poll, INTERVAL_MS);
})();
