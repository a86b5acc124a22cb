// serendip web page: plain ES module, no build step, no third-party code.
// Talks to the same-origin JSON API under /v1 with the X-API-Key header.

const KEY_STORAGE = "serendip.apiKey";
const USER_STORAGE = "serendip.lastUser";
const DEBOUNCE_MS = 250;
const K = 10;

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
  preset: $("preset-select"),
  presetDescription: $("preset-description"),
  slider: $("discovery-slider"),
  explore: $("explore-toggle"),
  sliderValue: $("discovery-value"),
  searchForm: $("search-form"),
  searchInput: $("search-input"),
  searchSection: $("search-section"),
  searchHeading: $("search-heading"),
  searchList: $("search-list"),
  searchClear: $("search-clear"),
  status: $("live-status"),
  error: $("error"),
  recHeading: $("rec-heading"),
  recEmpty: $("rec-empty"),
  recList: $("rec-list"),
  historyEmpty: $("history-empty"),
  historyList: $("history-list"),
  explainBody: $("explain-body"),
  explainHeading: document.getElementById("explain-heading"),
  cardTemplate: document.getElementById("card-template"),
};

const state = {
  key: "",
  user: "",
  presets: new Map(),
  recSeq: 0,
  recAbort: null,
  searchSeq: 0,
  debounce: 0,
  sliderTouched: false,
};

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
    let detail = data && (data.detail ?? data.error ?? data.message);
    if (detail && typeof detail === "object") detail = detail.message ?? JSON.stringify(detail);
    throw new ApiError(res.status, detail || `${res.status} ${res.statusText}`);
  }
  return data;
}

function showError(err) {
  if (err && err.name === "AbortError") return;
  let msg = err && err.message ? err.message : String(err);
  if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
    msg = `The server refused the API key (${err.status}). Paste a valid key in “API key” above.`;
    el.keyBox.open = true;
  }
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

// ---------------------------------------------------------------- rendering

function discovery() {
  return Number(el.slider.value);
}

function showDiscovery() {
  const d = discovery();
  const where = d < 0.34 ? "closer to accuracy" : d > 0.66 ? "closer to discovery" : "between accuracy and discovery";
  el.sliderValue.textContent = d.toFixed(2);
  el.slider.setAttribute("aria-valuetext", `${d.toFixed(2)} (${where})`);
}

function renderCard(item, source) {
  const node = el.cardTemplate.content.firstElementChild.cloneNode(true);
  node.dataset.itemId = String(item.item_id);
  node.dataset.source = source;
  const title = item.title || String(item.item_id);
  node.querySelector(".card-title").textContent = title;
  const score = typeof item.score === "number" ? item.score.toFixed(3) : "–";
  node.querySelector(".score").textContent = `score ${score}`;

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
  return node;
}

function renderList(list, items, source) {
  const frag = document.createDocumentFragment();
  for (const item of items) frag.append(renderCard(item, source));
  list.replaceChildren(frag);
}

function setBusy(list, busy) {
  list.setAttribute("aria-busy", String(busy));
  list.dataset.state = busy ? "loading" : "ready";
}

function formatTime(ts) {
  if (ts === null || ts === undefined || ts === "") return "";
  let d;
  if (typeof ts === "number") d = new Date(ts < 1e12 ? ts * 1000 : ts);
  else d = new Date(ts);
  return Number.isNaN(d.getTime()) ? String(ts) : d.toISOString().slice(0, 10);
}

function renderHistory(items) {
  el.historyList.replaceChildren();
  el.historyEmpty.hidden = items.length > 0;
  el.historyEmpty.textContent = items.length ? "" : "No history yet for this user.";
  for (const h of items) {
    const li = document.createElement("li");
    li.dataset.testid = "history-item";
    li.dataset.itemId = String(h.item_id);
    const t = document.createElement("span");
    t.className = "h-title";
    t.textContent = h.title || String(h.item_id);
    const meta = document.createElement("span");
    meta.className = "h-meta";
    const bits = [h.type, formatTime(h.timestamp)];
    if (h.value !== null && h.value !== undefined) bits.push(`value ${h.value}`);
    meta.textContent = bits.filter(Boolean).join(" · ");
    li.append(t, meta);
    el.historyList.append(li);
  }
}

// ---------------------------------------------------------------- loaders

async function loadUsers() {
  try {
    const data = await api("/v1/users?limit=50");
    const frag = document.createDocumentFragment();
    for (const id of data.users || []) {
      const o = document.createElement("option");
      o.value = String(id);
      frag.append(o);
    }
    el.userOptions.replaceChildren(frag);
  } catch (err) {
    showError(err);
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
    showError(err);
  }
}

function applyPreset(setSlider) {
  const p = state.presets.get(el.preset.value);
  let text = p ? p.description || "" : "";
  if (p && p.learned) {
    // a bandit preset: show what it has learned so far (feature weights)
    const parts = Object.entries(p.learned)
      .filter(([k]) => k !== "bias")
      .map(([k, v]) => `${k} ${v >= 0 ? "+" : ""}${Number(v).toFixed(2)}`);
    text += ` — learned so far: ${parts.join(", ")}`;
  }
  el.presetDescription.textContent = text;
  if (setSlider && p && typeof p.discovery === "number") {
    el.slider.value = String(p.discovery);
    showDiscovery();
  }
}

async function loadHistory(user) {
  try {
    const data = await api(`/v1/users/${encodeURIComponent(user)}/history?limit=20`);
    if (user !== state.user) return;
    renderHistory(data.items || []);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) renderHistory([]);
    else showError(err);
  }
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
  setBusy(el.recList, true);
  const q = new URLSearchParams({ k: String(K), preset, discovery: d.toFixed(2) });
  if (el.explore && el.explore.checked) q.set("explore", EXPLORE_RATE.toFixed(2));
  try {
    const data = await api(`/v1/users/${encodeURIComponent(user)}/recommendations?${q}`, {
      signal: ctrl.signal,
    });
    if (seq !== state.recSeq) return; // a newer request superseded this one
    clearError();
    const items = data.items || [];
    renderList(el.recList, items, "recommendations");
    el.recList.dataset.discovery = d.toFixed(2);
    el.recList.dataset.preset = preset;
    el.recList.dataset.user = user;
    if (data.impression_id !== undefined && data.impression_id !== null) {
      el.recList.dataset.impressionId = String(data.impression_id);
    }
    el.recHeading.textContent = `Recommendations for user ${user}`;
    el.recEmpty.hidden = items.length > 0;
    el.recEmpty.textContent = items.length ? "" : "No recommendations for this user.";
    setBusy(el.recList, false);
    announce(
      `${note}${items.length} recommendations for user ${user}, preset ${preset}, discovery ${d.toFixed(2)}.`
    );
    if (focus) el.recHeading.focus();
  } catch (err) {
    if (seq === state.recSeq) setBusy(el.recList, false);
    showError(err);
  }
}

function scheduleRecommendations() {
  clearTimeout(state.debounce);
  state.debounce = setTimeout(() => loadRecommendations(), DEBOUNCE_MS);
}

function selectUser(user) {
  user = user.trim();
  if (!user) {
    showError(new Error("Type or pick a user id first."));
    el.userInput.focus();
    return;
  }
  state.user = user;
  try {
    localStorage.setItem(USER_STORAGE, user);
  } catch {
    // ignore
  }
  clearError();
  resetExplanation();
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
  const body = { query, k: K, discovery: discovery() };
  if (state.user) body.user_id = state.user;
  try {
    const data = await api("/v1/search", { method: "POST", body });
    if (seq !== state.searchSeq) return;
    clearError();
    const items = data.items || [];
    renderList(el.searchList, items, "search");
    el.searchList.dataset.query = query;
    el.searchHeading.textContent = `Results for “${query}”`;
    setBusy(el.searchList, false);
    announce(`${items.length} results for “${query}”.`);
  } catch (err) {
    if (seq === state.searchSeq) setBusy(el.searchList, false);
    showError(err);
  }
}

// ---------------------------------------------------------------- card actions

async function sendFeedback(card, type) {
  const user = state.user;
  const title = card.querySelector(".card-title").textContent;
  const ack = card.querySelector(".ack");
  if (!user) {
    showError(new Error("Pick a user before giving feedback."));
    el.userInput.focus();
    return;
  }
  const buttons = card.querySelectorAll("button[data-action]");
  for (const b of buttons) b.disabled = true;
  const event = { user_id: user, item_id: card.dataset.itemId, type, idempotency_key: newKey() };
  try {
    const data = await api("/v1/events", { method: "POST", body: { events: [event] } });
    const a = (data.acks || [])[0] || {};
    const verb = type === "like" ? "Liked" : "Marked not for me";
    const dup = a.duplicate ? " (already recorded)" : "";
    ack.textContent = `${verb}: recorded${a.event_id !== undefined ? ` as event ${a.event_id}` : ""}${dup}.`;
    card.dataset.acked = type;
    clearError();
    const note = `${verb} “${title}”. `;
    announce(`${note}Refreshing…`);
    loadHistory(user);
    await loadRecommendations({ note });
  } catch (err) {
    for (const b of buttons) b.disabled = false;
    showError(err);
  }
}

function resetExplanation() {
  const p = document.createElement("p");
  p.className = "empty";
  p.textContent = "Choose “why this?” on a card to see what led to it.";
  el.explainBody.replaceChildren(p);
}

function ordinal(n) {
  const r10 = n % 10;
  const r100 = n % 100;
  if (r10 === 1 && r100 !== 11) return `${n}st`;
  if (r10 === 2 && r100 !== 12) return `${n}nd`;
  if (r10 === 3 && r100 !== 13) return `${n}rd`;
  return `${n}th`;
}

async function explain(card) {
  const user = state.user;
  const title = card.querySelector(".card-title").textContent;
  if (!user) {
    showError(new Error("Pick a user to see why an item fits them."));
    return;
  }
  for (const c of document.querySelectorAll(".card.selected")) c.classList.remove("selected");
  card.classList.add("selected");
  const loading = document.createElement("p");
  loading.textContent = `Loading why “${title}”…`;
  el.explainBody.replaceChildren(loading);
  el.explainBody.dataset.state = "loading";
  try {
    const path = `/v1/users/${encodeURIComponent(user)}/recommendations/${encodeURIComponent(card.dataset.itemId)}/explain`;
    const data = await api(path);
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
      sub.textContent = "From your history";
      const ol = document.createElement("ol");
      ol.className = "because";
      ol.dataset.testid = "explain-because";
      for (const b of because) {
        const li = document.createElement("li");
        const name = document.createElement("span");
        name.textContent = b.title || String(b.item_id);
        li.append(name);
        if (typeof b.similarity === "number") {
          const sim = document.createElement("span");
          sim.className = "sim";
          sim.textContent = `similarity ${b.similarity.toFixed(2)}`;
          li.append(" ", sim);
        }
        ol.append(li);
      }
      frag.append(sub, ol);
    }
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
    const pop = data.popularity || {};
    if (pop.percentile !== undefined && pop.percentile !== null) {
      // percentile is 0-100: the share of the catalog at most as popular as this item
      const users = pop.users !== undefined ? ` (${pop.users} ${pop.users === 1 ? "person" : "people"})` : "";
      fact("Popularity", `${ordinal(Math.round(Number(pop.percentile)))} percentile${users}`);
    }
    if (typeof data.novelty_bits === "number") fact("Novelty", `${data.novelty_bits.toFixed(1)} bits`);
    if (typeof data.unexpectedness === "number") fact("Unexpectedness", data.unexpectedness.toFixed(2));
    if (dl.children.length) frag.append(dl);
    el.explainBody.replaceChildren(frag);
    el.explainBody.dataset.state = "ready";
    el.explainBody.dataset.itemId = card.dataset.itemId;
    announce(`Explanation for “${title}” shown.`);
    el.explainHeading.focus();
  } catch (err) {
    el.explainBody.dataset.state = "error";
    const p = document.createElement("p");
    p.textContent = `Could not explain “${title}”.`;
    el.explainBody.replaceChildren(p);
    showError(err);
  }
}

function onCardAction(ev) {
  const btn = ev.target.closest("button[data-action]");
  if (!btn) return;
  const card = btn.closest(".card");
  const action = btn.dataset.action;
  if (action === "why") explain(card);
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
  // Picking from the datalist fires "change" (as does leaving the field after typing).
  el.userInput.addEventListener("change", () => {
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

  el.searchForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    runSearch(el.searchInput.value);
  });
  el.searchClear.addEventListener("click", () => {
    state.searchSeq++;
    el.searchSection.hidden = true;
    el.searchList.replaceChildren();
    el.searchList.dataset.state = "idle";
    el.searchInput.value = "";
    el.searchInput.focus();
    announce("Search cleared.");
  });

  el.recList.addEventListener("click", onCardAction);
  el.searchList.addEventListener("click", onCardAction);

  if (state.key) {
    loadPresets();
    loadUsers();
  } else {
    el.keyBox.open = true;
    showError(new Error("No API key yet: paste the key that “serendip serve” printed into “API key” above."));
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
