"""Every part of a page that refreshes by itself, declared once, and the one function that
serves them all.

A `Fragment` says what the element shows and for whom (its key: the element's
`data-cache-key`), what makes it stale (its scope's tags: `data-cache-tags`), how to fetch it
and for how long to keep it (query, TTL class), which template renders it and at which URL
(`hx-get`). `serve` answers every fragment request the same way: the element's meta computed
once, 304 when the browser's ETag is current (no query, no render), otherwise the rendered
HTML from the cache under that ETag. Adding a fragment is one declaration plus one template
(and, for new data, a line in invalidation.INVALIDATION_MAP).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from flask import Response, abort, make_response, render_template, request, url_for
from flask_login import current_user

from . import compression, domain, metrics, queries, reads, search
from .visibility import DIRECTORY, LABELS, TABS, Agent, can_see_summary, list_scope, pending_queues, queue_tag

MAX_QUERY_LENGTH = 100  # characters of a search kept (the box has no limit of its own)
MAX_PAGES = 20  # a refreshed list (or conversation) keeps at most this many pages the agent loaded
SNAPSHOT_COOKIE = "inbox_snapshots"  # static/client/store.js sets it: "<agent id>" whose snapshots it keeps


@dataclass(frozen=True)
class Meta:
    """What a refreshable element carries (templates/_refreshable.html)."""

    key: str  # data-cache-key: the element's identity in the browser and in push events
    tags: tuple[str, ...]  # data-cache-tags
    etag: str | None  # data-etag, and the response's ETag
    url: str  # hx-get
    data_key: str  # the cache entry behind it (a list showing several pages: that of the pages)


@dataclass(frozen=True)
class Fragment:
    name: str  # its meta is `<name>_meta` in templates
    endpoint: str  # the view that serves it: its hx-get
    url_args: Callable[[dict], dict]  # args -> url_for arguments of that URL
    template: str
    data_as: str  # the template variable its data is rendered from
    key: Callable[[Agent, dict], str]  # (viewer, args) -> cache key of its data
    tags: Callable[[Agent, dict], tuple[str, ...]]  # (viewer, args) -> its scope's tags
    query: Callable[[Agent, dict], Any]  # (viewer, args) -> the data, from the database
    ttl: str = "dynamic"
    # The element's key when it is not that of its data (a list keeps its page-1 identity).
    element_key: Callable[[Agent, dict], str] | None = None
    # Every cached entry its HTML shows, when more than its own (its ETag covers them all).
    shows: Callable[[Agent, dict], list[str]] | None = None
    context: Callable[[Agent, dict], dict] = field(default=lambda viewer, args: {})  # other template data
    # A later page that scrolling appends: rendered by `more_template` when args[more_arg] is set.
    more_arg: str | None = None
    more_template: str | None = None
    visible: Callable[[Agent, dict], bool] | None = None  # 404 unless it says yes
    keep_html: bool = True  # False when it holds a per-session CSRF token (forms)
    data_from_snapshot: bool = False  # the page needs its data even when the browser paints it

    def read(self, viewer: Agent, args: dict, key: str | None = None, tags: Iterable[str] | None = None) -> Any:
        """Its data, from the cache (key and tags: when the caller has them already)."""
        return reads.read(key or self.key(viewer, args), lambda: self.query(viewer, args), ttl=self.ttl,
                          tags=self.tags(viewer, args) if tags is None else tags)


# -- arguments --------------------------------------------------------------------------------
def clean_query(q: str | None) -> str:
    return (q or "")[:MAX_QUERY_LENGTH]


def label_filter(name: str | None) -> int | None:
    """A label filter given by name (the API's `label`): its tag's id; a name no tag has filters
    everything out (0); blank: no filter."""
    name = (name or "").strip().lower()
    if not name:
        return None
    return next((t["id"] for t in reads.tags() if t["name"].lower() == name), 0)


def list_args(tab: str = "pending", department_id: int | None = None, q: str = "", pages: int = 1,
              cursor: str | None = None, label_id: int | None = None) -> dict:
    """A conversation list's arguments, as every caller passes them (label_id: the tag a label
    filter names, by id so that renaming the tag keeps the filter)."""
    return {"tab": tab if tab in TABS else "pending", "department_id": department_id, "q": q,
            "pages": min(max(pages, 1), MAX_PAGES), "cursor": cursor, "label_id": label_id}


def list_args_from_request(cursor: bool = False) -> dict:
    """The list a page or fragment URL asks for (cursor: a next page, for the list's own URL)."""
    return list_args(request.args.get("tab", "pending"), request.args.get("department", type=int),
                     clean_query(request.args.get("q")), request.args.get("pages", 1, type=int),
                     request.args.get("cursor") if cursor else None,
                     request.args.get("label_id", type=int) or label_filter(request.args.get("label")))


def _list_url_args(args: dict) -> dict:
    return {"tab": args["tab"], "department": args["department_id"], "q": args["q"] or None,
            "label_id": args.get("label_id")}


# -- the declarations -----------------------------------------------------------------------
def conversation_list_key(viewer: Agent, tab: str, department_id: int | None, q: str,
                          cursor: str | None = None, pages: int = 1, label_id: int | None = None) -> str:
    key = f"conversations:{list_scope(viewer, tab).name}:tab:{tab}"
    if department_id is not None:
        key += f":dept:{department_id}"
    if label_id is not None:
        key += f":label:{label_id}"
    if q.strip():
        key += f":q:{reads.digest(q.strip().lower())}"
    if cursor:
        key += f":after:{reads.digest(cursor)}"
    if pages > 1:
        key += f":pages:{pages}"
    return key


def counts_key(viewer: Agent) -> str:
    # The badges count the viewer's own Mine: every viewer's are their own, an admin's too.
    return f"counts:user:{viewer.id}"


def dashboard_key(viewer: Agent) -> str:
    return f"dashboard:{list_scope(viewer).name}"


def mentions_key(user_id: int) -> str:
    """An agent's own mentions (invalidation.INVALIDATION_MAP's "mentions" rule names it)."""
    return f"mentions:user:{user_id}"


def conversation_key(conversation_id: int) -> str:
    return f"conversation:{conversation_id}"


def messages_key(conversation_id: int, before: int | None = None, since: int | None = None) -> str:
    key = f"conversation:{conversation_id}:messages"
    if before:
        return key + f":before:{before}"
    return key + f":since:{since}" if since else key


def messages_args(conversation_id: int, before: int | None = None, since: int | None = None) -> dict:
    """A conversation's messages: the newest page; the page older than `before` ("load older");
    or, for a refresh once older pages were loaded, every message from `since` on (at most
    MAX_PAGES pages), so what the agent scrolled back to stays."""
    return {"conversation_id": conversation_id, "before": before, "since": None if before else since}


def pending_queue_key(department_id: int | None, pages: int = 1) -> str:
    key = f"conversations:queue:{'none' if department_id is None else department_id}:tab:pending"
    return key + f":pages:{pages}" if pages > 1 else key


def _list(viewer: Agent, args: dict) -> dict:
    """A Pending list (unsearched, from its first page) is the merge of its queues' lists, each
    cached on its own and shared by every viewer who sees that queue: a new message in one
    queue refetches that queue's list once, not once per set of departments that includes it."""
    if (args["tab"] == "pending" and not (args["q"] or "").strip() and not args["cursor"]
            and args.get("label_id") is None):
        queues = pending_queues(viewer, [d["id"] for d in reads.departments()] if viewer.is_admin else ())
        if args["department_id"] is not None:
            queues = [q for q in queues if q == args["department_id"]]
        return queries.merge_pages([
            reads.read(pending_queue_key(queue, args["pages"]), lambda queue=queue: queries.pending_queue(queue, args["pages"]),
                       tags=(queue_tag(queue), DIRECTORY, LABELS)) for queue in queues], args["pages"])
    return queries.list_conversations(viewer, args["tab"], args["department_id"], args["q"], args["cursor"],
                                      args["pages"], args.get("label_id"))


def _list_tags(viewer: Agent, args: dict) -> tuple[str, ...]:
    """Rows show labels; a search also hears new messages in its scope (search.list_tags). An
    admin's Pending list also names every queue's tag: its merge reads their entries, and a
    commit's tags are bumped one at a time, so a list named only by its state's tag could be
    refilled, between that bump and its queue's, from a queue entry still valid and old."""
    tags = search.list_tags(list_scope(viewer, args["tab"]).tags, args["q"]) + (LABELS,)
    if viewer.is_admin and args["tab"] == "pending":
        tags += tuple(queue_tag(q) for q in pending_queues(viewer, [d["id"] for d in reads.departments()]))
    return tags


def _list_key(viewer: Agent, args: dict) -> str:
    return conversation_list_key(viewer, args["tab"], args["department_id"], args["q"], args["cursor"],
                                 args["pages"], args.get("label_id"))


CONVERSATION_LIST = Fragment(
    name="list", endpoint="inbox.conversation_list", url_args=_list_url_args,
    template="inbox/_list.html", more_arg="cursor", more_template="inbox/_rows.html", data_as="page",
    key=_list_key,
    element_key=lambda viewer, args: _list_key(viewer, {**args, "pages": 1}),
    tags=_list_tags,
    query=_list,
    context=lambda viewer, args: {"args": args},
)

TAB_COUNTS = Fragment(
    name="counts", endpoint="inbox.counts", url_args=lambda args: {**_list_url_args(args)},
    template="inbox/_counts.html", data_as="counts",
    key=lambda viewer, args: counts_key(viewer),
    tags=lambda viewer, args: list_scope(viewer).tags,
    query=lambda viewer, args: queries.tab_counts(viewer),
    context=lambda viewer, args: {"args": args},
)

MESSAGES = Fragment(
    name="messages", endpoint="inbox.messages", url_args=lambda args: {"conversation_id": args["conversation_id"]},
    template="inbox/_messages.html", more_arg="before", more_template="inbox/_message_items.html",
    data_as="messages",
    key=lambda viewer, args: messages_key(args["conversation_id"], args.get("before"), args.get("since")),
    element_key=lambda viewer, args: messages_key(args["conversation_id"]),
    tags=lambda viewer, args: (DIRECTORY,),
    query=lambda viewer, args: queries.conversation_messages(args["conversation_id"], args.get("before"),
                                                             args.get("since"), MAX_PAGES),
    context=lambda viewer, args: {"conversation": {"id": args["conversation_id"]}},
    visible=lambda viewer, args: can_see_summary(viewer, conversation(args["conversation_id"])),
)


def _pane_context(viewer: Agent, args: dict) -> dict:
    return {
        **context(MESSAGES, viewer, messages_args(args["conversation_id"], since=args.get("since"))),
        "quick_replies": reads.quick_replies(),
        "agents": domain.transfer_targets(reads.agents(), viewer),
        "departments": reads.departments(),
        "labels": reads.tags(),  # what the pane's "Add label" offers
        "allowed_actions": domain.ALLOWED_ACTIONS,
        "error": None,
    }


CONVERSATION_PANE = Fragment(
    name="pane", endpoint="inbox.conversation", url_args=lambda args: {"conversation_id": args["conversation_id"]},
    template="inbox/_pane.html", data_as="conversation",
    key=lambda viewer, args: conversation_key(args["conversation_id"]),
    tags=lambda viewer, args: (DIRECTORY, LABELS),
    query=lambda viewer, args: queries.conversation_summary_by_id(args["conversation_id"]),
    shows=lambda viewer, args: [conversation_key(args["conversation_id"]),
                                messages_key(args["conversation_id"], since=args.get("since")),
                                "quick_replies", "agents", "departments", "tags"],
    context=_pane_context,
    visible=lambda viewer, args: can_see_summary(viewer, conversation(args["conversation_id"])),
    keep_html=False,  # its forms carry this session's CSRF token
    data_from_snapshot=True,  # the page's title and the pane's URLs name the conversation
)

DASHBOARD = Fragment(
    name="dashboard", endpoint="dashboard.index", url_args=lambda args: {},
    template="dashboard/_stats.html", data_as="stats",
    key=lambda viewer, args: dashboard_key(viewer),
    tags=lambda viewer, args: list_scope(viewer).tags + (LABELS,),
    query=lambda viewer, args: queries.dashboard(viewer),
)

# The topbar's mentions of the signed-in agent (base.html, on every page). It lists only mentions
# on conversations its agent may see now, so what can change that is in its tags (an admin sees
# every conversation: names only).
MENTIONS = Fragment(
    name="mentions", endpoint="inbox.mentions", url_args=lambda args: {},
    template="inbox/_mentions.html", data_as="mentions",
    key=lambda viewer, args: mentions_key(viewer.id),
    tags=lambda viewer, args: (DIRECTORY,) if viewer.is_admin else list_scope(viewer).tags,
    query=lambda viewer, args: queries.mentions(viewer),
    keep_html=False,  # its "Mark all read" form carries this session's CSRF token
)

FRAGMENTS: dict[str, Fragment] = {f.name: f for f in (CONVERSATION_LIST, TAB_COUNTS, CONVERSATION_PANE,
                                                       MESSAGES, DASHBOARD, MENTIONS)}


# -- reads the API shares with the fragments ----------------------------------------------------
def conversation_list(viewer: Agent, tab: str, department_id: int | None = None, q: str = "",
                      cursor: str | None = None, pages: int = 1, label: str | None = None) -> dict:
    """label: a tag's name (any case)."""
    return CONVERSATION_LIST.read(viewer, list_args(tab, department_id, q, pages, cursor, label_filter(label)))


def conversation(conversation_id: int) -> dict | None:
    """The conversation's summary, or None; callers check visibility with can_see_summary."""
    return CONVERSATION_PANE.read(None, {"conversation_id": conversation_id})


def messages(conversation_id: int, before: int | None = None) -> dict:
    return MESSAGES.read(None, messages_args(conversation_id, before))


# -- serving ------------------------------------------------------------------------------------
def meta(fragment: Fragment, viewer: Agent, args: dict) -> Meta:
    """The element's key, tags, ETag and URL: computed once per request."""
    return _meta(fragment, viewer, args)[0]


def _meta(fragment: Fragment, viewer: Agent, args: dict, rendered: bool = False) -> tuple[Meta, Any]:
    """meta, and the lookup its ETag came from; rendered=True also reads, in that same round
    trip, the fragment's HTML as cached for this URL and viewer."""
    key, tags = fragment.key(viewer, args), tuple(fragment.tags(viewer, args))
    shown = fragment.shows(viewer, args) if fragment.shows else [key]
    found = reads.lookup(viewer, shown, tags, entry=_rendered_key(viewer, shown, tags, _encoding()) if rendered else None)
    m = Meta(key=fragment.element_key(viewer, args) if fragment.element_key else key, tags=tags,
             etag=found.etag if found else None, url=url_for(fragment.endpoint, **fragment.url_args(args)),
             data_key=key)
    return m, found


def _rendered_key(viewer: Agent, shown: list[str], tags: tuple[str, ...], encoding: str | None) -> str:
    """Where the HTML of this URL for this viewer is cached, compressed with `encoding`: guarded
    by the generations its ETag is computed from, so it is current exactly while the ETag is."""
    digest = hashlib.sha1(f"{request.full_path}|{reads.salt(viewer)}|{shown!r}|{tags!r}".encode()).hexdigest()[:24]
    return f"{metrics.RENDERED}:{digest}" + (f":{encoding}" if encoding else "")


def _encoding() -> str | None:
    """How this browser takes a fragment: br, gzip or as it is (chat/compression.py)."""
    return compression.chosen(request.headers.get("Accept-Encoding", ""))


def context(fragment: Fragment, viewer: Agent, args: dict, from_snapshot: bool = False,
            meta_: Meta | None = None) -> dict:
    """Template variables of a fragment. from_snapshot: the browser paints its contents from its
    snapshot, so the element is sent empty (only what the page itself needs is read)."""
    m = meta_ or meta(fragment, viewer, args)
    read_data = not from_snapshot or fragment.data_from_snapshot
    data = fragment.read(viewer, args, key=m.data_key, tags=m.tags) if read_data else None
    found = {f"{fragment.name}_meta": m, fragment.data_as: data, "from_snapshot": from_snapshot}
    return found if from_snapshot else {**fragment.context(viewer, args), **found}


def browser_has_snapshots() -> bool:
    """This browser keeps this agent's snapshots (the client said so with a cookie)."""
    return request.cookies.get(SNAPSHOT_COOKIE) == str(current_user.id)


def serve(fragment: Fragment, args: dict) -> Response:
    """A fragment request: 404 if the viewer may not see it, 304 if the browser's copy is current,
    else the HTML (cached under its ETag unless it holds a CSRF token)."""
    viewer = current_user
    if fragment.visible and not fragment.visible(viewer, args):
        abort(404)
    # One round trip: the ETag's generations and the cached HTML (unless the browser revalidates,
    # where the answer is most likely a 304 that needs no HTML).
    m, found = _meta(fragment, viewer, args, rendered=fragment.keep_html and not _if_none_match())
    more = bool(fragment.more_arg and args.get(fragment.more_arg))
    template = fragment.more_template if more else fragment.template
    encoding = _encoding() if fragment.keep_html else None  # a fragment with a CSRF token: Flask-Compress
    render = lambda: compression.encode(render_template(template, **context(fragment, viewer, args, meta_=m)),  # noqa: E731
                                        encoding)
    if m.etag and fragment.keep_html and (found is None or found.key is None) and m.etag not in _if_none_match():
        # The browser's copy is stale: read the HTML now, with the generations again.
        shown = fragment.shows(viewer, args) if fragment.shows else [m.data_key]
        found = reads.lookup(viewer, shown, m.tags, entry=_rendered_key(viewer, shown, m.tags, encoding))
        if found is None or found.etag != m.etag:
            found = None  # invalidated meanwhile (or the backend went down): render what the meta says
    return respond(m.etag, render, keep_html=fragment.keep_html, found=found, encoding=encoding)


def respond(etag: str | None, render: Callable[[], str | bytes], keep_html: bool = True, found: Any = None,
            encoding: str | None = None) -> Response:
    """Answer 304 when the browser's copy carries the current ETag (no query, no render),
    otherwise send the fragment with its ETag so the next refresh can revalidate.

    The ETag names the exact data and viewer, so the rendered HTML is cached with the same
    generations (`found`: what meta read with the ETag): a hit neither queries nor renders."""
    if etag and etag in _if_none_match():
        response = Response(status=304)
        response.headers["X-Cache"] = "HIT"
    else:
        body = reads.read_looked_up(found, render) if etag and keep_html and found is not None and found.key \
            else render()
        response = make_response(body)
        if isinstance(body, bytes):  # compressed when it was rendered (chat/compression.py)
            response.headers["Content-Encoding"] = encoding
    if etag:
        response.headers["ETag"] = etag
        response.headers["Cache-Control"] = "private, no-cache"
        response.vary.update(("Cookie", "HX-Request", "Accept-Encoding"))
    return response


def _if_none_match() -> Iterable[str]:
    return [t.strip() for t in request.headers.get("If-None-Match", "").split(",") if t.strip()]
