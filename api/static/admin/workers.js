// The workers page refreshes itself: every 5 s it fetches the page again and swaps the content of <main>,
// without navigating (heartbeat ages, rows in flight, queue depths and the charts move on their own).
(function () {
  "use strict";
  const main = document.querySelector("main");
  if (!main) return;
  async function refresh() {
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      if (!response.ok) return; // keep the last view; the next tick tries again
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.querySelector("main");
      if (fresh) main.innerHTML = fresh.innerHTML;
    } catch (error) {
      // the server is unreachable for a moment: keep what is shown
    }
  }
  window.setInterval(refresh, 5000);
})();
