// The first paint of a repeat visit, from the smallest script that can do it.
//
// A browser that holds this agent's snapshots is sent the page with placeholders: this file
// (with store.js, the "paint" bundle) runs as the page's last element, a plain script (no
// inline code: the Content-Security-Policy forbids it) read from the service worker's cache,
// before htmx and the rest of the client are even parsed. It puts each snapshot on screen and
// notes which fragments the page says changed since; snapshots.js, once the whole client has
// loaded, refreshes only those (none on a visit where nothing changed) and keeps snapshots.
// htmx processes the painted fragments when it starts, as it does the server's own.
// A page the service worker kept while the server was away is left to snapshots.js and
// offline.js: they point its fragments at this URL's snapshots first.
window.Inbox = window.Inbox || {};
(function (Inbox) {
  "use strict";
  // Where a repeat visit's paint starts (User Timing; bench/browser.py reads it).
  if (window.performance && performance.mark) { performance.mark("inbox:paint-start"); }

  // One snapshot per data-cache-key and URL: the same data shown with another tab selected
  // or another filter is another piece of HTML.
  function slot(el) { return el.dataset.cacheKey + "|" + (el.getAttribute("hx-get") || ""); }

  function freshCsrf(html) {
    // Snapshot forms carry the token of the session that saved them: use this page's.
    var token = document.querySelector('meta[name="csrf-token"]').content;
    return html.replace(/(name="csrf_token" value=")[^"]*"/g, "$1" + token + '"');
  }

  // Put the snapshot where the placeholder `el` is; returns the painted element.
  function paint(el, snapshot) {
    var holder = document.createElement("div");
    holder.innerHTML = freshCsrf(snapshot.html);
    var fresh = holder.firstElementChild;
    el.replaceWith(fresh);
    return fresh;
  }

  // Paint every placeholder that has a snapshot: {painted, stale} (stale: no snapshot, or one
  // older than the validator the page carries; they are asked for once the client runs).
  function paintAll() {
    var painted = [], stale = [];
    document.querySelectorAll("[data-cache-key]").forEach(function (el) {
      if (!el.querySelector("[data-placeholder]")) { return; }  // the server's own copy
      var current = el.dataset.etag || "";
      var snapshot = Inbox.store.snapshot(slot(el));
      if (snapshot) {
        el = paint(el, snapshot);
        painted.push(el);
        Inbox.lastSeen = snapshot.at || Inbox.lastSeen;
      }
      if (!snapshot || !current || snapshot.etag !== current) { stale.push(el); }
    });
    return { painted: painted, stale: stale };
  }

  Inbox.paint = { slot: slot, freshCsrf: freshCsrf, paintAll: paintAll, first: null };
  if (!Inbox.store || document.body.dataset.offlineFrom) { return; }
  Inbox.paint.first = paintAll();
  // Listened to by whoever is already there; the rest of the client hears it again once loaded.
  if (Inbox.paint.first.painted.length) { document.dispatchEvent(new CustomEvent("inbox:painted")); }
})(window.Inbox);
