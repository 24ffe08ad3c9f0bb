// The cache shim: instant repeat visits, live updates, offline reading.
//
// Every element with data-cache-key is a fragment the server can refresh on its own.
// - After each swap its HTML, ETag and time go to localStorage, under this agent's name.
// - On load a snapshot whose ETag matches the page's data-etag is painted at once and not
//   requested; a missing or older one is refreshed alone, with If-None-Match (304 if unchanged).
// - Socket.IO `data:updated` {keys} names stale keys, prefixes and tags: matching elements are
//   refreshed, coalesced and jittered so a change seen by many browsers is one database fetch.
// - Push is only a hint: on reconnect and when the tab shows again, every fragment revalidates.
// - Offline (socket down or a request failed) the snapshot stays, a banner says since when,
//   and actions that need the server are disabled.
(function () {
  "use strict";
  var VERSION = "v1";
  var agent = document.body.dataset.agentId;
  if (!agent) { return; }  // signed out: nothing to keep
  var PREFIX = "inbox:" + VERSION + ":" + agent + ":";
  var COOKIE = "inbox_snapshots";
  var lastSeen = Date.now();  // when what is on screen was last known fresh

  // -- snapshots ------------------------------------------------------------------
  // One snapshot per data-cache-key and URL: the same data shown with another tab selected
  // or another filter is another piece of HTML.
  function slot(el) { return PREFIX + el.dataset.cacheKey + "|" + (el.getAttribute("hx-get") || ""); }

  function load(el) {
    try { return JSON.parse(localStorage.getItem(slot(el))); } catch (e) { return null; }
  }

  function save(el) {
    if (!el.dataset.cacheKey || el.querySelector("[data-placeholder]")) { return; }
    var record = JSON.stringify({ html: el.outerHTML, etag: el.dataset.etag || "", at: Date.now() });
    for (var tries = 0; tries < 20; tries++) {
      try {
        localStorage.setItem(slot(el), record);
        document.cookie = COOKIE + "=" + agent + "; path=/; SameSite=Lax; max-age=2592000";
        return;
      } catch (e) {
        if (!evictOldest()) { return; }  // quota full: drop the oldest snapshot and try again
      }
    }
  }

  function snapshotKeys(prefix) {
    var keys = [];
    for (var i = 0; i < localStorage.length; i++) {
      var k = localStorage.key(i);
      if (k && k.indexOf(prefix) === 0) { keys.push(k); }
    }
    return keys;
  }

  function evictOldest() {
    var oldest = null, oldestAt = Infinity;
    snapshotKeys("inbox:").forEach(function (k) {
      var at = 0;
      try { at = JSON.parse(localStorage.getItem(k)).at || 0; } catch (e) { /* unreadable: oldest */ }
      if (at < oldestAt) { oldest = k; oldestAt = at; }
    });
    if (oldest === null) { return false; }
    localStorage.removeItem(oldest);
    return true;
  }

  function forget() {
    snapshotKeys(PREFIX).forEach(function (k) { localStorage.removeItem(k); });
    document.cookie = COOKIE + "=; path=/; max-age=0";
  }

  function freshCsrf(html) {
    // Snapshot forms carry the token of the session that saved them: use this page's.
    var token = document.querySelector('meta[name="csrf-token"]').content;
    return html.replace(/(name="csrf_token" value=")[^"]*"/g, "$1" + token + '"');
  }

  // -- painting and refreshing -------------------------------------------------------
  function cached() { return Array.prototype.slice.call(document.querySelectorAll("[data-cache-key]")); }

  function paint(el, snapshot) {
    var holder = document.createElement("div");
    holder.innerHTML = freshCsrf(snapshot.html);
    var fresh = holder.firstElementChild;
    el.replaceWith(fresh);
    htmx.process(fresh);
    return fresh;
  }

  function refresh(el) {
    if (document.contains(el)) { htmx.trigger(el, "refresh"); }
  }

  function outermost(elements) {
    return elements.filter(function (el) {
      return !elements.some(function (other) { return other !== el && other.contains(el); });
    });
  }

  // On load: server-rendered fragments are kept as snapshots; placeholders (the server sends
  // them once this browser holds snapshots) are painted from localStorage at once, and only
  // the ones whose snapshot is missing or older than the page's data-etag are requested.
  function start() {
    var stale = [];
    cached().forEach(function (el) {
      if (!el.querySelector("[data-placeholder]")) { save(el); return; }
      var current = el.dataset.etag || "";
      var snapshot = load(el);
      if (snapshot) {
        el = paint(el, snapshot);
        lastSeen = snapshot.at || lastSeen;
      }
      if (!snapshot || !current || snapshot.etag !== current) { stale.push(el); }
    });
    document.dispatchEvent(new CustomEvent("inbox:painted"));
    outermost(stale).forEach(refresh);
  }

  // -- htmx: send validators, keep snapshots, never swap a 304 -----------------------------
  document.addEventListener("htmx:configRequest", function (e) {
    var el = e.detail.elt;
    if (el && el.dataset && el.dataset.cacheKey && e.detail.verb === "get") {
      var snapshot = load(el);
      if (snapshot && snapshot.etag && el.dataset.etag === snapshot.etag) {
        e.detail.headers["If-None-Match"] = snapshot.etag;
      }
    }
  });
  document.addEventListener("htmx:afterSettle", function () {
    cached().forEach(save);  // a handful of elements: simpler than working out which swapped
    online();
  });
  document.addEventListener("htmx:sendError", function () { offline(); });

  // -- push ------------------------------------------------------------------------------
  var pending = new Set(), timer = null;

  function matches(el, keys) {
    var key = el.dataset.cacheKey, tags = (el.dataset.cacheTags || "").split(" ");
    return keys.some(function (k) {
      return k === "*" || key === k || key.indexOf(k + ":") === 0 || tags.indexOf(k) !== -1;
    });
  }

  function schedule(elements) {
    elements.forEach(function (el) { pending.add(el); });
    if (timer) { return; }
    // Coalesce what arrives close together, then wait a random moment so many browsers
    // told at once do not ask at once.
    timer = setTimeout(function () {
      var batch = outermost(Array.from(pending));
      pending.clear();
      timer = null;
      batch.forEach(refresh);
    }, 50 + Math.random() * 150);
  }

  function revalidateAll() { schedule(cached()); }

  var socket = window.io ? io() : null;  // long-polling first, then upgraded to a WebSocket
  if (socket) {
    socket.on("data:updated", function (data) {
      var keys = (data && data.keys) || [];
      schedule(cached().filter(function (el) { return matches(el, keys); }));
    });
    var connectedBefore = false;
    socket.on("connect", function () {
      window.__inboxSocketConnected = true;  // tests wait for this before changing data
      online();
      if (connectedBefore) { revalidateAll(); }  // catch whatever was missed while away
      connectedBefore = true;
    });
    socket.on("disconnect", function () { window.__inboxSocketConnected = false; offline(); });
    socket.on("connect_error", function (err) {
      if (err && err.message === "sign in first") {  // the session ended: not offline, signed out
        window.location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
        return;
      }
      offline();
    });
  }
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") { revalidateAll(); }
  });

  // -- offline ---------------------------------------------------------------------------

  function banner() {
    var el = document.getElementById("offline-banner");
    if (!el) {
      el = document.createElement("div");
      el.id = "offline-banner";
      el.className = "offline-banner";
      el.setAttribute("role", "status");
      document.body.prepend(el);
    }
    return el;
  }

  function offline() {
    var when = new Date(lastSeen).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
    banner().textContent = "Offline \u2014 showing what you saw at " + when;
    banner().hidden = false;
    document.body.classList.add("is-offline");
    document.querySelectorAll("[data-needs-server]").forEach(function (button) {
      button.disabled = true;
      button.title = "You are offline: this needs the server.";
    });
  }

  function online() {
    lastSeen = Date.now();
    if (!document.body.classList.contains("is-offline")) { return; }
    document.body.classList.remove("is-offline");
    banner().hidden = true;
    document.querySelectorAll("[data-needs-server]").forEach(function (button) {
      button.disabled = false;
      button.removeAttribute("title");
    });
    revalidateAll();
  }

  // -- leaving -------------------------------------------------------------------------------
  document.addEventListener("submit", function (e) {
    if (e.target.matches('form[action$="/logout"]')) { forget(); }
  }, true);

  // After htmx has processed the page (its listener was registered first), before any request.
  // (A deferred script runs while readyState is still "interactive", before that event.)
  if (document.readyState === "complete") {
    start();
  } else {
    document.addEventListener("DOMContentLoaded", start);
  }
})();
