// The browser client's one per-agent store (localStorage): fragment snapshots, reply drafts.
//
// Every record lives under "inbox:v1:<agent id>:", so one agent's data is never shown to
// another and signing out drops exactly that agent's records. Snapshots are a cache: when the
// quota is full the oldest one (of any agent) goes first. Drafts are the agent's own work:
// never evicted, only cleared when sent or on sign-out.
window.Inbox = window.Inbox || {};
(function (Inbox) {
  "use strict";
  var agent = document.body.dataset.agentId;
  if (!agent) { return; }  // signed out: nothing to keep
  var ROOT = "inbox:", VERSION = "v1";
  var PREFIX = ROOT + VERSION + ":" + agent + ":";
  var DRAFT = "draft:";
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

  function isDraft(key) { return key.split(":")[3] + ":" === DRAFT; }

  function evictOldestSnapshot() {
    var oldest = null, oldestAt = Infinity;
    keys(ROOT).forEach(function (k) {
      if (isDraft(k)) { return; }
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
    // Sign-out: this agent's snapshots and drafts go, from this tab and for every tab.
    forget: function () {
      closed = true;
      keys(PREFIX).forEach(function (k) { localStorage.removeItem(k); });
      document.cookie = COOKIE + "=; path=/; max-age=0";
    },
  };
})(window.Inbox);
