// serendip web page: plain ES module, no build step, no third-party code.
// Talks to the same-origin JSON API under /v1 with the X-API-Key header.
// Everything here is CSP-friendly: no inline handlers, no style attributes, no eval.

const KEY_STORAGE = "serendip.apiKey";
const USER_STORAGE = "serendip.lastUser";
// The open conversation's id: per tab, so a reload resumes it and a new tab starts afresh.
const CONVERSATION_STORAGE = "serendip.conversation";
const DEBOUNCE_MS = 250;
const K = 10;
const SIMILAR_K = 6;
const USER_OPTIONS = 200;
// After this long, a pending search says why it may be slow (the first one loads a model).
const SLOW_MS = 3000;
// Colours for image placeholders (see .ph-0 ... .ph-7 in style.css).
const PLACEHOLDER_COLOURS = 8;

const BADGES = {
  tail: { label: "long tail", icon: "◆", title: "Less popular item from the long tail" },
  novel: { label: "novel", icon: "✦", title: "Few users like you have seen this" },
  serendipitous: { label: "serendipitous", icon: "★", title: "Relevant yet unlike your history" },
  explore: { label: "exploring", icon: "?", title: "Shown to learn whether you like it" },
};

// The exploration rate the "explore" checkbox asks for (the share of slots that may explore).
const EXPLORE_RATE = 0.1;

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);

const el = {
  keyBox: $("key-box"),
  keyStatus: $("key-status"),
  keyForm: $("key-form"),
  keyInput: $("key-input"),
  keyForget: $("key-forget"),
  userForm: $("user-form"),
  userInput: $("user-input"),
  userOptions: $("user-options"),
  userHint: $("user-hint"),
  preset: $("preset-select"),
  presetDescription: $("preset-description"),
  slider: $("discovery-slider"),
  explore: $("explore-toggle"),
  sliderValue: $("discovery-value"),
  discoveryChange: $("discovery-change"),
  searchForm: $("search-form"),
  searchInput: $("search-input"),
  searchSection: $("search-section"),
  searchHeading: $("search-heading"),
  searchState: $("search-state"),
  searchNote: $("search-note"),
  searchList: $("search-list"),
  searchClear: $("search-clear"),
  status: $("live-status"),
  error: $("error"),
  recHeading: $("rec-heading"),
  recRefresh: $("rec-refresh"),
  recEmpty: $("rec-empty"),
  recState: $("rec-state"),
  recNote: $("rec-note"),
  recList: $("rec-list"),
  historyEmpty: $("history-empty"),
  historyList: $("history-list"),
  historyNegativeBox: $("history-negative-box"),
  historyNegative: $("history-negative"),
  explainBody: $("explain-body"),
  explainHeading: document.getElementById("explain-heading"),
  similarBody: $("similar-body"),
  similarHeading: document.getElementById("similar-heading"),
  cardTemplate: document.getElementById("card-template"),
  chatHeading: document.getElementById("chat-heading"),
  chatNew: $("chat-new"),
  chatLog: $("chat-log"),
  chatState: $("chat-state"),
  chatChips: $("chat-chips"),
  chatForm: $("chat-form"),
  chatInput: $("chat-input"),
  chatSend: $("chat-send"),
  chatSurprise: $("chat-surprise"),
  chatError: $("chat-error"),
  chatLive: $("chat-live"),
};

const state = {
  key: "",
  user: "",
  presets: new Map(),
  recSeq: 0,
  recAbort: null,
  searchSeq: 0,
  similarSeq: 0,
  explainSeq: 0,
  debounce: 0,
  slowTimer: 0,
  sliderTouched: false,
  // the last list shown for the current user, to say what a change of settings changed
  lastList: null,
  // history length of the current user: null while unknown
  historyCount: null,
  // the note the last recommendations response carried, if any
  recApiNote: "",
  // item id -> "like" | "skip": feedback given to the current user's cards
  feedback: new Map(),
  pendingFeedback: 0,
  pendingLikes: 0,
  // item id -> Promise of its catalog fields (only used when a list omits them)
  fieldCache: new Map(),
  // the conversation shown in the chat box: its id (null before the first message)
  chat: { id: null, seq: 0, pending: false, slowTimer: 0, restored: "" },
  // item id -> title, from every list shown (the conversation's state names items by id)
  titles: new Map(),
};

// ---------------------------------------------------------------- text helpers

// "Close Shave, A (1995)" -> "A Close Shave (1995)"; natural titles are left as they are.
const TRAILING_ARTICLE = /^(.+?),\s+(The|A|An)((?:\s+\([^()]*\))*)\s*$/i;

function naturalTitle(title) {
  const t = String(title ?? "").trim();
  const m = TRAILING_ARTICLE.exec(t);
  return m ? `${m[2]} ${m[1]}${m[3]}` : t;
}

const IMAGE_FIELD = /image|cover|poster|thumbnail|picture/i;
const HTTP_URL = /^https?:\/\//i;

/** The catalog image URL among an item's fields, or "". */
function imageUrl(fields) {
  for (const [name, value] of Object.entries(fields || {})) {
    if (IMAGE_FIELD.test(name) && typeof value === "string" && HTTP_URL.test(value.trim())) {
      return value.trim();
    }
  }
  return "";
}

function hashString(s) {
  // FNV-1a, 32 bits: a stable colour per item id
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

function initials(title, id) {
  const words = naturalTitle(title)
    .replace(/\([^)]*\)/g, " ")
    .split(/[^\p{L}\p{N}]+/u)
    .filter(Boolean);
  const significant = words.filter((w) => !/^(the|a|an)$/i.test(w));
  const use = significant.length ? significant : words;
  const letters = use.slice(0, 2).map((w) => [...w][0].toUpperCase()).join("");
  return letters || String(id).slice(0, 2).toUpperCase() || "?";
}

function humanName(column) {
  const s = String(column).replace(/[_-]+/g, " ").trim();
  return s ? s[0].toUpperCase() + s.slice(1) : s;
}

function displayValue(value) {
  let v = String(value ?? "").trim();
  if (/^-?\d+\.0+$/.test(v)) v = v.replace(/\.0+$/, ""); // a year stored as a float
  if (v.includes("|")) v = v.split("|").map((p) => p.trim()).filter(Boolean).join(", ");
  return v;
}

const LONG_TEXT = 80;
const MAX_SHORT_FIELDS = 4;
const HIDDEN_FIELDS = /^(title|name|item_?id|id)$/i;
// Prose fields: shown as a short paragraph whatever their length.
const TEXT_FIELD = /desc|summary|overview|plot|synopsis|blurb|about/i;
// List fields (genres, tags, authors...): always one labelled line, however long.
const LIST_FIELD = /genre|categor|tag|subject|keyword|style|author|artist|creator|director|writer|cast|actor/i;

// Fields people look for first on a card; the rest follow in the catalog's order.
const FIELD_PRIORITY = [/author|artist|creator|director|writer|band/i, /year|date/i, /genre|categor|tag|subject/i];
const ID_FIELD = /(^|_)id$|isbn/i;

function fieldRank(name) {
  const i = FIELD_PRIORITY.findIndex((re) => re.test(name));
  return i < 0 ? FIELD_PRIORITY.length : i;
}

/** Split an item's fields into short facts (name, value) and one longer text, for a card. */
function describeFields(fields) {
  const short = [];
  let text = "";
  const entries = Object.entries(fields || {})
    .map((e, i) => [e, i])
    .sort((a, b) => fieldRank(a[0][0]) - fieldRank(b[0][0]) || a[1] - b[1])
    .map(([e]) => e);
  for (const [name, raw] of entries) {
    if (HIDDEN_FIELDS.test(name) || IMAGE_FIELD.test(name) || ID_FIELD.test(name)) continue;
    const value = displayValue(raw);
    if (!value || value.toLowerCase() === "nan" || HTTP_URL.test(value)) continue;
    const isList = LIST_FIELD.test(name) || String(raw).includes("|");
    if (TEXT_FIELD.test(name) || (!isList && value.length > LONG_TEXT)) {
      if (!text) text = value;
    } else if (short.length < MAX_SHORT_FIELDS) {
      short.push([humanName(name), value]);
    }
  }
  return { short, text };
}

// ---------------------------------------------------------------- api key

function readKey() {
  // The CLI prints http://host:port/#key=...; take it from the fragment, keep it in
  // localStorage, and drop it from the address bar so it is not bookmarked or shared.
  const hash = new URLSearchParams(location.hash.replace(/^#/, ""));
  const fromHash = hash.get("key");
  if (fromHash) {
    storeKey(fromHash);
    hash.delete("key");
    const rest = hash.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
    return fromHash;
  }
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

function storeKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    // storage can be disabled; the key then lives for this page only
  }
}

function showKeyStatus() {
  el.keyStatus.textContent = state.key ? "API key: set" : "API key: not set";
  el.keyBox.classList.toggle("missing", !state.key);
}

// ---------------------------------------------------------------- http

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET", body, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (state.key) headers["X-API-Key"] = state.key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    credentials: "omit",
    cache: "no-store",
  });
  let data = null;
  const text = await res.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    let detail = data && (data.detail ?? data.message ?? data.error);
    if (detail && typeof detail === "object") detail = detail.message ?? JSON.stringify(detail);
    throw new ApiError(res.status, detail || res.statusText || "error");
  }
  return data;
}

/** "What failed: why", e.g. "Could not load recommendations for user 42: 503 model not loaded yet". */
function failure(what, err) {
  if (err instanceof ApiError) {
    if (err.status === 401 || err.status === 403) {
      return `${what}: the server refused the API key (${err.status}). Paste a valid key in “API key” above.`;
    }
    return `${what}: ${err.status} ${err.message}`;
  }
  const why = err && err.message ? err.message : String(err);
  return `${what}: no answer from the server (${why}).`;
}

function isAbort(err) {
  return err && err.name === "AbortError";
}

function showError(what, err) {
  if (isAbort(err)) return;
  const msg = err === undefined ? what : failure(what, err);
  if (err instanceof ApiError && (err.status === 401 || err.status === 403)) el.keyBox.open = true;
  el.error.textContent = msg;
  el.error.hidden = false;
}

function clearError() {
  el.error.hidden = true;
  el.error.textContent = "";
}

function announce(text) {
  el.status.textContent = text;
}

function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  // Not a secure context (e.g. served on a LAN address over http): build a v4 UUID by hand.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// ---------------------------------------------------------------- list states

/** Show a loading / empty / idle state above a list ("Searching…" with a spinner). */
function setListState(box, kind, text = "") {
  box.dataset.state = kind;
  box.replaceChildren();
  if (kind === "idle") {
    box.hidden = true;
    return;
  }
  if (kind === "loading") {
    const spin = document.createElement("span");
    spin.className = "spinner";
    spin.dataset.testid = "spinner";
    spin.setAttribute("aria-hidden", "true");
    box.append(spin);
  }
  const span = document.createElement("span");
  span.className = "state-text";
  span.textContent = text;
  box.append(span);
  box.hidden = false;
}

function setNote(box, text) {
  box.textContent = text;
  box.hidden = !text;
}

function setBusy(list, busy) {
  list.setAttribute("aria-busy", String(busy));
  list.dataset.state = busy ? "loading" : "ready";
}

// ---------------------------------------------------------------- rendering

function discovery() {
  return Number(el.slider.value);
}

function showDiscovery() {
  const d = discovery();
  const where = d < 0.34 ? "closer to familiar" : d > 0.66 ? "closer to surprising" : "between familiar and surprising";
  el.sliderValue.textContent = d.toFixed(2);
  el.slider.setAttribute("aria-valuetext", `${d.toFixed(2)} (${where})`);
}

function placeholder(title, id) {
  const ph = document.createElement("div");
  ph.className = `placeholder ph-${hashString(String(id)) % PLACEHOLDER_COLOURS}`;
  ph.dataset.testid = "card-placeholder";
  ph.setAttribute("aria-hidden", "true");
  ph.textContent = initials(title, id);
  return ph;
}

/** The picture for an item: its catalog image, falling back to initials on a colour. */
function renderMedia(box, title, id, fields) {
  const url = imageUrl(fields);
  if (!url) {
    box.replaceChildren(placeholder(title, id));
    box.dataset.kind = "placeholder";
    return;
  }
  const img = document.createElement("img");
  img.dataset.testid = "card-image";
  img.alt = title;
  img.loading = "lazy";
  img.decoding = "async";
  img.referrerPolicy = "no-referrer";
  img.setAttribute("referrerpolicy", "no-referrer");
  // the placeholder stays underneath: it shows while the image loads, and if it fails
  img.addEventListener("error", () => {
    img.remove();
    box.dataset.kind = "placeholder";
  }, { once: true });
  img.src = url;
  box.replaceChildren(placeholder(title, id), img);
  box.dataset.kind = "image";
}

function fillFields(node, item, fields) {
  const title = node.dataset.title;
  renderMedia(node.querySelector(".card-media"), title, item.item_id, fields);
  const { short, text } = describeFields(fields);
  const dl = node.querySelector(".card-fields");
  dl.replaceChildren();
  for (const [name, value] of short) {
    const div = document.createElement("div");
    div.dataset.field = name;
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dd.title = value; // the line is cut with "…" when it is too long: the full value on hover
    div.append(dt, dd);
    dl.append(div);
  }
  dl.hidden = !short.length;
  const p = node.querySelector(".card-text");
  p.textContent = text;
  p.hidden = !text;
}

/** An item's catalog fields: from the list itself, else looked up once per item. */
function itemFields(item) {
  if (item.fields && typeof item.fields === "object") return item.fields;
  const id = String(item.item_id);
  let p = state.fieldCache.get(id);
  if (!p) {
    p = api(`/v1/items/${encodeURIComponent(id)}`)
      .then((data) => (data && data.fields) || {})
      .catch(() => ({}));
    state.fieldCache.set(id, p);
  }
  return p;
}

function withFields(node, item) {
  const f = itemFields(item);
  if (f instanceof Promise) {
    fillFields(node, item, {});
    node.dataset.fields = "loading";
    f.then((fields) => {
      fillFields(node, item, fields);
      node.dataset.fields = "ready";
    });
  } else {
    fillFields(node, item, f);
    node.dataset.fields = "ready";
  }
}

function renderCard(item, source) {
  const node = el.cardTemplate.content.firstElementChild.cloneNode(true);
  const id = String(item.item_id);
  node.dataset.itemId = id;
  node.dataset.source = source;
  const title = naturalTitle(item.title || id);
  node.dataset.title = title;
  if (item.title) state.titles.set(id, String(item.title));
  node.querySelector(".card-title").textContent = title;
  // The list is ordered by the preset, not by this score: it only feeds the explanation.
  if (typeof item.score === "number") node.dataset.score = String(item.score);
  withFields(node, item);

  const badges = node.querySelector(".badges");
  for (const b of item.badges || []) {
    const spec = BADGES[b] || { label: b, icon: "•", title: b };
    const li = document.createElement("li");
    li.className = `badge badge-${String(b).replace(/[^a-z0-9_-]/gi, "")}`;
    li.dataset.testid = `badge-${b}`;
    li.title = spec.title;
    const icon = document.createElement("span");
    icon.setAttribute("aria-hidden", "true");
    icon.textContent = spec.icon;
    li.append(icon, ` ${spec.label}`);
    badges.append(li);
  }
  if (!badges.children.length) badges.remove();

  const reasons = node.querySelector(".reasons");
  for (const r of item.reasons || []) {
    const li = document.createElement("li");
    li.textContent = r;
    reasons.append(li);
  }
  if (!reasons.children.length) reasons.remove();

  for (const btn of node.querySelectorAll("button[data-action]")) {
    btn.setAttribute("aria-label", `${btn.textContent}: ${title}`);
  }
  const given = state.feedback.get(id);
  if (given) showFeedback(node, given);
  return node;
}

function renderList(list, items, source) {
  const frag = document.createDocumentFragment();
  for (const item of items) frag.append(renderCard(item, source));
  list.replaceChildren(frag);
}

function markNew(list, newIds) {
  for (const card of list.querySelectorAll(".card")) {
    if (!newIds.has(card.dataset.itemId)) continue;
    card.classList.add("is-new");
    const chip = document.createElement("span");
    chip.className = "new-chip";
    chip.dataset.testid = "card-new";
    chip.textContent = "new";
    card.querySelector(".meta").append(chip);
  }
}

function formatTime(ts) {
  if (ts === null || ts === undefined || ts === "") return "";
  let d;
  if (typeof ts === "number") d = new Date(ts < 1e12 ? ts * 1000 : ts);
  else d = new Date(ts);
  return Number.isNaN(d.getTime()) ? String(ts) : d.toISOString().slice(0, 10);
}

// What each event type says in a history entry (a rating adds its stars).
const EVENT_WORDS = {
  interaction: "chose", click: "opened", like: "liked", skip: "skipped", dislike: "disliked",
  rating: "rated", purchase: "bought", view: "viewed",
};
// Events that say "not for me": listed apart from the rest of the history.
const NEGATIVE_EVENTS = new Set(["skip", "dislike"]);

/** "liked", "rated 4★", "skipped": an event in words. */
function eventWords(type, value) {
  const word = EVENT_WORDS[type] || String(type || "");
  if (type === "rating" && typeof value === "number" && Number.isFinite(value)) {
    return `${word} ${Number.isInteger(value) ? value : value.toFixed(1)}★`;
  }
  return word;
}

function historyEntry(h, negative) {
  const li = document.createElement("li");
  li.dataset.testid = "history-item";
  li.dataset.itemId = String(h.item_id);
  li.dataset.event = String(h.type);
  if (negative) li.className = "negative";
  const t = document.createElement("span");
  t.className = "h-title";
  t.textContent = naturalTitle(h.title || String(h.item_id));
  const meta = document.createElement("span");
  meta.className = "h-meta";
  meta.dataset.testid = "history-meta";
  const what = eventWords(h.type, h.value);
  meta.textContent = [negative ? `✕ ${what}` : what, formatTime(h.timestamp)].filter(Boolean).join(" · ");
  li.append(t, meta);
  return li;
}

function renderHistory(items) {
  const positive = items.filter((h) => !NEGATIVE_EVENTS.has(h.type));
  const negative = items.filter((h) => NEGATIVE_EVENTS.has(h.type));
  el.historyList.replaceChildren(...positive.map((h) => historyEntry(h, false)));
  el.historyNegative.replaceChildren(...negative.map((h) => historyEntry(h, true)));
  el.historyNegativeBox.hidden = negative.length === 0;
  el.historyEmpty.hidden = positive.length > 0;
  el.historyEmpty.textContent = positive.length ? "" : negative.length
    ? "Nothing liked or chosen yet." : "No history yet for this user.";
}

// ---------------------------------------------------------------- loaders

async function loadUsers() {
  try {
    const data = await api(`/v1/users?limit=${USER_OPTIONS}`);
    const frag = document.createDocumentFragment();
    const users = data.users || [];
    for (const id of users) {
      const o = document.createElement("option");
      o.value = String(id);
      frag.append(o);
    }
    el.userOptions.replaceChildren(frag);
    if (users.length) {
      el.userHint.textContent =
        `Type to filter the ${users.length} most active users, or enter any id: a new user gets general picks.`;
    }
  } catch (err) {
    showError("Could not load the list of users", err);
  }
}

async function loadPresets() {
  try {
    const data = await api("/v1/presets");
    const presets = data.presets || [];
    if (!presets.length) return;
    const current = el.preset.value;
    el.preset.replaceChildren();
    for (const p of presets) {
      state.presets.set(p.name, p);
      const o = document.createElement("option");
      o.value = p.name;
      o.textContent = p.name;
      el.preset.append(o);
    }
    el.preset.value = state.presets.has(current) ? current : presets[0].name;
    // Start the slider at the preset's own discovery value unless the user already moved it.
    applyPreset(!state.sliderTouched);
  } catch (err) {
    showError("Could not load the presets", err);
  }
}

function applyPreset(setSlider) {
  const p = state.presets.get(el.preset.value);
  let text = p ? p.description || "" : "";
  if (p && p.learned) {
    // a bandit preset: show what it has learned so far (feature weights)
    const label = { shown: "already shown to you" };
    const parts = Object.entries(p.learned)
      .filter(([k]) => k !== "bias")
      .map(([k, v]) => `${label[k] || k} ${v >= 0 ? "+" : ""}${Number(v).toFixed(2)}`);
    text += ` — learned so far: ${parts.join(", ")}`;
  }
  el.presetDescription.textContent = text;
  if (setSlider && p && typeof p.discovery === "number") {
    el.slider.value = String(p.discovery);
    showDiscovery();
  }
}

async function loadHistory(user) {
  let items = [];
  try {
    const data = await api(`/v1/users/${encodeURIComponent(user)}/history?limit=20`);
    items = data.items || [];
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) {
      if (user === state.user) showError(`Could not load the history of user ${user}`, err);
      return;
    }
  }
  if (user !== state.user) return;
  renderHistory(items);
  state.historyCount = items.length;
  showRecNote();
}

/** The note above the recommendations: the API's own, else the cold-start explanation. */
function showRecNote() {
  let text = state.recApiNote;
  const shown = el.recList.dataset.user === state.user && el.recList.children.length > 0;
  if (!text && shown && state.historyCount === 0) {
    text = `No recommendations yet: user ${state.user} has no history — showing general picks, not personal ones.`;
  }
  setNote(el.recNote, text);
}

/** What changed between two settings, e.g. "discovery 0.50 → 0.90". */
function settingsChange(prev, cur) {
  const parts = [];
  if (prev.discovery !== cur.discovery) parts.push(`discovery ${prev.discovery} → ${cur.discovery}`);
  if (prev.preset !== cur.preset) parts.push(`preset ${prev.preset} → ${cur.preset}`);
  if (prev.explore !== cur.explore) parts.push(cur.explore ? "exploration on" : "exploration off");
  return parts.join(", ");
}

function describeChange(prev, cur, ids) {
  const before = new Set(prev.ids);
  const fresh = new Set(ids.filter((id) => !before.has(id)));
  const what = settingsChange(prev, cur) || "after your feedback";
  let text;
  if (!ids.length) text = `${what}: the list is now empty.`;
  else if (fresh.size === 0) {
    const same = ids.every((id, i) => prev.ids[i] === id) && ids.length === prev.ids.length;
    text = `${what}: the same ${ids.length} items${same ? ", in the same order" : ", re-ordered"}.`;
  } else {
    text = `${what}: ${fresh.size} of ${ids.length} items are new.`;
  }
  return { text, fresh };
}

async function loadRecommendations({ focus = false, note = "" } = {}) {
  const user = state.user;
  if (!user) return;
  if (state.recAbort) state.recAbort.abort();
  const ctrl = new AbortController();
  state.recAbort = ctrl;
  const seq = ++state.recSeq;
  const d = discovery();
  const preset = el.preset.value;
  const explore = Boolean(el.explore && el.explore.checked);
  setBusy(el.recList, true);
  el.recEmpty.hidden = true;
  setListState(el.recState, "loading", `Loading recommendations for user ${user}…`);
  const q = new URLSearchParams({ k: String(K), preset, discovery: d.toFixed(2) });
  if (explore) q.set("explore", EXPLORE_RATE.toFixed(2));
  try {
    const data = await api(`/v1/users/${encodeURIComponent(user)}/recommendations?${q}`, {
      signal: ctrl.signal,
    });
    if (seq !== state.recSeq) return; // a newer request superseded this one
    clearError();
    const items = data.items || [];
    const ids = items.map((it) => String(it.item_id));
    renderList(el.recList, items, "recommendations");
    el.recList.dataset.discovery = d.toFixed(2);
    el.recList.dataset.preset = preset;
    el.recList.dataset.user = user;
    if (data.impression_id !== undefined && data.impression_id !== null) {
      el.recList.dataset.impressionId = String(data.impression_id);
    }
    el.recHeading.textContent = `Recommendations for user ${user}`;
    setBusy(el.recList, false);
    setListState(el.recState, items.length ? "idle" : "empty",
      `Nothing to recommend for user ${user} with these settings.`);
    state.recApiNote = typeof data.note === "string" ? data.note : "";
    showRecNote();
    state.pendingFeedback = 0;
    state.pendingLikes = 0;
    el.recRefresh.hidden = true;

    const cur = { user, ids, discovery: d.toFixed(2), preset, explore };
    const prev = state.lastList;
    let change = "";
    if (prev && prev.user === user) {
      const { text, fresh } = describeChange(prev, cur, ids);
      change = text;
      markNew(el.recList, fresh);
      el.discoveryChange.textContent = text[0].toUpperCase() + text.slice(1);
      el.discoveryChange.hidden = false;
    }
    state.lastList = cur;
    announce(
      `${note}${items.length} recommendations for user ${user}, preset ${preset}, discovery ${d.toFixed(2)}.` +
        (change ? ` ${el.discoveryChange.textContent}` : "")
    );
    if (focus) el.recHeading.focus();
  } catch (err) {
    if (seq !== state.recSeq || isAbort(err)) return;
    setBusy(el.recList, false);
    el.recList.dataset.state = "error";
    setListState(el.recState, "idle");
    showError(`Could not load recommendations for user ${user}`, err);
  }
}

function scheduleRecommendations() {
  clearTimeout(state.debounce);
  state.debounce = setTimeout(() => loadRecommendations(), DEBOUNCE_MS);
}

function clearSearch() {
  state.searchSeq++;
  clearTimeout(state.slowTimer);
  el.searchSection.hidden = true;
  el.searchList.replaceChildren();
  el.searchList.dataset.state = "idle";
  delete el.searchList.dataset.query;
  setListState(el.searchState, "idle");
  setNote(el.searchNote, "");
}

/** Forget everything shown for the previous user. */
function resetForNewUser() {
  if (state.recAbort) state.recAbort.abort();
  clearTimeout(state.debounce);
  state.recSeq++;
  state.lastList = null;
  state.historyCount = null;
  state.recApiNote = "";
  state.feedback.clear();
  state.pendingFeedback = 0;
  state.pendingLikes = 0;
  el.recRefresh.hidden = true;
  el.recList.replaceChildren();
  el.recList.dataset.state = "idle";
  delete el.recList.dataset.user;
  setNote(el.recNote, "");
  el.discoveryChange.hidden = true;
  el.discoveryChange.textContent = "";
  el.historyList.replaceChildren();
  el.historyNegative.replaceChildren();
  el.historyNegativeBox.hidden = true;
  el.historyEmpty.hidden = false;
  el.historyEmpty.textContent = "Loading…";
  resetExplanation();
  resetSimilar();
  clearSearch();
}

function selectUser(user) {
  user = user.trim();
  if (!user) {
    showError("Type or pick a user id first.");
    el.userInput.focus();
    return;
  }
  if (user !== state.user) resetForNewUser();
  state.user = user;
  try {
    localStorage.setItem(USER_STORAGE, user);
  } catch {
    // ignore
  }
  clearError();
  loadHistory(user);
  loadRecommendations();
}

async function runSearch(query) {
  query = query.trim();
  if (!query) {
    el.searchInput.focus();
    return;
  }
  const seq = ++state.searchSeq;
  el.searchSection.hidden = false;
  setBusy(el.searchList, true);
  setNote(el.searchNote, "");
  setListState(el.searchState, "loading", `Searching for “${query}”…`);
  clearTimeout(state.slowTimer);
  state.slowTimer = setTimeout(() => {
    if (seq !== state.searchSeq) return;
    setListState(el.searchState, "loading",
      `Searching for “${query}”… the first search loads the language model, which can take a while.`);
  }, SLOW_MS);
  // The request itself says what is wanted: the server's search default (no discovery push)
  // applies until the user moves the slider, whose value then applies to search too.
  const body = { query, k: K };
  if (state.sliderTouched) body.discovery = discovery();
  const user = state.user;
  if (user) body.user_id = user;
  try {
    const data = await api("/v1/search", { method: "POST", body });
    if (seq !== state.searchSeq) return;
    clearTimeout(state.slowTimer);
    clearError();
    const items = data.items || [];
    renderList(el.searchList, items, "search");
    el.searchList.dataset.query = query;
    el.searchHeading.textContent = `Results for “${query}”`;
    setBusy(el.searchList, false);
    let note = typeof data.note === "string" ? data.note : "";
    if (!items.length) {
      // nothing at all: the API's sentence (or ours) is the list's state, not a note above it
      setListState(el.searchState, "empty", note || `Nothing in the catalog matches “${query}”.`);
      setNote(el.searchNote, "");
    } else {
      setListState(el.searchState, "idle");
      if (!note && data.match === "weak") {
        note = "Nothing in the catalog matches that well: these are the closest items.";
      }
      setNote(el.searchNote, note);
    }
    // the note itself is on the page once, where the list is (a live region reads it out)
    announce(items.length ? `${items.length} results for “${query}”.` : `No results for “${query}”.`);
  } catch (err) {
    if (seq !== state.searchSeq) return;
    clearTimeout(state.slowTimer);
    setBusy(el.searchList, false);
    el.searchList.dataset.state = "error";
    setListState(el.searchState, "idle");
    showError(`Could not search for “${query}”`, err);
  }
}

// ---------------------------------------------------------------- conversation

function storedConversation() {
  try {
    return sessionStorage.getItem(CONVERSATION_STORAGE) || "";
  } catch {
    return "";
  }
}

function storeConversation(id) {
  try {
    if (id) sessionStorage.setItem(CONVERSATION_STORAGE, id);
    else sessionStorage.removeItem(CONVERSATION_STORAGE);
  } catch {
    // storage can be disabled; the conversation then lasts as long as the page
  }
}

function chatAnnounce(text) {
  el.chatLive.textContent = text;
}

/** One line under the chat form: what failed and why (the server's own words). */
function showChatError(what, err) {
  if (isAbort(err)) return;
  if (err instanceof ApiError && (err.status === 401 || err.status === 403)) el.keyBox.open = true;
  el.chatError.textContent = err === undefined ? what : failure(what, err);
  el.chatError.hidden = false;
}

function clearChatError() {
  el.chatError.hidden = true;
  el.chatError.textContent = "";
}

/** A message in the log: who said it, then the text (always as text, never as markup). */
function chatBubble(role, text) {
  const mine = role === "user";
  const li = document.createElement("li");
  li.className = `chat-turn ${mine ? "from-user" : "from-serendip"}`;
  li.dataset.testid = mine ? "chat-user" : "chat-turn";
  const who = document.createElement("p");
  who.className = "chat-who";
  who.textContent = mine ? "You" : "serendip";
  const p = document.createElement("p");
  p.className = mine ? "chat-text" : "chat-reply";
  p.dataset.testid = mine ? "chat-message" : "chat-reply";
  p.textContent = text;
  li.append(who, p);
  return li;
}

function pendingBubble() {
  const li = document.createElement("li");
  li.className = "chat-turn from-serendip pending";
  li.dataset.testid = "chat-pending";
  const who = document.createElement("p");
  who.className = "chat-who";
  who.textContent = "serendip";
  li.append(who, loadingLine("Looking for picks…"));
  return li;
}

/** The picks of one turn, folded under a summary ("10 picks") once a newer turn arrives. */
function picksBox(count, open) {
  const details = document.createElement("details");
  details.className = "chat-picks";
  details.dataset.testid = "chat-picks";
  details.open = open;
  const summary = document.createElement("summary");
  summary.textContent = count === 1 ? "1 pick" : `${count} picks`;
  const ol = document.createElement("ol");
  ol.className = "cards";
  ol.dataset.testid = "chat-list";
  ol.dataset.state = "idle";
  ol.setAttribute("aria-busy", "false");
  details.append(summary, ol);
  return { details, ol };
}

function collapsePicks() {
  for (const d of el.chatLog.querySelectorAll(".chat-picks")) d.open = false;
}

/** serendip's answer to a message: the reply, the API's note if any, and the picks. */
function liveTurn(data) {
  const reply = typeof data.reply === "string" ? data.reply : "";
  const li = chatBubble("assistant", reply);
  const note = typeof data.note === "string" ? data.note.trim() : "";
  if (note) {
    const p = document.createElement("p");
    p.className = "note";
    p.dataset.testid = "chat-note";
    p.textContent = note;
    li.append(p);
  }
  const items = Array.isArray(data.items) ? data.items : [];
  if (items.length) {
    const { details, ol } = picksBox(items.length, true);
    renderList(ol, items, "chat");
    ol.dataset.state = "ready";
    li.append(details);
  }
  return li;
}

/** A stored turn keeps only the ids of its picks: their cards are built from the catalog. */
async function loadStoredPicks(ol, ids) {
  setBusy(ol, true);
  const found = await Promise.all(ids.map(async (id) => {
    const fields = await itemFields({ item_id: id });
    const title = fields.title ?? fields.name ?? state.titles.get(id);
    // an item the catalog no longer has is left out
    if (!title && !Object.keys(fields).length) return null;
    return { item_id: id, title: title ? String(title) : id, fields };
  }));
  renderList(ol, found.filter(Boolean), "chat");
  setBusy(ol, false);
}

function storedTurn(msg, open) {
  const li = chatBubble("assistant", String(msg.text ?? ""));
  const ids = Array.isArray(msg.items) ? msg.items.map(String) : [];
  if (ids.length) {
    const { details, ol } = picksBox(ids.length, open);
    const load = () => {
      if (ol.dataset.state === "idle") loadStoredPicks(ol, ids);
    };
    details.addEventListener("toggle", () => {
      if (details.open) load();
    });
    li.append(details);
    if (open) load();
  }
  return li;
}

/** An item's title for the "so far" chips: from a list already shown, else the catalog. */
async function itemTitle(id) {
  let t = state.titles.get(id);
  if (!t) {
    const fields = await itemFields({ item_id: id });
    t = fields.title ?? fields.name;
  }
  return naturalTitle(t ? String(t) : id);
}

function chip(kind, icon, text) {
  const li = document.createElement("li");
  li.className = `chip chip-${kind}`;
  li.dataset.testid = "chat-chip";
  li.dataset.kind = kind;
  if (icon) {
    const i = document.createElement("span");
    i.setAttribute("aria-hidden", "true");
    i.textContent = `${icon} `;
    li.append(i);
  }
  li.append(text);
  return li;
}

// The discovery a "surprise me" and a "more like that" set (serendip.conversation).
const CHAT_SURPRISE = 0.8;
const CHAT_FAMILIAR = 0.1;

/** What the conversation has established, as chips: liked and disliked items, wishes. */
async function showChatState(st, userId) {
  const seq = state.chat.seq;
  const s = st && typeof st === "object" ? st : {};
  const strings = (v) => (Array.isArray(v) ? v.map(String) : []);
  const liked = strings(s.liked);
  const disliked = strings(s.disliked);
  const [likedTitles, dislikedTitles] = await Promise.all([
    Promise.all(liked.map(itemTitle)), Promise.all(disliked.map(itemTitle)),
  ]);
  if (seq !== state.chat.seq) return;
  const chips = [
    ...likedTitles.map((t) => chip("liked", "♥", `Liked: ${t}`)),
    ...dislikedTitles.map((t) => chip("disliked", "✕", `Not for me: ${t}`)),
    ...strings(s.genres).map((g) => chip("genre", "", `Genre: ${g}`)),
    ...strings(s.not_genres).map((g) => chip("not-genre", "✕", `No ${g}`)),
    ...strings(s.avoid).map((w) => chip("avoid", "", `Less ${w}`)),
  ];
  if (typeof s.era === "string" && s.era) chips.push(chip("era", "", `Era: ${s.era}`));
  if (typeof s.discovery === "number") {
    if (s.discovery >= CHAT_SURPRISE) chips.push(chip("discovery", "★", "Surprises"));
    else if (s.discovery <= CHAT_FAMILIAR) chips.push(chip("discovery", "", "More like those"));
    else chips.push(chip("discovery", "", `Discovery ${s.discovery.toFixed(2)}`));
  }
  if (typeof userId === "string" && userId) chips.push(chip("user", "", `With user ${userId}'s history`));
  el.chatChips.replaceChildren(...chips);
  el.chatState.hidden = !chips.length;
}

function setChatBusy(busy) {
  state.chat.pending = busy;
  el.chatSend.disabled = busy;
  el.chatSurprise.disabled = busy;
  el.chatLog.setAttribute("aria-busy", String(busy));
}

/** The chat box once a conversation exists: it can be refined or started over. */
function chatStarted(id) {
  state.chat.id = id;
  storeConversation(id);
  el.chatLog.dataset.conversationId = id;
  el.chatNew.hidden = false;
}

async function sendChat(text) {
  const message = text.trim();
  if (state.chat.pending) return;
  if (!message) {
    showChatError("Type a message first: a title you liked, or what you are in the mood for.");
    el.chatInput.focus();
    return;
  }
  if (!state.key) {
    el.keyBox.open = true;
    showChatError("No API key yet: paste the key that “serendip serve” printed into “API key” above.");
    return;
  }
  clearChatError();
  const id = state.chat.id;
  const seq = ++state.chat.seq;
  setChatBusy(true);
  const mine = chatBubble("user", message);
  const pending = pendingBubble();
  el.chatLog.append(mine, pending);
  if (el.chatInput.value.trim() === message) el.chatInput.value = "";
  mine.scrollIntoView({ block: "nearest" });
  clearTimeout(state.chat.slowTimer);
  state.chat.slowTimer = setTimeout(() => {
    if (seq !== state.chat.seq) return;
    pending.replaceChildren(pending.firstChild, loadingLine(
      "Looking for picks… the first request loads the language model, which can take a while."));
  }, SLOW_MS);
  const body = { message, k: K };
  let path = "/v1/conversations";
  if (id) path += `/${encodeURIComponent(id)}/messages`;
  else if (state.user) body.user_id = state.user; // blend in the picked user's taste
  try {
    const data = await api(path, { method: "POST", body });
    if (seq !== state.chat.seq) return; // started over meanwhile
    clearTimeout(state.chat.slowTimer);
    collapsePicks();
    const turn = liveTurn(data);
    pending.replaceWith(turn);
    chatStarted(String(data.conversation_id ?? id ?? ""));
    setChatBusy(false);
    showChatState(data.state, data.user_id);
    const n = Array.isArray(data.items) ? data.items.length : 0;
    chatAnnounce(`serendip: ${turn.querySelector(".chat-reply").textContent} ` +
      (n ? `${n} ${n === 1 ? "pick" : "picks"} shown.` : "No picks this time."));
    mine.scrollIntoView({ block: "start" });
    // back to the message box for the next refinement, unless the person moved on meanwhile
    const at = document.activeElement;
    if (!at || at === document.body || el.chatForm.contains(at)) el.chatInput.focus({ preventScroll: true });
  } catch (err) {
    if (seq !== state.chat.seq) return;
    clearTimeout(state.chat.slowTimer);
    pending.remove();
    mine.remove();
    setChatBusy(false);
    if (!el.chatInput.value) el.chatInput.value = message; // to send again as it is, or edit
    if (id && err instanceof ApiError && err.status === 404) {
      showChatError("This conversation is no longer stored: choose “New conversation” to start again.");
    } else {
      showChatError(id ? "Could not send your message" : "Could not start the conversation", err);
    }
    el.chatInput.focus();
  }
}

/** Show the conversation this tab had open (after a reload), from the server's record. */
async function restoreConversation() {
  const id = state.chat.id || storedConversation();
  if (!id || !state.key) return;
  const seq = ++state.chat.seq;
  const pending = pendingBubble();
  pending.querySelector(".list-state span:last-child").textContent = "Resuming your conversation…";
  el.chatLog.replaceChildren(pending);
  try {
    const data = await api(`/v1/conversations/${encodeURIComponent(id)}`);
    if (seq !== state.chat.seq) return;
    const messages = (Array.isArray(data.messages) ? data.messages : [])
      .filter((m) => m && typeof m === "object" && (m.role === "user" || m.role === "assistant"));
    let last = -1;
    messages.forEach((m, i) => {
      if (m.role === "assistant") last = i;
    });
    const frag = document.createDocumentFragment();
    messages.forEach((m, i) => {
      frag.append(m.role === "user" ? chatBubble("user", String(m.text ?? "")) : storedTurn(m, i === last));
    });
    el.chatLog.replaceChildren(frag);
    chatStarted(id);
    setChatBusy(false);
    showChatState(data.state, data.user_id);
    chatAnnounce(`Conversation resumed: ${messages.length} messages.`);
  } catch (err) {
    if (seq !== state.chat.seq) return;
    el.chatLog.replaceChildren();
    if (err instanceof ApiError && err.status === 404) {
      state.chat.id = null;
      storeConversation("");
      showChatError("Your earlier conversation is no longer stored: start a new one below.");
    } else {
      // keep the id: the conversation may resume once the server answers or the key is fixed
      state.chat.id = id;
      showChatError("Could not resume your conversation", err);
    }
  }
}

function newConversation() {
  state.chat.seq++;
  clearTimeout(state.chat.slowTimer);
  state.chat.id = null;
  storeConversation("");
  setChatBusy(false);
  el.chatLog.replaceChildren();
  delete el.chatLog.dataset.conversationId;
  el.chatChips.replaceChildren();
  el.chatState.hidden = true;
  el.chatNew.hidden = true;
  clearChatError();
  el.chatInput.value = "";
  el.chatInput.focus();
  chatAnnounce("New conversation: tell serendip what you want.");
}

// ---------------------------------------------------------------- card actions

const FEEDBACK = {
  like: { done: "Liked ✓", verb: "Liked", noun: "like",
          saved: "Saved ✓ — your next list will use it.",
          again: "Already saved ✓ — your next list will use it." },
  skip: { done: "Not for me ✓", verb: "Marked not for me", noun: "“not for me”",
          saved: "Saved ✓ — your next list will leave it out.",
          again: "Already saved ✓ — your next list will leave it out." },
};

/** The update button's words: "Update my list (1 new like)", "… (2 changes)". */
function updateLabel(likes, total) {
  if (total === likes) return `Update my list (${likes} new ${likes === 1 ? "like" : "likes"})`;
  return `Update my list (${total} ${total === 1 ? "change" : "changes"})`;
}

/** Show that feedback was recorded: the button stays pressed, both stay disabled. */
function showFeedback(card, type) {
  card.dataset.acked = type;
  for (const b of card.querySelectorAll("button[data-action=like], button[data-action=skip]")) {
    const mine = b.dataset.action === type;
    b.disabled = true;
    b.setAttribute("aria-pressed", String(mine));
    if (mine) {
      b.textContent = FEEDBACK[type].done;
      b.classList.add("done");
    }
  }
}

function cardsFor(itemId) {
  return [...document.querySelectorAll(".card")].filter((c) => c.dataset.itemId === itemId);
}

async function sendFeedback(card, type) {
  const user = state.user;
  const title = card.dataset.title;
  const itemId = card.dataset.itemId;
  const ack = card.querySelector(".ack");
  const cardError = card.querySelector(".card-error");
  const spec = FEEDBACK[type];
  if (!user) {
    showError("Pick a user before giving feedback.");
    el.userInput.focus();
    return;
  }
  const buttons = card.querySelectorAll("button[data-action=like], button[data-action=skip]");
  const button = card.querySelector(`button[data-action=${type}]`);
  const label = button.textContent;
  for (const b of buttons) b.disabled = true;
  button.textContent = "Saving…";
  cardError.hidden = true;
  const event = { user_id: user, item_id: itemId, type, idempotency_key: newKey() };
  try {
    const data = await api("/v1/events", { method: "POST", body: { events: [event] } });
    if (user !== state.user) return;
    const a = (data.acks || [])[0] || {};
    state.feedback.set(itemId, type);
    for (const c of cardsFor(itemId)) {
      showFeedback(c, type);
      c.querySelector(".ack").textContent = a.duplicate ? spec.again : spec.saved;
    }
    state.pendingFeedback++;
    if (type === "like") state.pendingLikes++;
    el.recRefresh.textContent = updateLabel(state.pendingLikes, state.pendingFeedback);
    el.recRefresh.hidden = false;
    announce(`${spec.verb} “${title}”. Choose “Update my list” to see recommendations that use it.`);
    loadHistory(user);
  } catch (err) {
    button.textContent = label;
    for (const b of buttons) b.disabled = false;
    ack.textContent = "";
    cardError.textContent = failure(`Could not save your ${spec.noun} for “${title}”`, err);
    cardError.hidden = false;
  }
}

function resetExplanation() {
  state.explainSeq++;
  for (const c of document.querySelectorAll(".card.selected")) c.classList.remove("selected");
  const p = document.createElement("p");
  p.className = "empty";
  p.textContent = "Choose “why this?” on a card to see what led to it.";
  el.explainBody.replaceChildren(p);
  el.explainBody.dataset.state = "idle";
  delete el.explainBody.dataset.itemId;
}

function resetSimilar() {
  state.similarSeq++;
  const p = document.createElement("p");
  p.className = "empty";
  p.textContent = "Choose “similar” on a card to see items like it.";
  el.similarBody.replaceChildren(p);
  el.similarBody.dataset.state = "idle";
  delete el.similarBody.dataset.itemId;
}

/**
 * "top 1% of the catalog for you": where the item ranks for this user (or this search).
 * A card's score is the share of the catalog the item outranks (1 = the best match).
 */
function matchWords(card) {
  const score = Number.parseFloat(card.dataset.score ?? "");
  if (!Number.isFinite(score)) return "";
  const top = Math.min(100, Math.max(1, Math.ceil((1 - score) * 100 - 1e-9)));
  const forWhom = card.dataset.source === "search" ? "for this search"
    : card.dataset.source === "chat" ? "for this conversation" : "for you";
  return `top ${top}% of the catalog ${forWhom}`;
}

function loadingLine(text) {
  const p = document.createElement("p");
  p.className = "list-state";
  const spin = document.createElement("span");
  spin.className = "spinner";
  spin.setAttribute("aria-hidden", "true");
  const t = document.createElement("span");
  t.textContent = text;
  p.append(spin, t);
  return p;
}

async function explain(card) {
  const user = state.user;
  const title = card.dataset.title;
  if (!user) {
    showError("Pick a user to see why an item fits them.");
    el.userInput.focus(); // where the message is, and what to do
    return;
  }
  const seq = ++state.explainSeq;
  for (const c of document.querySelectorAll(".card.selected")) c.classList.remove("selected");
  card.classList.add("selected");
  el.explainBody.replaceChildren(loadingLine(`Loading why “${title}”…`));
  el.explainBody.dataset.state = "loading";
  const what = `Could not explain “${title}” for user ${user}`;
  try {
    const path = `/v1/users/${encodeURIComponent(user)}/recommendations/${encodeURIComponent(card.dataset.itemId)}/explain`;
    const data = await api(path);
    if (seq !== state.explainSeq) return;
    const frag = document.createDocumentFragment();
    const h = document.createElement("h3");
    h.textContent = title;
    frag.append(h);
    if (data.text) {
      const p = document.createElement("p");
      p.className = "explain-text";
      p.dataset.testid = "explain-text";
      p.textContent = data.text;
      frag.append(p);
    }
    const because = data.because || [];
    if (because.length) {
      const sub = document.createElement("h4");
      sub.textContent = "Most like these in the history";
      const ol = document.createElement("ol");
      ol.className = "because";
      ol.dataset.testid = "explain-because";
      for (const b of because) {
        const li = document.createElement("li");
        li.textContent = naturalTitle(b.title || String(b.item_id));
        ol.append(li);
      }
      frag.append(sub, ol);
    }
    // The numbers behind the sentences, folded away and in plain words.
    const dl = document.createElement("dl");
    dl.className = "facts";
    dl.dataset.testid = "explain-facts";
    const fact = (k, v) => {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      dl.append(dt, dd);
    };
    const match = matchWords(card);
    if (match) fact("Match", match);
    const pop = data.popularity || {};
    if (typeof pop.users === "number" && typeof pop.of_people === "number") {
      fact("Known to", `${pop.users} of ${pop.of_people} ${pop.of_people === 1 ? "person" : "people"}`);
    }
    if (typeof pop.more_popular_than_share === "number") {
      fact("Popularity", `more popular than ${Math.round(pop.more_popular_than_share)}% of the catalog`);
    }
    if (typeof data.unexpectedness === "number") {
      const pct = Math.round(Math.min(Math.max(data.unexpectedness, 0), 1) * 100);
      fact("How unlike your history", `${pct}%`);
    }
    if (dl.children.length) {
      const details = document.createElement("details");
      details.className = "explain-details";
      details.dataset.testid = "explain-details";
      const summary = document.createElement("summary");
      summary.textContent = "Details";
      details.append(summary, dl);
      frag.append(details);
    }
    el.explainBody.replaceChildren(frag);
    el.explainBody.dataset.state = "ready";
    el.explainBody.dataset.itemId = card.dataset.itemId;
    announce(`Explanation for “${title}” shown.`);
    el.explainHeading.focus();
  } catch (err) {
    if (seq !== state.explainSeq) return;
    el.explainBody.dataset.state = "error";
    const p = document.createElement("p");
    p.className = "panel-error";
    p.textContent = failure(what, err);
    el.explainBody.replaceChildren(p);
  }
}

async function showSimilar(card) {
  const title = card.dataset.title;
  const itemId = card.dataset.itemId;
  const seq = ++state.similarSeq;
  el.similarBody.replaceChildren(loadingLine(`Finding items like “${title}”…`));
  el.similarBody.dataset.state = "loading";
  try {
    const data = await api(`/v1/items/${encodeURIComponent(itemId)}/similar?k=${SIMILAR_K}`);
    if (seq !== state.similarSeq) return;
    const frag = document.createDocumentFragment();
    const h = document.createElement("h3");
    h.textContent = `More like “${title}”`;
    frag.append(h);
    const items = data.items || [];
    if (!items.length) {
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = "No similar items found.";
      frag.append(p);
    }
    const ol = document.createElement("ol");
    ol.className = "similar-list";
    ol.dataset.testid = "similar-list";
    for (const it of items) {
      const li = document.createElement("li");
      li.dataset.testid = "similar-item";
      li.dataset.itemId = String(it.item_id);
      const name = naturalTitle(it.title || String(it.item_id));
      li.dataset.title = name;
      const media = document.createElement("div");
      media.className = "card-media small";
      const text = document.createElement("div");
      const t = document.createElement("span");
      t.className = "s-title";
      t.textContent = name;
      const why = document.createElement("span");
      why.className = "s-meta";
      why.textContent = (it.reasons || []).join("; ");
      text.append(t, why);
      li.append(media, text);
      const f = itemFields(it);
      if (f instanceof Promise) {
        renderMedia(media, name, it.item_id, {});
        f.then((fields) => renderMedia(media, name, it.item_id, fields));
      } else {
        renderMedia(media, name, it.item_id, f);
      }
      ol.append(li);
    }
    if (items.length) frag.append(ol);
    el.similarBody.replaceChildren(frag);
    el.similarBody.dataset.state = "ready";
    el.similarBody.dataset.itemId = itemId;
    announce(`${items.length} items like “${title}” shown.`);
    el.similarHeading.focus();
  } catch (err) {
    if (seq !== state.similarSeq) return;
    el.similarBody.dataset.state = "error";
    const p = document.createElement("p");
    p.className = "panel-error";
    p.textContent = failure(`Could not find items like “${title}”`, err);
    el.similarBody.replaceChildren(p);
  }
}

function onCardAction(ev) {
  const btn = ev.target.closest("button[data-action]");
  if (!btn) return;
  const card = btn.closest(".card");
  const action = btn.dataset.action;
  if (action === "why") explain(card);
  else if (action === "similar") showSimilar(card);
  else sendFeedback(card, action);
}

// ---------------------------------------------------------------- wiring

function init() {
  state.key = readKey();
  showKeyStatus();
  showDiscovery();

  el.keyForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.key = el.keyInput.value.trim();
    el.keyInput.value = "";
    storeKey(state.key);
    showKeyStatus();
    el.keyBox.open = false;
    clearError();
    announce(state.key ? "API key saved." : "API key cleared.");
    loadPresets();
    loadUsers();
    if (state.user) selectUser(state.user);
    if (state.key && !el.chatLog.children.length) restoreConversation();
  });
  el.keyForget.addEventListener("click", () => {
    state.key = "";
    storeKey("");
    showKeyStatus();
    announce("API key forgotten.");
  });

  el.userForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    selectUser(el.userInput.value);
  });
  // Picking an entry of the datalist replaces the text in one go: show that user at once.
  // (Typing waits for Enter or "Show", so a half-typed id is never requested.)
  el.userInput.addEventListener("input", (ev) => {
    if (ev.inputType !== "insertReplacementText" && ev.inputType !== undefined) return;
    const v = el.userInput.value.trim();
    if (v && v !== state.user) selectUser(v);
  });

  el.preset.addEventListener("change", () => {
    applyPreset(true);
    loadRecommendations();
  });

  if (el.explore) el.explore.addEventListener("change", () => loadRecommendations());

  el.slider.addEventListener("input", () => {
    state.sliderTouched = true;
    showDiscovery();
    scheduleRecommendations();
  });

  el.recRefresh.addEventListener("click", () => loadRecommendations({ focus: true }));

  el.searchForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    runSearch(el.searchInput.value);
  });
  el.searchClear.addEventListener("click", () => {
    clearSearch();
    el.searchInput.value = "";
    el.searchInput.focus();
    announce("Search cleared.");
  });

  el.recList.addEventListener("click", onCardAction);
  el.searchList.addEventListener("click", onCardAction);
  el.chatLog.addEventListener("click", onCardAction);

  el.chatForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    sendChat(el.chatInput.value);
  });
  el.chatSurprise.addEventListener("click", () => sendChat("surprise me"));
  el.chatNew.addEventListener("click", newConversation);

  if (state.key) {
    loadPresets();
    loadUsers();
    restoreConversation();
  } else {
    el.keyBox.open = true;
    showError("No API key yet: paste the key that “serendip serve” printed into “API key” above.");
  }
  let last = "";
  try {
    last = localStorage.getItem(USER_STORAGE) || "";
  } catch {
    last = "";
  }
  if (last) el.userInput.placeholder = `e.g. ${last}`;
}

init();
