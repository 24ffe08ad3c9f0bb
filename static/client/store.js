// The browser client's one per-agent store (localStorage): fragment snapshots, reply drafts,
// and the outbox of replies waiting for the server.
//
// Every record lives under "inbox:v1:<agent id>:", so one agent's data is never shown to
// another and signing out drops exactly that agent's records. Snapshots are a cache: when the
// quota is full the oldest one (of any agent) goes first. Drafts and queued replies are the
// agent's own work: never evicted, only cleared when sent or on sign-out.
window.Inbox = window.Inbox || {};
(function (Inbox) {
  "use strict";
  var agent = document.body.dataset.agentId;
  if (!agent) { return; }  // signed out: nothing to keep
  var ROOT = "inbox:", VERSION = "v1";
  var PREFIX = ROOT + VERSION + ":" + agent + ":";
  var DRAFT = "draft:", OUTBOX = "outbox:";
  var COOKIE = "inbox_snapshots";  // tells the server this browser can paint this agent's snapshots
  var closed = false;  // after sign-out nothing is written again, even by a late swap

  function read(name) {
    try { return JSON.parse(localStorage.getItem(PREFIX + name)); } catch (e) { return null; }
  }

  function write(name, value) {
    if (closed) { return false; }
    var record = JSON.stringify(value);
    for (var tries = 0; tries < 20; tries++) {
      try { localStorage.setItem(PREFIX + name, record); return true; } catch (e) {
        if (!evictOldestSnapshot()) { return false; }  // quota full: drop the oldest snapshot, retry
      }
    }
    return false;
  }

  function keys(prefix) {
    var found = [];
    for (var i = 0; i < localStorage.length; i++) {
      var k = localStorage.key(i);
      if (k && k.indexOf(prefix) === 0) { found.push(k); }
    }
    return found;
  }

  function isWork(key) {  // a draft or a queued reply: never evicted
    var kind = key.split(":")[3] + ":";
    return kind === DRAFT || kind === OUTBOX;
  }

  function evictOldestSnapshot() {
    var oldest = null, oldestAt = Infinity;
    keys(ROOT).forEach(function (k) {
      if (isWork(k)) { return; }
      var at = 0;
      try { at = JSON.parse(localStorage.getItem(k)).at || 0; } catch (e) { /* unreadable: oldest */ }
      if (at < oldestAt) { oldest = k; oldestAt = at; }
    });
    if (oldest === null) { return false; }
    localStorage.removeItem(oldest);
    return true;
  }

  Inbox.agent = agent;
  Inbox.store = {
    snapshot: function (slot) { return read(slot); },
    // The slot ("<key>|<url>") of every snapshot: the offline shell looks them up by URL and
    // reads only the ones that match (a long list's snapshot is large to parse).
    slots: function () {
      return keys(PREFIX).filter(function (k) { return !isWork(k); }).map(function (k) { return k.slice(PREFIX.length); });
    },
    saveSnapshot: function (slot, record) {
      if (write(slot, record)) {
        document.cookie = COOKIE + "=" + agent + "; path=/; SameSite=Lax; max-age=2592000";
      }
    },
    draft: function (conversation) { var d = read(DRAFT + conversation); return (d && d.text) || ""; },
    saveDraft: function (conversation, text) {
      if (text) { write(DRAFT + conversation, { text: text, at: Date.now() }); }
      else { localStorage.removeItem(PREFIX + DRAFT + conversation); }
    },
    queued: function () {
      return keys(PREFIX + OUTBOX).map(function (k) { return read(k.slice(PREFIX.length)); })
        .filter(Boolean).sort(function (a, b) { return a.at - b.at; });
    },
    queue: function (reply) { return write(OUTBOX + reply.key, reply); },
    unqueue: function (key) { localStorage.removeItem(PREFIX + OUTBOX + key); },
    // Sign-out: this agent's snapshots, drafts and queued replies go, from this tab and for
    // every tab, and from the service worker's pages.
    forget: function () {
      closed = true;
      keys(PREFIX).forEach(function (k) { localStorage.removeItem(k); });
      localStorage.removeItem("htmx-history-cache");  // htmx's copies of pages left by navigation
      document.cookie = COOKIE + "=; path=/; max-age=0";
      if (navigator.serviceWorker && navigator.serviceWorker.controller) {
        navigator.serviceWorker.controller.postMessage({ type: "forget", agent: agent });
      }
    },
  };
})(window.Inbox);
