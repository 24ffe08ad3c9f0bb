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
    var messages = root.id === "messages" ? root : root.querySelector("#messages");
    if (messages && !messages.dataset.scrolled) {
      messages.scrollTop = messages.scrollHeight;  // newest message in view
      messages.dataset.scrolled = "1";
    }
  }

  document.addEventListener("change", function (event) {
    var select = event.target.closest("select[data-insert-into]");
    if (!select || !select.value) return;
    var box = document.querySelector(select.dataset.insertInto);
    var start = box.selectionStart, end = box.selectionEnd;
    box.value = box.value.slice(0, start) + select.value + box.value.slice(end);
    box.focus();
    box.selectionStart = box.selectionEnd = start + select.value.length;
    select.value = "";
  });

  document.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && event.target.matches(".reply textarea")) {
      event.preventDefault();
      event.target.form.requestSubmit();
    }
  });
})();
