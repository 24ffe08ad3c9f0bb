// Small conveniences that hypermedia cannot say: local times, quick replies, Ctrl+Enter.
(function () {
  "use strict";

  // Let htmx swap 4xx answers too: they carry the pane with its error message.
  document.addEventListener("DOMContentLoaded", function () {
    if (window.htmx) {
      htmx.config.responseHandling = [
        { code: "204", swap: false },
        { code: "304", swap: false },  // our validator matched: what is on screen is current
        { code: "[23]..", swap: true },
        { code: "4..", swap: true, error: false },
        { code: "...", swap: false, error: true },
      ];
    }
    enhance(document.body);
  });
  document.addEventListener("htmx:afterSettle", function (event) { enhance(event.target); });
  // The shim painted snapshots: mark the open row and local times on them too.
  document.addEventListener("inbox:painted", function () { enhance(document.body); });

  // The open conversation's row is highlighted here, not on the server, so one cached
  // list serves every conversation the agent opens.
  function markOpenRow() {
    var match = location.pathname.match(/^\/conversations\/(\d+)/);
    document.querySelectorAll(".conversation-list .row a").forEach(function (a) {
      var open = match && a.closest(".row").dataset.conversationId === match[1];
      if (open) a.setAttribute("aria-current", "true"); else a.removeAttribute("aria-current");
    });
  }
  document.addEventListener("htmx:pushedIntoHistory", markOpenRow);
  window.addEventListener("popstate", markOpenRow);

  function enhance(root) {
    markOpenRow();
    root.querySelectorAll("time[datetime]:not([data-local])").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when)) return;
      var today = new Date().toDateString() === when.toDateString();
      el.textContent = today
        ? when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
        : when.toLocaleDateString([], { day: "numeric", month: "short" }) + " " +
          when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      el.dataset.local = "1";
    });
    placeMessages(root.id === "messages" ? root : root.querySelector("#messages"));
  }

  // A conversation opens at its newest message. A refresh (a message came in) keeps the agent's
  // place: at the newest message they see the new one; reading older ones, the view stays put.
  // Where they are is what their last scroll left (refreshes add content, never scroll), kept
  // on the element: a refresh morphs the same element, so a property survives it.
  document.addEventListener("scroll", function (event) {
    var messages = event.target;
    if (messages.id === "messages") {
      messages.atNewest = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 48;
    }
  }, true);

  function placeMessages(messages) {
    if (!messages) return;
    if (messages.placedFor !== messages.dataset.cacheKey || messages.atNewest !== false) {
      messages.scrollTop = messages.scrollHeight;
    }
    messages.placedFor = messages.dataset.cacheKey;
  }

  document.addEventListener("change", function (event) {
    var select = event.target.closest("select[data-insert-into]");
    if (!select || !select.value) return;
    var box = document.querySelector(select.dataset.insertInto);
    var start = box.selectionStart, end = box.selectionEnd;
    box.value = box.value.slice(0, start) + select.value + box.value.slice(end);
    box.focus();
    box.selectionStart = box.selectionEnd = start + select.value.length;
    box.dispatchEvent(new Event("input", { bubbles: true }));  // the draft keeps it, the counter counts it
    select.value = "";
  });

  // <form data-confirm="…"> asks first (no inline onsubmit: the Content-Security-Policy forbids it).
  document.addEventListener("submit", function (event) {
    var form = event.target.closest && event.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.dataset.confirm)) event.preventDefault();
  });

  document.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && event.target.matches(".reply textarea")) {
      event.preventDefault();
      event.target.form.requestSubmit();
    }
    // Escape closes the Transfer menu and leaves focus where it was opened from.
    var transfer = event.key === "Escape" && event.target.closest && event.target.closest("details.transfer[open]");
    if (transfer) {
      transfer.open = false;
      transfer.querySelector("summary").focus();
    }
  });

  // -- keyboard focus after pane swaps ---------------------------------------------------
  // Decided from the request that filled #pane, not from which element the swap replaced,
  // so it holds whether #pane is swapped by innerHTML or morphed. Live refreshes of the
  // pane (push, reconnect) are none of these requests and never move focus.
  document.addEventListener("htmx:afterSettle", function (event) {
    var detail = event.detail || {}, config = detail.requestConfig;
    if (!config || !detail.target || detail.target.id !== "pane") return;
    var from = config.elt, ok = detail.xhr && detail.xhr.status < 300;
    var pane = document.getElementById("pane");
    var focus = null;
    if (from && from.closest && from.closest(".conversation-list")) {
      // Opened from the list: start in the conversation, not 49 Tabs back in the list.
      focus = pane.querySelector(".conversation-head h2") || pane.querySelector("button, a[href], textarea");
    } else if (config.verb === "post" && /\/accept$/.test(config.path) && ok) {
      focus = pane.querySelector(".reply textarea");  // accepted: the next thing to do is reply
    } else if (config.verb === "post" && from && from.matches && from.matches("form.reply")) {
      focus = pane.querySelector(".reply textarea");  // sent (or refused): keep writing
    }
    if (focus && document.activeElement !== focus) focus.focus({ preventScroll: true });
  });

  // The skip link lands on the first conversation, not merely near the list.
  document.addEventListener("click", function (event) {
    var skip = event.target.closest && event.target.closest("a.skip-link");
    var first = skip && document.querySelector("#conversation-list a[href]");
    if (first) {
      event.preventDefault();
      first.focus();
    }
  });

  // "← Conversations" goes back to the tab (and filters) the conversation was opened from;
  // the pane is cached for every tab, so they come from this page's address, not the server.
  document.addEventListener("click", function (event) {
    var back = event.target.closest && event.target.closest("a.back-to-list");
    if (back) back.search = location.search;
  });
})();

// Filters live in the URL: a reload, a shared link, a tab switch or an opened conversation
// keeps the search and the department (the list itself is fetched by htmx).
(function () {
  "use strict";
  var FILTERS = ["q", "department"];

  function syncTabLinks() {
    var here = new URLSearchParams(location.search);
    document.querySelectorAll("#tabs a.tab").forEach(function (a) {
      var url = new URL(a.href, location.href);
      FILTERS.forEach(function (name) {
        if (here.get(name)) { url.searchParams.set(name, here.get(name)); } else { url.searchParams.delete(name); }
      });
      a.setAttribute("href", url.pathname + url.search);
    });
  }

  document.addEventListener("htmx:afterRequest", function (event) {
    var form = event.detail.elt;
    if (!form || form.id !== "filters" || !event.detail.successful) return;
    var url = new URL(location.href);
    new FormData(form).forEach(function (value, name) {
      if (value) { url.searchParams.set(name, value); } else { url.searchParams.delete(name); }
    });
    history.replaceState(history.state, "", url.pathname + url.search);
    syncTabLinks();
  });
  document.addEventListener("htmx:afterSettle", syncTabLinks);
  document.addEventListener("inbox:painted", syncTabLinks);
  document.addEventListener("DOMContentLoaded", syncTabLinks);
})();
