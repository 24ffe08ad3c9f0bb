// Live: push, honest online/offline, and one identity across tabs.
//
// - Socket.IO `data:updated` {keys, audience} names stale keys, prefixes and tags: matching
//   fragments are refreshed, coalesced; at once when few browsers heard it, spread out when a
//   crowd did (the cache makes it one database fetch either way).
//   Push is only a hint: on reconnect and when the tab shows again, every fragment revalidates.
// - "Offline" is a fact: a lost socket or a failed request only makes the client ask the
//   server (GET /session). Unreachable: the banner says since when, actions that need the
//   server are disabled, and the probe repeats every second until the server answers.
// - A failed request shows its error next to the control that sent it and is retried with
//   backoff when it was a refresh; the page is never left disabled by one failure.
// - Signing out, in this tab or another, or anywhere (the server says `session:ended`), drops
//   this agent's data and sends every tab to the sign-in page.
(function (Inbox) {
  "use strict";
  if (!Inbox.store || !Inbox.fragments) { return; }
  var fragments = Inbox.fragments;
  var PROBE_EVERY_MS = 1000, PROBE_TIMEOUT_MS = 1500, RETRY_MAX_MS = 30000;

  // -- push ----------------------------------------------------------------------------------
  // A change few browsers see is refetched at once; one a crowd sees (the server says how
  // many sockets heard it) is spread over up to SPREAD_MAX_MS, about a millisecond per
  // browser, so a thousand of them do not ask in the same instant.
  var FEW = 10, SPREAD_MAX_MS = 800;
  var pending = new Set(), timer = null, due = Infinity;

  function matches(el, keys) {
    var key = el.dataset.cacheKey, tags = (el.dataset.cacheTags || "").split(" ");
    return keys.some(function (k) {
      return k === "*" || key === k || key.indexOf(k + ":") === 0 || tags.indexOf(k) !== -1;
    });
  }

  function spread(audience) {
    return audience > FEW ? Math.random() * Math.min(SPREAD_MAX_MS, audience) : 0;
  }

  // Refresh `elements` in `delay` ms, with whatever else is waiting then (what arrives close
  // together is one refresh of the outermost fragments).
  function schedule(elements, delay) {
    elements.forEach(function (el) { pending.add(el); });
    var at = Date.now() + delay;
    if (timer && due <= at) { return; }
    clearTimeout(timer);
    due = at;
    timer = setTimeout(function () {
      var batch = fragments.outermost(Array.from(pending));
      pending.clear();
      timer = null;
      due = Infinity;
      batch.forEach(fragments.refresh);
    }, delay);
  }

  // Every fragment (a reconnect, the tab shown again): everyone reconnecting after a restart
  // does this at once, so it is always spread a little.
  function revalidateAll() { schedule(fragments.all(), 50 + Math.random() * 150); }

  // -- identity --------------------------------------------------------------------------------
  var channel = window.BroadcastChannel ? new BroadcastChannel("inbox") : null;
  var leaving = false;

  function toLogin() {
    window.location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
  }

  function signedOut() {  // the session is over: keep nothing of this agent, say sign in
    if (leaving) { return; }
    leaving = true;
    Inbox.store.forget();
    if (socket) { socket.disconnect(); }
    toLogin();
  }

  if (channel) {
    channel.onmessage = function (e) {
      if (e.data && e.data.signedOut === Inbox.agent) { signedOut(); }
    };
  }
  document.addEventListener("submit", function (e) {
    if (e.target.matches('form[action$="/logout"]')) {
      var waiting = Inbox.outbox ? Inbox.outbox.count() : 0;
      if (waiting && !window.confirm(waiting + (waiting === 1 ? " reply has" : " replies have") +
          " not reached the server yet. Signing out deletes " + (waiting === 1 ? "it" : "them") +
          " from this device. Sign out anyway?")) {
        e.preventDefault();
        e.stopImmediatePropagation();
        return;
      }
      leaving = true;
      Inbox.store.forget();
      if (channel) { channel.postMessage({ signedOut: Inbox.agent }); }
    }
  }, true);

  // -- is the server there? -------------------------------------------------------------------
  var probing = null, probeTimer = null;

  // GET /session: 200 (reachable, still this agent), 401 (signed out), anything else or no
  // answer in time (unreachable).
  function probe() {
    if (probing) { return probing; }
    var abort = new AbortController();
    var timeout = setTimeout(function () { abort.abort(); }, PROBE_TIMEOUT_MS);
    probing = fetch("/session", { cache: "no-store", credentials: "same-origin", signal: abort.signal,
                                  headers: { "Accept": "application/json" } })
      .then(function (response) {
        if (response.status === 401) { signedOut(); return false; }
        if (!response.ok) { throw new Error("status " + response.status); }
        return response.json().then(function (me) {
          if (String(me.agent_id) !== Inbox.agent) { window.location.reload(); return false; }
          online();
          return true;
        });
      })
      .catch(function () { offline(); return false; })
      .finally(function () { clearTimeout(timeout); probing = null; });
    return probing;
  }

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

  function applyOffline() {  // also after a swap brought new buttons in
    var off = document.body.classList.contains("is-offline");
    document.querySelectorAll("[data-needs-server]").forEach(function (button) {
      button.disabled = off;
      if (off) { button.title = "You are offline: this needs the server."; }
      else { button.removeAttribute("title"); }
    });
  }

  function offline() {
    if (leaving) { return; }
    var when = new Date(Inbox.lastSeen).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
    banner().textContent = "Offline \u2014 showing what you saw at " + when;
    banner().hidden = false;
    document.body.classList.add("is-offline");
    applyOffline();
    clearTimeout(probeTimer);
    probeTimer = setTimeout(probe, PROBE_EVERY_MS);  // until the server answers again
  }

  function online() {
    Inbox.lastSeen = Date.now();
    clearTimeout(probeTimer);
    if (!document.body.classList.contains("is-offline")) { return; }
    document.body.classList.remove("is-offline");
    banner().hidden = true;
    applyOffline();
    revalidateAll();
    document.dispatchEvent(new CustomEvent("inbox:online"));  // the outbox sends what waits
    reconnect();
  }

  // -- requests: errors next to their control, refreshes retried ----------------------------------
  var retries = new WeakMap();

  function isRefresh(detail) {
    return detail.requestConfig && detail.requestConfig.triggeringEvent &&
      detail.requestConfig.triggeringEvent.type === "refresh";
  }

  function retryLater(el) {
    var delay = Math.min(RETRY_MAX_MS, (retries.get(el) || 500) * 2);
    retries.set(el, delay);
    setTimeout(function () { fragments.refresh(el); }, delay);
  }

  // Where the agent looks for the result of what they did: the form, or the control itself.
  function errorSlot(el) {
    var anchor = el.closest("form") || el;
    var slot = anchor.querySelector(":scope > .request-error");
    if (!slot) {
      slot = document.createElement("p");
      slot.className = "request-error";
      slot.setAttribute("role", "alert");
      if (anchor.tagName === "FORM") { anchor.appendChild(slot); } else { anchor.after(slot); }
    }
    return slot;
  }

  function showError(detail, message) {
    var el = detail.elt;
    // Queued by the outbox, or answered from a snapshot: nothing failed that the agent must redo.
    if (!el || !document.contains(el) || detail.queuedReply || detail.servedFromSnapshot) { return; }
    if (isRefresh(detail)) { retryLater(el); return; }  // background work: try again quietly
    errorSlot(el).textContent = message;
  }

  function clearError(el) {
    var anchor = el && el.closest && (el.closest("form") || el);
    var slot = anchor && anchor.querySelector(":scope > .request-error");
    if (slot) { slot.remove(); } else if (anchor && anchor.nextElementSibling &&
                                           anchor.nextElementSibling.classList.contains("request-error")) {
      anchor.nextElementSibling.remove();
    }
  }

  document.addEventListener("htmx:sendError", function (e) {
    probe().then(function (reachable) {
      showError(e.detail, reachable ? "That did not reach the server. Try again."
                                    : "You are offline: that needs the server. Try again when the banner is gone.");
    });
  });
  document.addEventListener("htmx:responseError", function (e) {
    var status = e.detail.xhr ? e.detail.xhr.status : 0;
    showError(e.detail, "The server could not do that (error " + status + "). Try again.");
  });
  document.addEventListener("htmx:afterRequest", function (e) {
    if (e.detail.successful) {
      retries.delete(e.detail.elt);
      clearError(e.detail.elt);
      online();
    }
  });
  document.addEventListener("htmx:afterSettle", applyOffline);

  // -- the socket ------------------------------------------------------------------------------
  // Long-polling first, then upgraded to a WebSocket; reconnect attempts stay frequent so the
  // page is live again soon after the server is back.
  var socket = window.io ? io({ reconnectionDelay: 500, reconnectionDelayMax: 2000 }) : null;
  var restartTimer = null;

  // Only a socket that gave up (the server ended it, or refused it) is started again: one that
  // is still trying is the manager's. Asking an active one to connect sends a second CONNECT
  // while the first awaits its answer, the server refuses that one, and socket.io's client
  // then tears itself down yet still says "connected": push would be deaf until a reload.
  function reconnect() {
    if (!socket || socket.active || leaving) { return; }
    clearTimeout(restartTimer);
    restartTimer = null;
    if (socket.connected) { socket.disconnect(); }  // a refused socket still believes it is connected
    socket.connect();
  }

  if (socket) {
    socket.on("data:updated", function (data) {
      var keys = (data && data.keys) || [];
      var stale = fragments.all().filter(function (el) { return matches(el, keys); });
      if (stale.length) { schedule(stale, spread(Number(data.audience) || 0)); }
    });
    socket.on("session:ended", signedOut);
    var connectedBefore = false;
    socket.on("connect", function () {
      window.__inboxSocketConnected = true;  // tests wait for this before changing data
      online();
      if (connectedBefore) { revalidateAll(); }  // catch whatever was missed while away
      connectedBefore = true;
    });
    socket.on("disconnect", function (reason) {
      window.__inboxSocketConnected = false;
      if (leaving) { return; }
      // The server ended it on purpose (sign-out elsewhere): it will not reconnect by itself.
      probe().then(function (reachable) {
        if (reachable && reason === "io server disconnect") { reconnect(); }
      });
    });
    socket.on("connect_error", function () {
      // Still trying (the server is away): the probe shows the banner. Refused (not signed in:
      // the probe's 401 sends the page to /login; any other refusal): start again in a while.
      probe().then(function (reachable) {
        if (reachable && !socket.active && !restartTimer) {
          restartTimer = setTimeout(reconnect, PROBE_EVERY_MS);
        }
      });
    });
  }
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") { probe(); revalidateAll(); }
  });

  Inbox.live = { probe: probe };
})(window.Inbox);
