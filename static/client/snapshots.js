// Snapshots: instant repeat visits and reading from what was seen.
//
// Every element with data-cache-key is a fragment the server can refresh on its own.
// - After each swap its HTML, ETag and time are kept in the agent's store.
// - On load a snapshot whose ETag matches the page's data-etag is painted at once and not
//   requested; a missing or older one is refreshed alone, with If-None-Match (304 if unchanged).
// - Refreshes morph the element (idiomorph), so what the agent is doing inside survives:
//   typed text, caret, focus, the list's scroll position, and every page loaded by scrolling
//   (a list refresh asks for as many rows as are loaded; a conversation, as many messages).
// - Answers come back in any order: one asked for before a newer answer filled a fragment
//   inside what it replaces (a pane requested before a push refreshed its messages) does not
//   leave the older copy on screen: that fragment is refreshed again at once.
(function (Inbox) {
  "use strict";
  if (!Inbox.store || !Inbox.paint) { return; }
  var store = Inbox.store;
  var MAX_PAGES = 20;  // the server's cap too (fragments.MAX_PAGES)

  var slot = Inbox.paint.slot, freshCsrf = Inbox.paint.freshCsrf;  // client/paint.js

  function save(el) {
    if (!el.dataset.cacheKey || el.querySelector("[data-placeholder]")) { return; }
    store.saveSnapshot(slot(el), { html: el.outerHTML, etag: el.dataset.etag || "", at: Date.now() });
  }

  function all() { return Array.prototype.slice.call(document.querySelectorAll("[data-cache-key]")); }

  function outermost(elements) {
    return elements.filter(function (el) {
      return !elements.some(function (other) { return other !== el && other.contains(el); });
    });
  }

  function byKey(key) {
    return key ? document.querySelector('[data-cache-key="' + CSS.escape(key) + '"]') : null;
  }

  // Ask the server for a fresh copy of `el` (through its hx-get, hx-trigger="refresh"); one a
  // swap replaced since it was picked is found again by what it shows.
  function refresh(el) {
    if (!document.contains(el)) { el = byKey(el.dataset && el.dataset.cacheKey); }
    if (el) { htmx.trigger(el, "refresh"); }
  }

  // On load: server-rendered fragments are kept as snapshots; placeholders (the server sends
  // them once this browser holds snapshots) were painted by paint.js before the client loaded
  // (here only on a page the service worker kept: offline.js pointed them at this URL's
  // snapshots), and only the ones whose snapshot is missing or older than the page's data-etag
  // are requested.
  function start() {
    var first = Inbox.paint.first;
    if (!first) {  // a page the service worker kept: painted now, and htmx has not seen it
      first = Inbox.paint.paintAll();
      first.painted.forEach(function (el) { htmx.process(el); });
    }
    all().forEach(function (el) { if (first.painted.indexOf(el) === -1) { save(el); } });
    var stale = first.stale;
    document.dispatchEvent(new CustomEvent("inbox:painted"));
    if (document.body.dataset.offlineFrom) {
      // A page the service worker kept: the server was just unreachable. Asking now would only
      // fail (and paint the same snapshots again); live.js revalidates every fragment as soon as
      // the server answers.
      if (Inbox.live) { Inbox.live.probe(); }
      return;
    }
    outermost(stale).forEach(refresh);
  }

  // -- htmx: send validators, keep loaded rows, keep snapshots ------------------------------
  document.addEventListener("htmx:configRequest", function (e) {
    var el = e.detail.elt;
    if (!el || !el.dataset || !el.dataset.cacheKey || e.detail.verb !== "get") { return; }
    // Refetch every page the agent loaded, not just the first: a list asks for as many pages
    // as it shows rows (data-page-items says what a row is); the messages, once older ones were
    // loaded, from the oldest shown on (data-page-since names its id), in the pane's refresh too.
    var paged = el.dataset.pageSize ? el : el.querySelector("[data-page-size]");
    var items = paged ? paged.querySelectorAll(paged.dataset.pageItems) : [];
    if (items.length > Number(paged && paged.dataset.pageSize)) {
      if (paged.dataset.pageSince) {
        e.detail.parameters.since = items[0].getAttribute(paged.dataset.pageSince);
      } else {
        e.detail.parameters.pages = Math.min(MAX_PAGES, Math.ceil(items.length / Number(paged.dataset.pageSize)));
      }
    }
    var snapshot = store.snapshot(slot(el));
    if (snapshot && snapshot.etag && el.dataset.etag === snapshot.etag) {
      e.detail.headers["If-None-Match"] = snapshot.etag;
    }
  });
  document.addEventListener("htmx:afterSettle", function (e) {
    // Only what the swap changed: the fragments around and inside its target (a long list is
    // not serialized again because the pane changed). A target the swap replaced: all of them.
    var target = e.target;
    var changed = target && document.contains(target) ? all().filter(function (el) {
      return el.contains(target) || target.contains(el);
    }) : all();
    changed.forEach(save);
  });

  // -- a slow answer never overwrites a newer one ---------------------------------------------
  // Every request is numbered when it leaves; every fragment remembers the number of the
  // request whose answer last wrote it. An answer older than that for a fragment it writes
  // (the fragment itself, or one inside it) is swapped (it is newer for the rest) and that
  // fragment is asked for again, so the newest state is what stays on screen.
  var numberOf = new WeakMap(), sent = 0, filledBy = {};  // data-cache-key -> request number
  var older = new WeakMap();  // request -> the keys it would turn back

  function written(target) { return all().filter(function (el) { return target.contains(el); }); }

  document.addEventListener("htmx:beforeRequest", function (e) {
    if (e.detail.xhr) { numberOf.set(e.detail.xhr, ++sent); }
  });
  document.addEventListener("htmx:beforeSwap", function (e) {
    var n = e.detail.xhr && numberOf.get(e.detail.xhr);
    if (!n || !e.detail.shouldSwap || !e.detail.target) { return; }
    var target = e.detail.target;
    older.set(e.detail.xhr, {
      target: target.dataset && target.dataset.cacheKey,
      keys: written(target).map(function (el) { return el.dataset.cacheKey; })
        .filter(function (key) { return (filledBy[key] || 0) > n; }),
    });
  });
  document.addEventListener("htmx:afterSwap", function (e) {
    var n = e.detail.xhr && numberOf.get(e.detail.xhr), swap = n && older.get(e.detail.xhr);
    if (!swap) { return; }
    // An outerHTML swap replaced the target: what it wrote is the element with its key now.
    var target = document.contains(e.detail.target) ? e.detail.target : byKey(swap.target);
    if (target) {
      written(target).forEach(function (el) {
        filledBy[el.dataset.cacheKey] = Math.max(filledBy[el.dataset.cacheKey] || 0, n);
      });
    }
    outermost(swap.keys.map(byKey).filter(Boolean)).forEach(refresh);
  });

  // Morphing keeps what the agent is doing: the value of a reply box is the agent's (drafts.js
  // owns it), never the server's empty one.
  if (window.Idiomorph) {
    Idiomorph.defaults.callbacks.beforeAttributeUpdated = function (name, el) {
      if (name === "value" && el.hasAttribute && el.hasAttribute("data-draft")) { return false; }
    };
  }

  Inbox.fragments = { all: all, refresh: refresh, outermost: outermost, freshCsrf: freshCsrf };
  Inbox.lastSeen = Inbox.lastSeen || Date.now();  // when what is on screen was last known fresh

  // After htmx has processed the page (its listener was registered first), before any request.
  // (A deferred script runs while readyState is still "interactive", before that event.)
  if (document.readyState === "complete") {
    start();
  } else {
    document.addEventListener("DOMContentLoaded", start);
  }
})(window.Inbox);
