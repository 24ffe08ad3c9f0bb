// Offline reading: the service worker (static/sw.js) answers page loads with the server away;
// this file fills those pages from the agent's snapshots, and answers a click on a
// conversation or tab seen before from its snapshot too. What was never seen says so.
//
// A page from the service worker carries data-offline-from on <body>: the URL it was saved
// under. When that is another page (the agent's latest inbox page standing in as the shell),
// each fragment is pointed at the snapshot of what this URL shows, before snapshots.js paints.
(function (Inbox) {
  "use strict";
  if (!Inbox.store) { return; }
  var store = Inbox.store;

  if (navigator.serviceWorker) {
    navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch(function () { /* reading offline is a bonus */ });
  }

  function params(url) {
    var found = {};
    new URL(url, location.origin).searchParams.forEach(function (value, name) {
      if (value && name !== "pages" && name !== "cursor") { found[name] = value; }
    });
    return found;
  }

  function sameParams(a, b) {
    var ka = Object.keys(a), kb = Object.keys(b);
    return ka.length === kb.length && ka.every(function (k) { return a[k] === b[k]; });
  }

  // The newest snapshot of `path` with exactly these query parameters (paging aside).
  function snapshotFor(path, wanted) {
    var best = null;
    store.slots().forEach(function (slot) {
      var bar = slot.indexOf("|"), url = slot.slice(bar + 1);
      if (new URL(url, location.origin).pathname !== path || !sameParams(params(url), wanted)) { return; }
      var record = store.snapshot(slot);
      if (record && record.html && (!best || record.at > best.record.at)) {
        best = { key: slot.slice(0, bar), url: url, record: record };
      }
    });
    return best;
  }

  function notSeen(what) {
    var p = document.createElement("p");
    p.className = "offline-unseen muted center";
    p.textContent = "This " + what + " was not opened on this device while online, so it is not " +
      "available offline. It loads when the server is reachable again.";
    return p;
  }

  // Make `el` a placeholder for `snapshot` (snapshots.js paints it) or say it was never seen.
  function pointAt(el, snapshot, what) {
    if (snapshot) {
      el.dataset.cacheKey = snapshot.key;
      el.setAttribute("hx-get", snapshot.url);
      el.dataset.etag = "";
      el.innerHTML = el.tagName === "UL" ? "<li data-placeholder></li>" : "<p data-placeholder></p>";
    } else {
      el.removeAttribute("data-cache-key");
      var note = notSeen(what);
      if (el.tagName === "UL") {
        note = Object.assign(document.createElement("li"), { className: "empty-state" });
        note.append(notSeen(what));
      }
      el.replaceChildren(note);
    }
  }

  function fillShell() {
    var here = { tab: "pending" };
    Object.assign(here, params(location.href));
    var list = document.getElementById("conversation-list"), tabs = document.getElementById("tabs");
    if (list) { pointAt(list, snapshotFor("/inbox/list", here), "list"); }
    if (tabs) {
      var counts = snapshotFor("/inbox/counts", here) || snapshotFor("/inbox/counts", { tab: here.tab });
      if (counts) { pointAt(tabs, counts, "list"); }
    }
    var pane = document.getElementById("pane"), open = location.pathname.match(/^\/conversations\/(\d+)$/);
    if (!pane) { return; }
    if (!open) {
      pane.replaceChildren(Object.assign(document.createElement("p"), {
        className: "muted center", textContent: "Pick a conversation." }));
      return;
    }
    var article = document.createElement("article");
    article.id = "conversation-pane";
    article.className = "conversation";
    pane.replaceChildren(article);
    pointAt(article, snapshotFor(location.pathname, {}), "conversation");
  }

  var from = document.body.dataset.offlineFrom;
  if (from) {
    document.body.classList.add("is-offline");  // live.js confirms it and shows since when
    if (from !== location.pathname + location.search) { fillShell(); }
  }

  // A click on a conversation (an htmx GET) with the server away: its snapshot, if any.
  document.addEventListener("htmx:sendError", function (e) {
    var config = e.detail.requestConfig, target = e.detail.target;
    if (!config || config.verb !== "get" || !target || target.id !== "pane") { return; }
    var path = new URL(config.path, location.origin).pathname;
    var snapshot = snapshotFor(path, {});
    e.detail.servedFromSnapshot = true;
    if (snapshot) {
      target.innerHTML = Inbox.fragments.freshCsrf(snapshot.record.html);
      htmx.process(target);
    } else {
      target.replaceChildren(notSeen("conversation"));
    }
    var push = e.detail.elt && e.detail.elt.getAttribute("hx-push-url");
    if (push && push !== "false") { history.pushState({}, "", push); }
    document.dispatchEvent(new CustomEvent("inbox:painted"));
  });
})(window.Inbox);
