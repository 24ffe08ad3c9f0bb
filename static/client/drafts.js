// Drafts: a reply being typed is the agent's work and is never lost.
//
// Reply boxes carry data-draft="<conversation id>". What is typed is kept in the agent's store
// as it is typed, put back after any swap or reload, and cleared only when the server accepted
// that very text. (Morph swaps already keep the box, its caret and focus; see snapshots.js.)
(function (Inbox) {
  "use strict";
  if (!Inbox.store) { return; }
  var store = Inbox.store;

  function boxes(root) {
    var found = Array.prototype.slice.call((root || document).querySelectorAll("textarea[data-draft]"));
    if (root && root.matches && root.matches("textarea[data-draft]")) { found.push(root); }
    return found;
  }

  function restore(root) {
    boxes(root).forEach(function (box) {
      var draft = store.draft(box.dataset.draft);
      if (draft && box.value !== draft) { box.value = draft; }  // moves the caret: only when it differs
      count(box);
    });
  }

  // Near the limit a counter shows; past it the form refuses to send (nothing is cut).
  function count(box) {
    var max = Number(box.dataset.maxLength), counter = document.getElementById(box.getAttribute("aria-describedby"));
    if (!max || !counter) { return; }
    var n = box.value.length, over = n > max;
    counter.textContent = n >= max * 0.8 ? n.toLocaleString("en") + " / " + max.toLocaleString("en") +
      (over ? " \u2014 too long to send" : "") : "";
    counter.classList.toggle("over", over);
    box.setCustomValidity(over ? "A reply can be at most " + max.toLocaleString("en") + " characters." : "");
  }

  document.addEventListener("input", function (e) {
    if (e.target.matches && e.target.matches("textarea[data-draft]")) {
      store.saveDraft(e.target.dataset.draft, e.target.value);
      count(e.target);
    }
  });

  // Remember what a reply form sent; when the server took it, that text is no longer a draft
  // (text typed after pressing Send stays). Kept by request: a morph swap keeps no attributes
  // of ours on the form.
  var sending = new WeakMap();
  document.addEventListener("htmx:beforeRequest", function (e) {
    var form = e.detail.elt, box = form && form.querySelector && form.querySelector("textarea[data-draft]");
    if (box && e.detail.requestConfig && e.detail.requestConfig.verb === "post") {
      sending.set(e.detail.xhr, { text: box.value, conversation: box.dataset.draft });
    }
  });
  document.addEventListener("htmx:afterRequest", function (e) {
    var sent = e.detail.xhr && sending.get(e.detail.xhr);
    if (!sent) { return; }
    sending.delete(e.detail.xhr);
    var status = e.detail.xhr.status;
    if (status < 200 || status >= 300) { return; }  // refused or failed: the draft stays
    var box = document.querySelector('textarea[data-draft="' + sent.conversation + '"]');
    var rest = box && box.value.indexOf(sent.text) === 0 ? box.value.slice(sent.text.length).replace(/^\s+/, "") : "";
    if (box) { box.value = rest; count(box); }
    store.saveDraft(sent.conversation, rest);
  });

  document.addEventListener("htmx:afterSettle", function (e) { restore(e.target); });
  document.addEventListener("inbox:painted", function () { restore(document); });
  if (document.readyState !== "loading") { restore(document); }
  else { document.addEventListener("DOMContentLoaded", function () { restore(document); }); }
})(window.Inbox);
