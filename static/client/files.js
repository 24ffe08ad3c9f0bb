// Files in the reply box: the Attach button, dropping files on the box, pasting an image. The
// chosen files are listed under the box (name, size, a button to take one off) and go with the
// reply as its `file` fields (the form is multipart); with files, the text may stay empty.
//
// Files need the server: offline the button is disabled (data-needs-server) and the outbox
// does not keep a reply with files (static/client/outbox.js says so next to the box). A send
// that got no answer keeps its idempotency key while its files stay the same, so sending
// again cannot store the reply twice.
(function (Inbox) {
  "use strict";

  function formOf(el) { return el && el.closest ? el.closest("form.reply") : null; }
  function inputOf(form) { return form ? form.querySelector('input[type="file"][name="file"]') : null; }

  function size(n) {
    if (n < 1024) { return n + " B"; }
    if (n < 1024 * 1024) { return Math.round(n / 1024) + " KB"; }
    return (n / 1024 / 1024).toFixed(1) + " MB";
  }

  function setFiles(input, files) {
    var list = new DataTransfer();
    files.forEach(function (file) { list.items.add(file); });
    input.files = list.files;
    changed(input);
  }

  function add(form, files) {
    var input = inputOf(form);
    if (!input || input.disabled || !files.length) { return false; }
    setFiles(input, Array.from(input.files).concat(files));
    return true;
  }

  // The list under the box, and whether the text is required (not when files go).
  function changed(input) {
    var form = formOf(input), box = form.querySelector("textarea[name=body]");
    var shown = form.querySelector(".reply-files");
    delete form.dataset.pendingKey;  // other files: a new reply
    shown.textContent = "";
    Array.from(input.files).forEach(function (file, index) {
      var item = document.createElement("li");
      item.className = "reply-file";
      var name = document.createElement("span");
      name.textContent = (file.name || "pasted image") + " \u00b7 " + size(file.size);
      var remove = document.createElement("button");
      remove.type = "button";
      remove.className = "link";
      remove.textContent = "\u00d7";
      remove.setAttribute("aria-label", "Remove " + (file.name || "pasted image"));
      remove.addEventListener("click", function () {
        setFiles(input, Array.from(input.files).filter(function (_f, i) { return i !== index; }));
      });
      item.append(name, remove);
      shown.appendChild(item);
    });
    if (box) { box.required = input.files.length === 0; }
  }

  document.addEventListener("change", function (e) {
    if (e.target.matches && e.target.matches('form.reply input[type="file"][name="file"]')) { changed(e.target); }
  });
  document.addEventListener("paste", function (e) {
    var form = formOf(e.target), files = e.clipboardData ? Array.from(e.clipboardData.files) : [];
    if (form && files.length && add(form, files)) { e.preventDefault(); }  // the file, not its name as text
  });
  document.addEventListener("dragover", function (e) {
    var form = formOf(e.target);
    if (form && inputOf(form) && !inputOf(form).disabled) { e.preventDefault(); form.classList.add("is-drop-target"); }
  });
  document.addEventListener("dragleave", function (e) {
    var form = formOf(e.target);
    if (form && !form.contains(e.relatedTarget)) { form.classList.remove("is-drop-target"); }
  });
  document.addEventListener("drop", function (e) {
    var form = formOf(e.target);
    if (!form) { return; }
    form.classList.remove("is-drop-target");
    if (e.dataTransfer && add(form, Array.from(e.dataTransfer.files))) { e.preventDefault(); }
  });

  // A send with files: the same key until it is answered (or its files change).
  document.addEventListener("htmx:configRequest", function (e) {
    var form = formOf(e.detail.elt), input = inputOf(form);
    if (!input || !input.files.length || e.detail.verb !== "post") { return; }
    if (form.dataset.pendingKey) { e.detail.parameters.idempotency_key = form.dataset.pendingKey; }
    form.dataset.pendingKey = e.detail.parameters.idempotency_key;
  });
  document.addEventListener("htmx:afterRequest", function (e) {
    var form = formOf(e.detail.elt), input = inputOf(form);
    if (input && e.detail.successful && document.contains(input)) { setFiles(input, []); }
  });

  Inbox.files = { add: add };
})(window.Inbox);
