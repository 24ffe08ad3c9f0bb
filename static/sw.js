// The service worker: the app shell and the pages an agent saw, for when the server is away.
// (Served by chat/offline.py at /sw.js, which prepends RELEASE and SHELL.)
//
// - The shell (CSS, JS, vendored libraries) is cached per release; a new release installs
//   beside the old one and deletes the old caches when it takes over.
// - Every signed-in page fetched while online is kept in that agent's cache. With the server
//   unreachable, a page seen before is answered from there, any other inbox page from the
//   agent's latest inbox page (the client then paints the right fragments from its snapshots,
//   or says what was never seen), anything else with a plain "not available offline" page.
// - Signing out (or the client saying the session ended) deletes that agent's pages.
/* global RELEASE, SHELL */
"use strict";

var SHELL_CACHE = "inbox-shell-" + RELEASE;
var PAGES = "inbox-pages-";          // + agent id
var META = "inbox-meta";              // which agent's pages an offline visit may show
var CURRENT = "/__inbox/agent";
var LATEST = "/__inbox/latest";       // the agent's latest inbox page, the shell of any other
var OFFLINE_PAGE = SHELL[SHELL.length - 1];

self.addEventListener("install", function (event) {
  // The shell straight from its cache, without waking this worker for each file (Static
  // Routing; a browser without it asks the fetch handler below, which does the same).
  if (event.addRoutes) {
    event.waitUntil(event.addRoutes(["/assets/*", "/static/*"].map(function (pathname) {
      return { condition: { urlPattern: { pathname: pathname } }, source: { cacheName: SHELL_CACHE } };
    })).catch(function () { /* the fetch handler serves them */ }));
  }
  event.waitUntil(caches.open(SHELL_CACHE).then(function (cache) { return cache.addAll(SHELL); })
    .then(function () { return self.skipWaiting(); }));
});

self.addEventListener("activate", function (event) {
  event.waitUntil(caches.keys().then(function (names) {
    return Promise.all(names.filter(function (name) {
      return name.indexOf("inbox-shell-") === 0 && name !== SHELL_CACHE;
    }).map(function (name) { return caches.delete(name); }));
  }).then(function () {
    // Page loads start on the network while the worker boots, instead of after it.
    return self.registration.navigationPreload && self.registration.navigationPreload.enable();
  }).then(function () { return self.clients.claim(); }));
});

// Opened once per worker start: a page load asks for several shell files at once.
var shellCachePromise = null;
function shellCache() {
  if (!shellCachePromise) {
    shellCachePromise = caches.open(SHELL_CACHE).catch(function (err) { shellCachePromise = null; throw err; });
  }
  return shellCachePromise;
}

function currentAgent() {
  return caches.open(META).then(function (meta) { return meta.match(CURRENT); })
    .then(function (hit) { return hit ? hit.text() : null; });
}

function forget(agent) {
  return currentAgent().then(function (current) {
    var gone = [caches.delete(PAGES + agent)];
    if (current === agent) { gone.push(caches.open(META).then(function (m) { return m.delete(CURRENT); })); }
    return Promise.all(gone);
  });
}

self.addEventListener("message", function (event) {
  var data = event.data || {};
  if (data.type === "forget" && data.agent) { event.waitUntil(forget(String(data.agent))); }
});

function isInboxPage(url) { return /^\/(inbox|conversations\/\d+)$/.test(url.pathname); }

// Keep a signed-in page (the HTML names its agent) for reading it offline later.
function keep(request, response) {
  return response.clone().text().then(function (html) {
    var agent = (html.match(/<body[^>]*\sdata-agent-id="(\d+)"/) || [])[1];
    if (!agent) { return; }
    var headers = { "Content-Type": "text/html; charset=utf-8" };
    var policy = response.headers.get("Content-Security-Policy");
    if (policy) { headers["Content-Security-Policy"] = policy; }  // offline pages keep the same policy
    var page = function () { return new Response(html, { headers: headers }); };
    var url = new URL(request.url);
    return Promise.all([
      caches.open(PAGES + agent).then(function (cache) {
        var puts = [cache.put(request.url, page())];
        if (isInboxPage(url)) { puts.push(cache.put(LATEST, page())); }
        return Promise.all(puts);
      }),
      caches.open(META).then(function (meta) { return meta.put(CURRENT, new Response(agent)); }),
    ]);
  });
}

// The page as it was, marked so the client knows it is reading from the past.
function marked(response, from) {
  var headers = new Headers(response.headers);
  return response.text().then(function (html) {
    html = html.replace(/<body(\s|>)/, '<body data-offline-from="' + from.replace(/"/g, "&quot;") + '"$1');
    return new Response(html, { headers: headers });
  });
}

function offlinePage(request) {
  var url = new URL(request.url);
  return currentAgent().then(function (agent) {
    if (!agent) { return null; }
    return caches.open(PAGES + agent).then(function (cache) {
      return cache.match(request.url, { ignoreVary: true }).then(function (exact) {
        if (exact) { return marked(exact, url.pathname + url.search); }
        if (!isInboxPage(url)) { return null; }
        return cache.match(LATEST).then(function (shell) { return shell ? marked(shell, LATEST) : null; });
      });
    });
  }).then(function (page) {
    return page || caches.match(OFFLINE_PAGE).then(function (hit) {
      return hit || new Response("Not available offline.", { status: 503, headers: { "Content-Type": "text/plain" } });
    });
  });
}

self.addEventListener("fetch", function (event) {
  var request = event.request, url = new URL(request.url);
  if (url.origin !== self.location.origin) { return; }
  if (request.mode === "navigate" && request.method === "POST" && url.pathname === "/logout") {
    event.waitUntil(currentAgent().then(function (agent) { return agent && forget(agent); }));
    return;
  }
  if (request.method !== "GET" || url.pathname.indexOf("/socket.io/") === 0) { return; }
  if (request.mode === "navigate") {
    event.respondWith(Promise.resolve(event.preloadResponse).then(function (preloaded) {
      return preloaded || fetch(request);
    }).then(function (response) {
      if (response.ok && (response.headers.get("Content-Type") || "").indexOf("text/html") === 0) {
        event.waitUntil(keep(request, response));
      }
      return response;
    }, function () { return offlinePage(request); }));
    return;
  }
  if (SHELL.indexOf(url.pathname + url.search) !== -1) {  // this release's shell: from the cache, else the network
    event.respondWith(shellCache().then(function (cache) {
      return cache.match(request).then(function (hit) { return hit || fetch(request); });
    }));
  } else if (url.pathname.indexOf("/static/") === 0) {  // e.g. the offline page's stylesheet
    event.respondWith(fetch(request).catch(function () {
      return shellCache().then(function (cache) { return cache.match(request, { ignoreSearch: true }); })
        .then(function (hit) { return hit || Response.error(); });
    }));
  }
});
