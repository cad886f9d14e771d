// The rollout page, live: each server-sent event carries the page's live part, rendered by
// the server as for the first load; put it in place (no reload). Without JavaScript the page
// is the same, as of when it was loaded.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live || live.dataset.done || !window.EventSource) return;
  const source = new EventSource(live.dataset.events);
  source.addEventListener("rollout", function (event) {
    const update = JSON.parse(event.data);
    const focused = document.activeElement && document.activeElement.id;
    live.innerHTML = update.html;
    live.dataset.updates = String(Number(live.dataset.updates) + 1);
    live.dataset.state = update.state;
    if (focused) {
      const again = document.getElementById(focused);
      if (again) again.focus();
    }
    if (["completed", "rolled-back", "failed"].includes(update.state)) source.close();
  });
})();
