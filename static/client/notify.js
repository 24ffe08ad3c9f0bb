// New work is noticed: the pending count in the title, a glow on rows that arrive live,
// and a desktop notification when the agent may not be looking. A mention in a private note
// that arrives live (the topbar's #mentions refreshed by a push) shows a toast in the page, and
// a desktop notification when allowed and the agent looks elsewhere: only a mention this page
// never showed before, never one that was there when it loaded.
(function () {
  "use strict";
  var known = null;  // conversation ids already shown in the list; null until first paint

  function rows() { return document.querySelectorAll("#conversation-list li.row[data-conversation-id]"); }

  // "(3) Inbox · Support inbox": the Pending tab's count, readable from the taskbar.
  function updateTitle() {
    var count = document.querySelector('#tabs a[href*="tab=pending"] .count');
    var n = count ? parseInt(count.textContent, 10) : NaN;
    if (isNaN(n)) return;  // a placeholder, or a page without tabs: leave the title alone
    var base = document.title.replace(/^\(\d+\) /, "");
    document.title = n > 0 ? "(" + n + ") " + base : base;
  }

  function currentTab() {
    var here = document.querySelector('#tabs a[aria-current="page"]');
    return here ? new URL(here.href).searchParams.get("tab") : null;
  }

  function remember() {
    // A list still waiting for its first fetch (a placeholder) has shown the agent nothing:
    // what fills it is not news.
    if (document.querySelector("#conversation-list [data-placeholder]")) return;
    known = known || new Set();
    rows().forEach(function (row) { known.add(row.dataset.conversationId); });
  }

  // A live refresh re-requests the list itself; "load more" (a cursor page) and the filters
  // ask with another element, and what they bring in is not news.
  function isLiveRefresh(config) {
    return config && config.verb === "get" && config.elt && config.elt.id === "conversation-list" &&
      !/[?&]cursor=/.test(config.path);
  }

  function announce(row) {
    row.classList.add("is-new");
    row.addEventListener("animationend", function () { row.classList.remove("is-new"); }, { once: true });
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    if (!document.hidden && currentTab() !== "pending") return;  // visible, and not a queue
    var name = row.querySelector(".name"), preview = row.querySelector(".preview");
    try {
      new Notification(name ? name.textContent.trim() : "New conversation", {
        body: preview ? preview.textContent.trim() : "",
        tag: "conversation-" + row.dataset.conversationId,  // one per conversation, not per refresh
      });
    } catch (e) {
      // Mobile Chrome allows notifications only from a service worker: the glow must do.
    }
  }

  function afterPaint() {
    updateTitle();
    remember();  // whatever is on screen at first paint is what the agent already saw
    // A snapshot saved mid-glow carries the class: a repeat visit shows nothing as new.
    rows().forEach(function (row) { row.classList.remove("is-new"); });
  }

  document.addEventListener("inbox:painted", afterPaint);
  document.addEventListener("DOMContentLoaded", afterPaint);
  document.addEventListener("htmx:afterSettle", updateTitle);
  // On swap, not settle: settling waits a moment, and another fragment settling first must
  // not count the list's new rows as already seen.
  document.addEventListener("htmx:afterSwap", function (event) {
    var live = isLiveRefresh(event.detail && event.detail.requestConfig);
    rows().forEach(function (row) {
      var id = row.dataset.conversationId;
      if (known && !known.has(id) && live) announce(row);
    });
    remember();
  });

  // Permission may only be asked for from a gesture, so a small button asks once.
  function offerNotifications() {
    if (!("Notification" in window) || Notification.permission !== "default") return;
    var place = document.querySelector(".topbar .me");
    if (!place || place.querySelector(".notify-me")) return;
    var button = document.createElement("button");
    button.type = "button";
    button.className = "link notify-me";
    button.textContent = "Notify me";
    button.title = "Desktop notifications for new conversations and mentions";
    button.addEventListener("click", function () {
      Notification.requestPermission().then(function (answer) {
        if (answer !== "default") button.remove();
      });
    });
    place.prepend(button);
  }
  document.addEventListener("DOMContentLoaded", offerNotifications);

  // -- mentions in private notes --------------------------------------------------------------
  var knownMentions = new Set();  // every mention id this page has shown

  function mentionItems() { return document.querySelectorAll("#mentions [data-mention-id]"); }

  function rememberMentions() {
    mentionItems().forEach(function (item) { knownMentions.add(item.dataset.mentionId); });
  }

  function toasts() {
    var box = document.getElementById("toasts");
    if (!box) {
      box = document.createElement("div");
      box.id = "toasts";
      box.className = "toasts";
      box.setAttribute("role", "status");  // read out by screen readers as it appears
      document.body.append(box);
    }
    return box;
  }

  function text(item, selector) {
    var el = item.querySelector(selector);
    return el ? el.textContent.trim().replace(/\s+/g, " ") : "";
  }

  function announceMention(item) {
    var link = item.querySelector("a"), href = link ? link.getAttribute("href") : null;
    var title = (text(item, ".mention-author") || "An agent") + " mentioned you on " + (text(item, ".mention-contact") || "a conversation");
    var body = text(item, ".mention-body");
    var toast = document.createElement("div");
    toast.className = "toast";
    toast.dataset.mentionId = item.dataset.mentionId;
    var open = Object.assign(document.createElement("a"), { href: href || "#", textContent: title + (body ? ": " + body : "") });
    var close = Object.assign(document.createElement("button"), { type: "button", className: "toast-close", textContent: "\u00d7" });
    close.setAttribute("aria-label", "Dismiss");
    close.addEventListener("click", function () { toast.remove(); });
    toast.append(open, close);
    toasts().append(toast);
    setTimeout(function () { toast.remove(); }, 12000);
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    if (!document.hidden && document.hasFocus()) return;  // the toast is in front of them
    try {
      var note = new Notification(title, { body: body, tag: "mention-" + item.dataset.mentionId });
      note.onclick = function () { window.focus(); if (href) location.assign(href); };
    } catch (e) {
      // Mobile Chrome allows notifications only from a service worker: the toast must do.
    }
  }

  function newMentions() {
    mentionItems().forEach(function (item) {
      var id = item.dataset.mentionId;
      if (!knownMentions.has(id) && item.hasAttribute("data-unseen")) announceMention(item);
    });
    rememberMentions();
  }

  // A deferred script runs once the page is parsed: what the topbar shows now is what was there.
  rememberMentions();
  document.addEventListener("htmx:afterSwap", newMentions);

  // The list stays open while a refresh redraws it (the server's copy is closed), and Escape or
  // a click elsewhere closes it.
  if (window.Idiomorph) {
    var before = Idiomorph.defaults.callbacks.beforeAttributeUpdated;
    Idiomorph.defaults.callbacks.beforeAttributeUpdated = function (name, el) {
      if (name === "open" && el.matches && el.matches("details.mentions-menu")) return false;
      return before ? before.apply(this, arguments) : undefined;
    };
  }
  document.addEventListener("keydown", function (event) {
    var menu = event.key === "Escape" && event.target.closest && event.target.closest("details.mentions-menu[open]");
    if (menu) {
      menu.open = false;
      menu.querySelector("summary").focus();
    }
  });
  document.addEventListener("click", function (event) {
    document.querySelectorAll("details.mentions-menu[open]").forEach(function (menu) {
      if (!menu.contains(event.target)) menu.open = false;
    });
  });
})();
