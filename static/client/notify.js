// New work is noticed: the pending count in the title, a glow on rows that arrive live,
// and a desktop notification when the agent may not be looking.
(function () {
  "use strict";
  var known = null;  // conversation ids already shown in the list; null until first paint

  function rows() { return document.querySelectorAll("#conversation-list li.row[data-conversation-id]"); }

  // "(3) Inbox · Support inbox": the Pending tab's count, readable from the taskbar.
  function updateTitle() {
    var count = document.querySelector('#tabs a[href*="tab=pending"] .count');
    var n = count ? parseInt(count.textContent, 10) : NaN;
    if (isNaN(n)) return;  // a placeholder, or a page without tabs: leave the title alone
    var base = document.title.replace(/^\(\d+\) /, "");
    document.title = n > 0 ? "(" + n + ") " + base : base;
  }

  function currentTab() {
    var here = document.querySelector('#tabs a[aria-current="page"]');
    return here ? new URL(here.href).searchParams.get("tab") : null;
  }

  function remember() {
    // A list still waiting for its first fetch (a placeholder) has shown the agent nothing:
    // what fills it is not news.
    if (document.querySelector("#conversation-list [data-placeholder]")) return;
    known = known || new Set();
    rows().forEach(function (row) { known.add(row.dataset.conversationId); });
  }

  // A live refresh re-requests the list itself; "load more" (a cursor page) and the filters
  // ask with another element, and what they bring in is not news.
  function isLiveRefresh(config) {
    return config && config.verb === "get" && config.elt && config.elt.id === "conversation-list" &&
      !/[?&]cursor=/.test(config.path);
  }

  function announce(row) {
    row.classList.add("is-new");
    row.addEventListener("animationend", function () { row.classList.remove("is-new"); }, { once: true });
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    if (!document.hidden && currentTab() !== "pending") return;  // visible, and not a queue
    var name = row.querySelector(".name"), preview = row.querySelector(".preview");
    try {
      new Notification(name ? name.textContent.trim() : "New conversation", {
        body: preview ? preview.textContent.trim() : "",
        tag: "conversation-" + row.dataset.conversationId,  // one per conversation, not per refresh
      });
    } catch (e) {
      // Mobile Chrome allows notifications only from a service worker: the glow must do.
    }
  }

  function afterPaint() {
    updateTitle();
    remember();  // whatever is on screen at first paint is what the agent already saw
    // A snapshot saved mid-glow carries the class: a repeat visit shows nothing as new.
    rows().forEach(function (row) { row.classList.remove("is-new"); });
  }

  document.addEventListener("inbox:painted", afterPaint);
  document.addEventListener("DOMContentLoaded", afterPaint);
  document.addEventListener("htmx:afterSettle", updateTitle);
  // On swap, not settle: settling waits a moment, and another fragment settling first must
  // not count the list's new rows as already seen.
  document.addEventListener("htmx:afterSwap", function (event) {
    var live = isLiveRefresh(event.detail && event.detail.requestConfig);
    rows().forEach(function (row) {
      var id = row.dataset.conversationId;
      if (known && !known.has(id) && live) announce(row);
    });
    remember();
  });

  // Permission may only be asked for from a gesture, so a small button asks once.
  function offerNotifications() {
    if (!("Notification" in window) || Notification.permission !== "default") return;
    var place = document.querySelector(".topbar .me");
    if (!place || place.querySelector(".notify-me")) return;
    var button = document.createElement("button");
    button.type = "button";
    button.className = "link notify-me";
    button.textContent = "Notify me";
    button.title = "Desktop notifications for new conversations";
    button.addEventListener("click", function () {
      Notification.requestPermission().then(function (answer) {
        if (answer !== "default") button.remove();
      });
    });
    place.prepend(button);
  }
  document.addEventListener("DOMContentLoaded", offerNotifications);
})();
