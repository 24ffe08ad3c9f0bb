// The outbox: a reply sent while offline, or whose request got no answer, is not lost.
//
// Every send carries an idempotency key made here. When the request cannot reach the server
// (or the answer never comes back) the reply is kept in the agent's store under that key,
// shown in its conversation as "Queued", and sent again by itself once the server answers:
// the server stores the key with the message, so a retry of a request that did commit
// returns the same message and the reply exists exactly once. A reply the server refuses
// meanwhile (the conversation was closed or transferred) stays, with the reason, until the
// agent copies it back into the reply box or discards it.
//
// A private note (the reply box's "Private note" switch on, or the note-only box of a
// conversation one cannot reply to) waits the same way and stays a note: the flag goes with it.
// The switch is part of the draft: kept per conversation, put back after a reload, and never
// turned off by a refresh (a note must never go out as a reply because the pane was redrawn).
(function (Inbox) {
  "use strict";
  if (!Inbox.store) { return; }
  var store = Inbox.store;
  var RETRY_MS = 5000;
  var flushing = false;

  function newKey() {
    if (window.crypto && crypto.randomUUID) { return crypto.randomUUID(); }
    return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 12);
  }

  function replyForm(elt) { return elt && elt.matches && elt.matches("form.reply") ? elt : null; }

  // Whether the form sends a note: its switch is on, or it only takes notes (a hidden private=1).
  function isNote(form) {
    var flag = form.querySelector('[name="private"]');
    return !!flag && (flag.type === "checkbox" ? flag.checked : flag.value === "1");
  }

  function queue(conversation, text, key, note) {
    store.queue({ key: key || newKey(), conversation: conversation, text: text, at: Date.now(), state: "queued",
                  private: !!note });
    var box = document.querySelector('textarea[data-draft="' + conversation + '"]');
    if (box && box.value === text) { box.value = ""; box.dispatchEvent(new Event("input", { bubbles: true })); }
    store.saveDraft(conversation, box ? box.value : "");
    render();
    setTimeout(flush, 1000);  // if the server is there after all, do not wait for a reconnect
  }

  function say(form, text) {
    var slot = form.querySelector(":scope > .request-error") || form.appendChild(document.createElement("p"));
    slot.className = "request-error";
    slot.setAttribute("role", "alert");
    slot.textContent = text;
  }

  // -- sending through the form ------------------------------------------------------------------
  var keys = new WeakMap();  // request -> its idempotency key and text

  document.addEventListener("htmx:configRequest", function (e) {
    var form = replyForm(e.detail.elt);
    if (!form || e.detail.verb !== "post") { return; }
    e.detail.parameters.idempotency_key = newKey();
  });
  document.addEventListener("htmx:beforeRequest", function (e) {
    var form = replyForm(e.detail.elt);
    if (!form) { return; }
    var box = form.querySelector("textarea[data-draft]");
    var files = form.querySelector('input[type="file"][name="file"]');
    var withFiles = !!files && files.files.length > 0;
    if (document.body.classList.contains("is-offline")) {  // no point trying: straight to the outbox
      e.preventDefault();
      if (withFiles) { say(form, "You are offline: files need the server. Send again when the banner is gone."); }
      else if (box.value.trim()) { queue(box.dataset.draft, box.value, null, isNote(form)); }
      return;
    }
    var key = e.detail.requestConfig.parameters.idempotency_key;
    // A reply with files is not kept here (their bytes would not fit in the store): its error
    // says to send again, and files.js keeps its key for that.
    if (!withFiles) {
      keys.set(e.detail.xhr, { key: key, conversation: box.dataset.draft, text: box.value, note: isNote(form) });
    }
  });
  // No answer: maybe the server never saw it, maybe it committed and the answer was lost.
  // Either way the same key goes out again, so it is stored once.
  document.addEventListener("htmx:sendError", function (e) {
    var sent = e.detail.xhr && keys.get(e.detail.xhr);
    if (!sent) { return; }
    e.detail.queuedReply = true;
    queue(sent.conversation, sent.text, sent.key, sent.note);
  });

  // -- delivering what waits -------------------------------------------------------------------
  function reasonOf(html) {
    var holder = document.createElement("div");
    holder.innerHTML = html;
    var error = holder.querySelector(".form-error");
    return error ? error.textContent.trim() : "The server refused it.";
  }

  function deliver(reply) {
    var form = new FormData();
    form.append("body", reply.text);
    form.append("idempotency_key", reply.key);
    if (reply.private) { form.append("private", "1"); }
    var token = document.querySelector('meta[name="csrf-token"]').content;
    return fetch("/conversations/" + reply.conversation + "/messages", {
      method: "POST", body: form, credentials: "same-origin",
      headers: { "HX-Request": "true", "X-CSRFToken": token, "Idempotency-Key": reply.key },
    }).then(function (response) {
      if (response.ok) {
        store.unqueue(reply.key);
        var pane = document.querySelector('#conversation-pane[data-cache-key="conversation:' + reply.conversation + '"]');
        if (pane) { Inbox.fragments.refresh(pane); }
        return true;
      }
      if (response.status === 401 || response.status >= 500) { return false; }  // later
      return response.text().then(function (html) {  // refused: keep the text, say why
        store.queue(Object.assign({}, reply, { state: "refused", reason: reasonOf(html) }));
        return true;
      });
    }, function () { return false; });
  }

  function flush() {
    if (flushing || document.body.classList.contains("is-offline")) { return; }
    var waiting = store.queued().filter(function (r) { return r.state === "queued"; });
    if (!waiting.length) { return; }
    flushing = true;
    waiting.reduce(function (chain, reply) {  // in the order they were written
      return chain.then(function (ok) { return ok ? deliver(reply) : false; });
    }, Promise.resolve(true)).then(function (allDone) {
      flushing = false;
      render();
      if (!allDone) { setTimeout(flush, RETRY_MS); }
    });
  }

  // -- showing what waits, in its conversation ----------------------------------------------------
  function item(reply) {
    var el = document.createElement("div");
    el.className = "msg " + (reply.private ? "note" : "out") + " queued" + (reply.state === "refused" ? " refused" : "");
    el.dataset.outboxKey = reply.key;
    var body = Object.assign(document.createElement("p"), { className: "msg-body", textContent: reply.text });
    var meta = Object.assign(document.createElement("span"), { className: "msg-meta" });
    if (reply.state === "refused") {
      meta.textContent = "Not sent: " + reply.reason + " ";
      meta.append(button("Copy to reply box", "copy"), " ", button("Discard", "discard"));
    } else {
      meta.textContent = "Queued \u2014 sends when the server is reachable";
    }
    if (reply.private) {
      el.dataset.private = "";
      el.append(Object.assign(document.createElement("p"), { className: "note-label",
                                                              textContent: "Private note \u00b7 only agents see this" }));
    }
    el.append(body, meta);
    return el;
  }

  function button(label, action) {
    return Object.assign(document.createElement("button"), {
      type: "button", className: "link", textContent: label, value: action });
  }

  function render() {
    var messages = document.getElementById("messages");
    document.querySelectorAll(".msg.queued").forEach(function (el) { el.remove(); });
    var pane = document.getElementById("conversation-pane");
    if (!messages || !pane || !pane.dataset.cacheKey) { return; }
    var conversation = pane.dataset.cacheKey.split(":")[1];
    store.queued().filter(function (r) { return String(r.conversation) === conversation; })
      .forEach(function (reply) { messages.append(item(reply)); });
  }

  document.addEventListener("click", function (e) {
    var b = e.target.closest(".msg.queued button");
    if (!b) { return; }
    var key = b.closest(".msg.queued").dataset.outboxKey;
    var reply = store.queued().filter(function (r) { return r.key === key; })[0];
    if (reply && b.value === "copy") {
      var box = document.querySelector('textarea[data-draft="' + reply.conversation + '"]');
      if (box) { box.value = reply.text + (box.value ? "\n" + box.value : ""); box.focus(); }
      var toggle = reply.private && document.querySelector('input[data-note-switch="' + reply.conversation + '"]');
      if (toggle && !toggle.checked) {  // it was a note: it goes back as one
        toggle.checked = true;
        toggle.dispatchEvent(new Event("change", { bubbles: true }));
      }
      else if (navigator.clipboard) { navigator.clipboard.writeText(reply.text).catch(function () {}); }
      if (box) { box.dispatchEvent(new Event("input", { bubbles: true })); }
      if (!box && !navigator.clipboard) { return; }
    }
    store.unqueue(key);
    render();
  });

  // -- the note switch, part of the draft ---------------------------------------------------------
  var NOTE = "note:";  // the store's draft of "note:<conversation>": "on" while the switch is

  function restoreSwitches(root) {
    (root || document).querySelectorAll("input[data-note-switch]").forEach(function (toggle) {
      var on = store.draft(NOTE + toggle.dataset.noteSwitch) === "on";
      if (toggle.checked !== on) { toggle.checked = on; }
    });
  }
  document.addEventListener("change", function (e) {
    var toggle = e.target.closest && e.target.closest("input[data-note-switch]");
    if (toggle) { store.saveDraft(NOTE + toggle.dataset.noteSwitch, toggle.checked ? "on" : ""); }
  });
  // A refresh morphs the pane with the server's copy, whose switch is off: the agent's stays.
  if (window.Idiomorph) {
    var before = Idiomorph.defaults.callbacks.beforeAttributeUpdated;
    Idiomorph.defaults.callbacks.beforeAttributeUpdated = function (name, el) {
      if (name === "checked" && el.hasAttribute && el.hasAttribute("data-note-switch")) { return false; }
      return before ? before.apply(this, arguments) : undefined;
    };
  }
  document.addEventListener("htmx:afterSettle", function () { restoreSwitches(document); });
  document.addEventListener("inbox:painted", function () { restoreSwitches(document); });

  document.addEventListener("htmx:afterSettle", render);
  document.addEventListener("inbox:painted", render);
  document.addEventListener("inbox:online", flush);
  window.addEventListener("storage", function (e) {  // another tab queued or delivered one
    if (e.key && e.key.indexOf(":outbox:") !== -1) { render(); }
  });
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { restoreSwitches(document); render(); flush(); });
  } else { restoreSwitches(document); render(); flush(); }

  Inbox.outbox = { count: function () { return store.queued().length; }, flush: flush };
})(window.Inbox);
